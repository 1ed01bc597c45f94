"""The pure core of the first-token deletion scan: model + samples -> the statistics of
every position, nothing filtered (no files, no Dask).

For every position ``i`` of a sample with room (``i + 1 + L <= len(sample)``)::

    short = tokens[i+1 : i+1+L]          long = tokens[i : i+1+L]   (short plus one earlier token)

and with ``P_s``, ``P_l`` the model's next-token distributions after each window (softmax
of the last position's logits, computed with ``log_softmax`` in float32 whatever the model
runs in), every statistic of SPEC.md's "First-token deletion scan":

* ``p_short = max P_s``, ``p_long = max P_l`` and their argmaxes ``short_max_id``, ``long_max_id``;
* ``p_delta_max = max |P_s - P_l|``;
* ``logit_excite_max = max(logits_l - logits_s)``, ``logit_inhibit_max = max(logits_s - logits_l)``;
* ``sym_kl = (KL(P_s||P_l) + KL(P_l||P_s)) / 2``: the value the original called ``JS``
  (a symmetrised KL divergence, in nats, unbounded);
* ``js_divergence = (KL(P_s||M) + KL(P_l||M)) / 2`` with ``M = (P_s + P_l) / 2``: the true
  Jensen-Shannon divergence, in nats, in ``[0, ln 2]``.

One forward pass serves two windows. For a causal model the output at position ``L-1``
of the ``L+1``-token window starting at ``i+1`` depends only on ``tokens[i+1 : i+1+L]``,
i.e. it *is* the short window of position ``i``; its last output is the long window of
position ``i+1``. So each micro-batch runs the model once on equal-length ``L+1`` windows
(no attention mask, no padding in the middle) and reads the last two positions' logits.
The window that starts at ``len - L`` lacks one token at its end; it gets an arbitrary
token there, which no output that is used can see.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

STAT_COLUMNS = ("p_short", "p_long", "short_max_id", "long_max_id", "p_delta_max",
                "logit_excite_max", "logit_inhibit_max", "sym_kl", "js_divergence")
FLOAT_STATS = ("p_short", "p_long", "p_delta_max", "logit_excite_max", "logit_inhibit_max",
               "sym_kl", "js_divergence")
CONTEXT_TOKENS = 5  # extra tokens of context on each side of the long window
_LN2 = float(np.log(2.0))


def positions(lengths: Sequence[int], seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """``(sample, start)`` of every position with room, in order: ``max(n - L, 0)`` per sample."""
    lengths = np.asarray(lengths, dtype=np.int64)
    per = np.maximum(lengths - seq_len, 0)
    sample = np.repeat(np.arange(len(lengths), dtype=np.int64), per)
    first = np.concatenate(([0], np.cumsum(per)[:-1])) if len(per) else np.zeros(0, np.int64)
    start = np.arange(int(per.sum()), dtype=np.int64) - np.repeat(first, per)
    return sample, start


def pair_statistics(logits_short, logits_long, work=None) -> dict:
    """Every statistic of a batch of (short, long) last-position logits, in float32 (torch tensors).

    Each pass over a ``rows x vocab`` tensor costs memory traffic, so the vocabulary is read as
    few times as the statistics allow: one ``exp`` per distribution gives both P and log P,
    the max probability is read at the argmax, ``|P_s - P_l|`` and ``-d`` are never
    materialised (max |x| is max(max x, -min x)), and temporaries are reused once spent.
    ``work`` (``stat_workspace``) holds the six ``rows x vocab`` temporaries, so that a
    caller going through many chunks allocates them once: in a Dask worker, whose
    ``MALLOC_TRIM_THRESHOLD_`` makes glibc map and unmap every such block, fresh ones per
    chunk cost as much as the arithmetic.
    """
    import torch

    ls = logits_short.float()  # never written to: on float32 input this is the caller's tensor
    ll = logits_long.float()
    n, vocab = ls.shape
    if work is None or work.shape[1] < n or work.shape[2] != vocab:
        work = stat_workspace(n, vocab, ls.device)
    logp_s, logp_l, p_s, p_l, dp, d = (w[:n] for w in work)
    # argmax of the logits, not of P: exp underflow could make ties that the logits do not have
    short_max = ls.argmax(dim=-1)
    long_max = ll.argmax(dim=-1)
    for x, top, logp, p in ((ls, short_max, logp_s, p_s), (ll, long_max, logp_l, p_l)):
        torch.sub(x, x.gather(1, top[:, None]), out=logp)  # x - max x
        total = torch.exp(logp, out=p).sum(dim=-1, keepdim=True)
        p.div_(total)
        logp.sub_(total.log_())
    p_short = p_s.gather(1, short_max[:, None]).squeeze(1)
    p_long = p_l.gather(1, long_max[:, None]).squeeze(1)
    torch.sub(p_s, p_l, out=dp)
    # amax and amin, not aminmax: on the CPU aminmax over the last dim is ~20x slower than both
    p_delta_max = torch.maximum(dp.amax(dim=-1), dp.amin(dim=-1).neg_())
    # (KL(Ps||Pl) + KL(Pl||Ps)) / 2 = sum((Ps - Pl) * (log Ps - log Pl)) / 2: each term >= 0.
    sym_kl = 0.5 * dp.mul_(torch.sub(logp_s, logp_l, out=d)).sum(dim=-1)
    torch.sub(ll, ls, out=d)
    excite = d.amax(dim=-1)
    inhibit = d.amin(dim=-1).neg_()
    log_m = torch.logaddexp(logp_s, logp_l, out=dp).sub_(_LN2)
    js = 0.5 * (p_s.mul_(logp_s.sub_(log_m)).sum(dim=-1) + p_l.mul_(logp_l.sub_(log_m)).sum(dim=-1))
    return {
        "p_short": p_short,
        "p_long": p_long,
        "short_max_id": short_max,
        "long_max_id": long_max,
        "p_delta_max": p_delta_max,
        "logit_excite_max": excite,
        "logit_inhibit_max": inhibit,
        "sym_kl": sym_kl.clamp_min(0.0),
        "js_divergence": js.clamp_min(0.0),
    }


def stat_workspace(rows: int, vocab: int, device):
    """The six float32 ``rows x vocab`` temporaries of ``pair_statistics``, allocated once."""
    import torch

    return torch.empty((6, rows, vocab), dtype=torch.float32, device=device)


def _last_two_logits(model, windows):
    """Logits of the last two positions of each window: ``(n, 2, vocab)``."""
    try:
        out = model(input_ids=windows, use_cache=False, logits_to_keep=2)
    except TypeError:  # a model class without logits_to_keep
        out = model(input_ids=windows, use_cache=False)
    return out.logits[:, -2:, :]


def _to_device(array: np.ndarray, device):
    """A host array on ``device``; to a GPU through pinned memory without waiting for the copy,
    so the host goes on to build the next micro-batch while the GPU computes."""
    import torch

    t = torch.from_numpy(array)
    if getattr(device, "type", None) == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def position_statistics(model, samples: Sequence[np.ndarray], seq_len: int, micro_batch: int = 1024,
                        device=None) -> dict[str, np.ndarray]:
    """Statistics of every position of every sample (before any filter).

    Returns arrays of equal length, one entry per position, ordered by (sample, start):
    ``sample`` (index into ``samples``), ``start`` (``i``: the long window is
    ``tokens[i : i+1+L]``) and ``STAT_COLUMNS``. ``micro_batch`` positions go through
    the model together (one forward pass on about that many ``L+1``-token windows); on
    CUDA it is lowered to what free memory holds, and halved on an out-of-memory error.
    """
    import torch

    if seq_len < 1:
        raise ValueError("seq_len must be >= 1")
    if micro_batch < 1:
        raise ValueError("micro_batch must be >= 1")
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    lengths = [len(s) for s in samples]
    pos_sample, pos_start = positions(lengths, seq_len)
    total = len(pos_sample)
    result: dict[str, np.ndarray] = {"sample": pos_sample, "start": pos_start}
    if total == 0:
        for name in STAT_COLUMNS:
            result[name] = np.zeros(0, np.int64 if name.endswith("_id") else np.float32)
        return result
    from ngram_dask.lm.models import batch_limit, vocab_chunk_rows

    if device.type == "cuda":
        micro_batch = min(micro_batch, batch_limit(model, device, tokens=seq_len + 1, logit_rows=2))
    # All samples in one flat array, each followed by one filler token, so that every
    # window start j in [0, n - L] of a sample reads L+1 ids without leaving the sample.
    flat = np.concatenate([np.append(np.asarray(s, dtype=np.int64), 0) for s in samples])
    base = np.concatenate(([0], np.cumsum(np.asarray(lengths, np.int64) + 1)[:-1]))
    span = np.arange(seq_len + 1, dtype=np.int64)
    # Results stay on the device until the end: a copy back per micro-batch would make the
    # host wait for the GPU each time instead of preparing the next windows.
    out = {name: torch.empty(total, dtype=torch.int64 if name.endswith("_id") else torch.float32, device=device)
           for name in STAT_COLUMNS}
    a = 0
    work = picked = None
    with torch.inference_mode():
        while a < total:
            b = min(a + micro_batch, total)
            long_starts = base[pos_sample[a:b]] + pos_start[a:b]
            short_starts = long_starts + 1  # short(i) = first L ids of the window at i+1
            starts, inverse = np.unique(np.concatenate([long_starts, short_starts]), return_inverse=True)
            n = b - a
            try:
                windows = _to_device(flat[starts[:, None] + span], device)
                index = _to_device(inverse.reshape(2, n), device)  # [long rows; short rows]
                logits = _last_two_logits(model, windows)
                vocab = logits.shape[-1]
                rows = min(vocab_chunk_rows(vocab, device), n)
                if work is None or work.shape[1] < rows or work.shape[2] != vocab:
                    work = stat_workspace(rows, vocab, device)
                    picked = torch.empty((2, rows, vocab), dtype=logits.dtype, device=device)
                for c in range(0, n, rows):
                    e = min(c + rows, n)
                    short, long = picked[0, :e - c], picked[1, :e - c]
                    # index_select on a view, not advanced indexing: 5x less time for the same copy
                    torch.index_select(logits[:, 0, :], 0, index[1, c:e], out=short)
                    torch.index_select(logits[:, 1, :], 0, index[0, c:e], out=long)
                    stats = pair_statistics(short, long, work)
                    for name in STAT_COLUMNS:
                        out[name][a + c:a + e] = stats[name]
            except torch.cuda.OutOfMemoryError:
                if micro_batch == 1:
                    raise
                micro_batch = max(1, micro_batch // 2)
                logits = stats = work = picked = None
                torch.cuda.empty_cache()
                continue
            del logits, stats
            a = b
    for name in STAT_COLUMNS:
        result[name] = out[name].cpu().numpy()
    return result


def candidate_mask(stats: dict[str, np.ndarray], min_p_long: float, min_sym_kl: float) -> np.ndarray:
    """The kept positions: ``p_long > min_p_long AND sym_kl > min_sym_kl`` (strict, as the original)."""
    return (stats["p_long"] > min_p_long) & (stats["sym_kl"] > min_sym_kl)


def context_bounds(start: np.ndarray, length: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """``[lo, hi)`` of the context: the long window and CONTEXT_TOKENS more each side, clipped."""
    lo = np.maximum(start - CONTEXT_TOKENS, 0)
    hi = np.minimum(start + seq_len + 1 + CONTEXT_TOKENS, length)
    return lo, hi
