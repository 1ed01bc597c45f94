"""The worker side of ``score``: one Dask task scores one partition of rows.

Workers load a model once per process (``models.load_model`` caches it) and score in
batches of ``score.batch_size`` prompts (per-model overrides in ``score.batch_sizes``).
Prompts of a table have one length, so nothing is padded. A row is ``ids`` with the
prompt ``ids[:-1]`` and the expected token ``ids[-1]``; its score is the softmax of the
model's last-position logits read at the expected token, no BOS. A task writes nothing:
it returns the probabilities to the client, the database's only writer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ngram_dask.cluster import usable_cores


@dataclass(frozen=True)
class TaskSettings:
    """What a scoring task needs besides its ids; small, sent with every task."""

    model: str
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = 1024
    cpu_threads: int | None = None
    # (worker address, its index among the workers of its host, workers on that host):
    # picks a GPU when one process sees several, and a fair share of cores on CPU.
    placement: tuple[tuple[str, int, int], ...] = ()
    revision: str | None = None  # a training checkpoint (``score --revisions``); None: the model as named


def _last_logits(model, prompts):
    """Logits of the last prompt position only: ``(rows, vocab)``. The output layer is the
    largest matrix of a small model; running it on every prompt position wasted half of a
    trigram batch's output-layer work."""
    try:
        out = model(input_ids=prompts, use_cache=False, logits_to_keep=1)
    except TypeError:  # a model class without logits_to_keep
        out = model(input_ids=prompts, use_cache=False)
    return out.logits[:, -1, :]


def probabilities(model, ids: np.ndarray, batch_size: int, device: str) -> tuple[np.ndarray, int]:
    """``P(ids[:, -1] | ids[:, :-1])`` for every row, in batches; returns (p, batch size used).

    On CUDA the batch is first lowered to what free memory holds, and a CUDA
    out-of-memory error halves it and retries the same rows.
    """
    import torch

    from ngram_dask.lm.models import batch_limit, vocab_chunk_rows

    rows, width = ids.shape
    if width < 2:
        raise ValueError(f"a scoring row needs a prompt and an expected token, got {width} id(s)")
    dev = torch.device(device)
    on_cuda = dev.type == "cuda"
    ids = torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64))
    if on_cuda:
        # pinned: the copies below are asynchronous, so the host queues the next batch
        # while the GPU still computes this one
        ids = ids.pin_memory()
    bs = max(1, int(batch_size))
    if on_cuda:
        bs = min(bs, batch_limit(model, dev, tokens=width - 1, logit_rows=1))
    # p stays on the device until the end: a copy back per batch would stall the queue
    out = torch.empty(rows, dtype=torch.float32, device=dev)
    start = 0
    work = None
    with torch.inference_mode():
        while start < rows:
            stop = min(start + bs, rows)
            batch = ids[start:stop].to(dev, non_blocking=True)
            try:
                logits = _last_logits(model, batch[:, :-1])
                expected = batch[:, -1:]
                vocab = logits.shape[-1]
                step = min(vocab_chunk_rows(vocab, dev), stop - start)
                if work is None or work.shape[0] < step or work.shape[1] != vocab:
                    work = torch.empty((step, vocab), dtype=torch.float32, device=dev)
                # float32 even for an fp16 model: p = exp(x_e - m) / sum(exp(x - m)) with m the
                # row's max, read at the expected id only. Row chunks keep the one temporary in
                # cache on a CPU, and it is allocated once (see scan_stats.pair_statistics).
                for a in range(0, stop - start, step):
                    b = min(a + step, stop - start)
                    chunk = logits[a:b].float()  # before the subtraction: x - m in fp16 would round
                    top = chunk.amax(dim=-1, keepdim=True)
                    e = torch.sub(chunk, top, out=work[:b - a]).exp_()
                    picked = (chunk.gather(1, expected[a:b]) - top).exp_()
                    out[start + a:start + b] = (picked / e.sum(dim=-1, keepdim=True)).squeeze(1)
            except torch.cuda.OutOfMemoryError:
                if bs == 1:
                    raise
                bs = max(1, bs // 2)
                logits = work = None
                torch.cuda.empty_cache()
                continue
            start = stop
    return out.cpu().numpy().astype(np.float64), bs


def _worker_address() -> str | None:
    """This Dask worker's address; None outside a worker (a direct call)."""
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return None


def _worker_device(s: TaskSettings) -> tuple[str, int]:
    """(device for this worker process, its workers-on-this-host count)."""
    from ngram_dask.lm.models import resolve_device

    me = _worker_address()
    index, local_workers = 0, 1
    for address, i, count in s.placement:
        if address == me:
            index, local_workers = i, count
    device = resolve_device(s.device)
    if device == "cuda":
        import torch

        count = torch.cuda.device_count()
        if count > 1:  # several GPUs seen by one process: spread the workers of this host
            device = f"cuda:{index % count}"
    return device, local_workers


def score_partition(ids: np.ndarray, s: TaskSettings) -> dict:
    """One Dask task: the probabilities of one partition of rows (model cached per worker)."""
    import torch

    from ngram_dask.lm.models import load_model, resolve_dtype

    t0 = time.perf_counter()
    device, local_workers = _worker_device(s)
    if device == "cpu":
        # a fair share of the host's cores, one left for Dask's own event loops
        threads = s.cpu_threads or max(1, (usable_cores() - 1) // max(1, local_workers))
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
    model = load_model(s.model, device, s.dtype, s.revision)
    p, used = probabilities(model, ids, s.batch_size, device)
    return {"p": p, "device": device, "dtype": str(resolve_dtype(s.dtype, device)).replace("torch.", ""),
            "batch_size": used, "seconds": time.perf_counter() - t0}
