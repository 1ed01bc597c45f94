"""First-token deletion scan (``scan_<L>``): where one token of earlier context changes
the model's prediction sharply.

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

Work units are *batches*: ``samples_per_batch`` consecutive samples of one shard, numbered
in dataset order, so a batch means the same samples in every run. Each Dask task scans
one batch and writes the candidate rows (``p_long > min_p_long AND sym_kl > min_sym_kl``)
to ``parts/batch-<b>.parquet`` under a temporary name, then a ``_done`` marker: a rerun
skips done batches, and a retried task overwrites its own file, never duplicating rows.
The client then gathers the parts, decodes them with the tokenizer, deduplicates on
``text`` and writes ``--out`` (and optionally the table ``scan_<L>`` of the catalog
database).
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import re
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from ngram_dask import faults
from ngram_dask.config import Config
from ngram_dask.db import check_existing, connect, ensure_info, transaction, write_info, writer_lock
from ngram_dask.errors import BadInputError, ConfigError, WorkDirError
from ngram_dask.mds import ShardRef, list_shards, read_shard, resolve_token_dtype
from ngram_dask.runtime import DiskFull, Progress, gpu_resources, map_tasks, resumable
from ngram_dask.storage import atomic_write_parquet, get_fs, join, read_marker, write_marker

Announce = Callable[[str], None]

STAT_COLUMNS = ("p_short", "p_long", "short_max_id", "long_max_id", "p_delta_max",
                "logit_excite_max", "logit_inhibit_max", "sym_kl", "js_divergence")
FLOAT_STATS = ("p_short", "p_long", "p_delta_max", "logit_excite_max", "logit_inhibit_max",
               "sym_kl", "js_divergence")
CONTEXT_TOKENS = 5  # extra tokens of context on each side of the long window
_LN2 = float(np.log(2.0))

# The output, in this order (SPEC.md's columns; the original's `JS` is `sym_kl`).
OUTPUT_COLUMNS = ("text", "token_short", "token_long", "p_short", "p_long", "sym_kl", "js_divergence",
                  "long_ids", "short_max_id", "long_max_id", "context", "context_ids", "p_delta_max",
                  "logit_excite_max", "logit_inhibit_max", "batch", "sample", "start")

# Tests slow each batch down with this (seconds) to kill a worker mid-scan.


def scan_table(seq_len: int) -> str:
    return f"scan_{int(seq_len)}"


# ---------------------------------------------------------------------------------------
# The pure core: model + samples -> statistics of every position (nothing filtered).
# ---------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------
# Batches and the per-batch task.
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BatchRef:
    """Samples ``[first, stop)`` of one shard; ``sample0`` is the dataset index of ``first``."""

    index: int
    shard: ShardRef
    first: int
    stop: int
    sample0: int

    @property
    def name(self) -> str:
        return f"batch-{self.index:07d}"


def make_batches(shards: Sequence[ShardRef], samples_per_batch: int, limit: int | None = None) -> list[BatchRef]:
    """Consecutive groups of ``samples_per_batch`` samples, never across shards, in dataset order."""
    if samples_per_batch < 1:
        raise ConfigError(f"scan.samples_per_batch must be >= 1, got {samples_per_batch}")
    out: list[BatchRef] = []
    sample0 = 0
    for ref in shards:
        for first in range(0, ref.samples, samples_per_batch):
            if limit is not None and len(out) >= limit:
                return out
            stop = min(first + samples_per_batch, ref.samples)
            out.append(BatchRef(len(out), ref, first, stop, sample0 + first))
        sample0 += ref.samples
    return out


@dataclass(frozen=True)
class ScanSettings:
    """What a scan task needs; small, so it travels in the task graph."""

    scan_dir: str
    model: str
    seq_len: int
    micro_batch: int
    min_p_long: float
    min_sym_kl: float
    device: str
    dtype: str
    token_dtype: str
    model_vocab: int
    verify_hashes: bool = True


def part_url(scan_dir: str, batch: BatchRef | int) -> str:
    name = batch.name if isinstance(batch, BatchRef) else f"batch-{int(batch):07d}"
    return join(scan_dir, "parts", f"{name}.parquet")


def marker_url(scan_dir: str, batch: BatchRef | int) -> str:
    name = batch.name if isinstance(batch, BatchRef) else f"batch-{int(batch):07d}"
    return join(scan_dir, "_done", f"{name}.json")


def part_schema():
    import pyarrow as pa

    return pa.schema([
        ("batch", pa.int64()), ("sample", pa.int64()), ("start", pa.int32()),
        ("long_ids", pa.list_(pa.int32())), ("context_ids", pa.list_(pa.int32())),
        ("short_max_id", pa.int32()), ("long_max_id", pa.int32()),
        *[(name, pa.float32()) for name in FLOAT_STATS],
    ])


def candidates_table(batch_index: int, sample0: int, samples: Sequence[np.ndarray], stats: dict,
                     mask: np.ndarray, seq_len: int):
    """The kept positions of one batch as an Arrow table (``part_schema``)."""
    import pyarrow as pa

    idx = np.flatnonzero(mask)
    k = stats["sample"][idx]
    start = stats["start"][idx]
    lengths = np.asarray([len(s) for s in samples], np.int64)
    lo, hi = context_bounds(start, lengths[k] if len(k) else np.zeros(0, np.int64), seq_len)
    long_ids = [np.asarray(samples[kk][s:s + seq_len + 1], np.int32) for kk, s in zip(k, start)]
    context_ids = [np.asarray(samples[kk][a:b], np.int32) for kk, a, b in zip(k, lo, hi)]
    cols = {
        "batch": pa.array(np.full(len(idx), batch_index, np.int64)),
        "sample": pa.array(sample0 + k.astype(np.int64)),
        "start": pa.array(start.astype(np.int32)),
        "long_ids": pa.array(long_ids, pa.list_(pa.int32())),
        "context_ids": pa.array(context_ids, pa.list_(pa.int32())),
        "short_max_id": pa.array(stats["short_max_id"][idx].astype(np.int32)),
        "long_max_id": pa.array(stats["long_max_id"][idx].astype(np.int32)),
    }
    for name in FLOAT_STATS:
        cols[name] = pa.array(stats[name][idx].astype(np.float32))
    return pa.table(cols, schema=part_schema())


@functools.lru_cache(maxsize=2)
def _shard_samples(ref: ShardRef, token_dtype: str, vocab: int, verify: bool) -> list[np.ndarray]:
    data = read_shard(ref, token_dtype, vocab, verify)
    return [data.tokens[data.offsets[j]:data.offsets[j + 1]] for j in range(len(data.offsets) - 1)]


@resumable(lambda batch, s: marker_url(s.scan_dir, batch))
def scan_batch(batch: BatchRef, s: ScanSettings) -> dict:
    """Scan one batch: write its candidate rows; return its statistics (a resumable task)."""
    samples = _shard_samples(batch.shard, s.token_dtype, s.model_vocab, s.verify_hashes)[batch.first:batch.stop]
    lengths = [len(x) for x in samples]
    n_positions = int(sum(max(n - s.seq_len, 0) for n in lengths))
    if n_positions:
        from ngram_dask.lm.models import load_model

        model = load_model(s.model, s.device, s.dtype)
        stats = position_statistics(model, samples, s.seq_len, s.micro_batch)
    else:  # nothing has room: no model needed
        stats = position_statistics(None, samples, s.seq_len, s.micro_batch, device="cpu")
    mask = candidate_mask(stats, s.min_p_long, s.min_sym_kl)
    table = candidates_table(batch.index, batch.sample0, samples, stats, mask, s.seq_len)
    faults.delay_point(faults.SCAN_TEST_DELAY)
    nbytes = atomic_write_parquet(part_url(s.scan_dir, batch), table, compression="zstd")
    return {
        "batch": batch.index,
        "shard": batch.shard.name,
        "samples": len(samples),
        "tokens": int(sum(lengths)),
        "max_len": int(max(lengths, default=0)),
        "positions": n_positions,
        "kept": int(mask.sum()),
        "bytes": nbytes,
    }


# ---------------------------------------------------------------------------------------
# Gather: parts -> decoded, deduplicated, sorted table.
# ---------------------------------------------------------------------------------------

class _Decoder:
    """``tokenizer.decode`` with ids beyond the tokenizer's vocabulary (model padding) as ''."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.known = len(tokenizer)
        self._single: dict[int, str] = {}

    def _clean(self, ids) -> list[int]:
        return [int(i) for i in ids if 0 <= int(i) < self.known]

    def one(self, i: int) -> str:
        i = int(i)
        if i not in self._single:
            self._single[i] = (self.tok.decode([i], clean_up_tokenization_spaces=False)
                               if 0 <= i < self.known else "")
        return self._single[i]

    def many(self, seqs) -> list[str]:
        if not seqs:
            return []
        return self.tok.batch_decode([self._clean(s) for s in seqs], clean_up_tokenization_spaces=False)


def decode_candidates(parts, tokenizer):
    """Parts (``part_schema``) -> the output table: text columns added, deduplicated on ``text``
    (the first occurrence in (batch, sample, start) order stays), sorted by ``p_long`` desc
    (ties by batch, sample, start)."""
    import duckdb
    import pyarrow as pa

    dec = _Decoder(tokenizer)
    long_ids = parts.column("long_ids").to_pylist()
    text = [f"[{dec.one(ids[0])}]{rest}" for ids, rest in zip(long_ids, dec.many([ids[1:] for ids in long_ids]))]
    decoded = parts.append_column("text", pa.array(text, pa.string()))
    decoded = decoded.append_column(
        "token_short", pa.array([dec.one(i) for i in parts.column("short_max_id").to_pylist()], pa.string()))
    decoded = decoded.append_column(
        "token_long", pa.array([dec.one(i) for i in parts.column("long_max_id").to_pylist()], pa.string()))
    decoded = decoded.append_column(
        "context", pa.array(dec.many(parts.column("context_ids").to_pylist()), pa.string()))
    floats = set(FLOAT_STATS)
    select = ", ".join(f"CAST({c} AS DOUBLE) AS {c}" if c in floats else c for c in OUTPUT_COLUMNS)
    con = duckdb.connect()
    try:
        con.register("_parts", decoded)
        return con.sql(
            f"SELECT {select} FROM _parts "
            "QUALIFY row_number() OVER (PARTITION BY text ORDER BY batch, sample, start) = 1 "
            "ORDER BY p_long DESC, batch, sample, start"
        ).to_arrow_table()
    finally:
        con.close()


def read_parts(scan_dir: str, batches: Sequence[int]):
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = []
    for b in batches:
        url = part_url(scan_dir, b)
        fs, path = get_fs(url)
        try:
            with fs.open(path, "rb") as f:
                tables.append(pq.read_table(f, schema=part_schema()))
        except FileNotFoundError:
            raise WorkDirError(f"{url} is missing although its batch is marked done; delete "
                               f"{marker_url(scan_dir, b)} and rerun to scan that batch again") from None
    if not tables:
        return part_schema().empty_table()
    return pa.concat_tables(tables)


# ---------------------------------------------------------------------------------------
# The client: validate, submit, gather, write.
# ---------------------------------------------------------------------------------------

@dataclass
class ScanReport:
    batches: int = 0
    skipped: int = 0
    samples: int = 0
    tokens: int = 0
    positions: int = 0
    kept: int = 0
    scanned_positions: int = 0  # positions scanned by this run (not by an earlier one)
    rows: int = 0
    out: str | None = None
    table: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)


def _model_config(name: str):
    from transformers import AutoConfig

    from ngram_dask.lm.models import expand_model_name, model_vocab_size

    vocab = model_vocab_size(name)  # a UserError naming the model when it cannot be had
    return vocab, AutoConfig.from_pretrained(expand_model_name(name))


def _safe(name: str) -> str:
    base = os.path.basename(name.rstrip("/")) or "model"
    return re.sub(r"[^0-9a-zA-Z._-]+", "_", base)


def default_work_dir(out: str) -> str:
    return re.sub(r"\.parquet$", "", out.rstrip("/")) + ".work"


def scan_identity(cfg: Config, model: str, token_dtype: str, shards: Sequence[ShardRef]) -> dict:
    s = cfg.scan
    return {
        "input": cfg.input,
        "model": model,
        "seq_len": s.seq_len,
        "samples_per_batch": s.samples_per_batch,
        "min_p_long": s.min_p_long,
        "min_sym_kl": s.min_sym_kl,
        "device": s.device,
        "dtype": s.dtype,
        "token_dtype": token_dtype,
        "shards": [[r.basename, r.samples, r.raw_bytes] for r in shards],
    }


def _check_scan_dir(scan_dir: str, identity: dict) -> None:
    url = join(scan_dir, "manifest.json")
    try:
        existing = read_marker(url)
        if existing is None:
            write_marker(url, identity)
            return
    except OSError as exc:
        raise WorkDirError(f"cannot use scan work dir {scan_dir}: {exc}") from None
    for key, value in identity.items():
        if existing.get(key) != value:
            what = "input shards" if key == "shards" else key
            raise WorkDirError(
                f"scan work dir {scan_dir} holds a scan with a different {what} "
                f"({existing.get(key)!r} there, {value!r} now); use another --work-dir or delete it"
            )


def run_scan(cfg: Config, announce: Announce = print) -> ScanReport:
    from ngram_dask.cluster import get_client, performance_report
    from ngram_dask.lm.models import expand_model_name
    from ngram_dask.tokenizer import load_tokenizer

    cfg.check("scan")
    s = cfg.scan
    report = ScanReport(out=s.out)
    model = expand_model_name(s.model)
    shards = list_shards(cfg.input)
    if not shards or sum(r.samples for r in shards) == 0:
        raise BadInputError(f"input dataset {cfg.input} is empty: no samples in {len(shards)} shard(s)")
    token_dtype = resolve_token_dtype(cfg.build.token_dtype, cfg.input)
    model_vocab, model_cfg = _model_config(model)
    max_pos = getattr(model_cfg, "max_position_embeddings", None)
    if isinstance(max_pos, int) and s.seq_len + 1 > max_pos:
        raise ConfigError(f"--seq-len {s.seq_len} needs {s.seq_len + 1}-token windows; "
                          f"{model} takes at most {max_pos} positions")
    tokenizer = load_tokenizer(cfg.tokenizer)  # fail before the scan, not after
    if s.to_db:
        check_existing(cfg.db)

    batches = make_batches(shards, s.samples_per_batch, s.batches)
    work_dir = cfg.work_dir or default_work_dir(s.out)
    scan_dir = join(work_dir, f"scan-{s.seq_len}-{_safe(model)}")
    _check_scan_dir(scan_dir, scan_identity(cfg, model, token_dtype, shards))
    settings = ScanSettings(
        scan_dir=scan_dir, model=model, seq_len=s.seq_len, micro_batch=s.micro_batch,
        min_p_long=s.min_p_long, min_sym_kl=s.min_sym_kl, device=s.device, dtype=s.dtype,
        token_dtype=token_dtype, model_vocab=model_vocab, verify_hashes=cfg.build.verify_hashes,
    )
    report.batches = len(batches)
    stats: dict[int, dict] = {}
    for b in batches:
        m = read_marker(marker_url(scan_dir, b))
        if m is not None:
            stats[b.index] = m
    todo = [b for b in batches if b.index not in stats]
    report.skipped = len(batches) - len(todo)
    announce(f"scan: {model}, L = {s.seq_len}, {len(batches)} batch(es) of <= {s.samples_per_batch} "
             f"samples ({report.skipped} already done) -> {scan_dir}")

    t0 = time.perf_counter()
    if todo:
        cluster_cfg = cfg.cluster
        if not cluster_cfg.scheduler and cluster_cfg.n_workers is None:
            from ngram_dask.lm.models import resolve_device

            if resolve_device(s.device).startswith("cuda"):
                # One local GPU: one worker holds the model; several would each load it.
                from dataclasses import replace

                cluster_cfg = replace(cluster_cfg, n_workers=1)
        with get_client(cluster_cfg, announce) as client, \
                performance_report(cfg.cluster.performance_report):
            resources = gpu_resources(client)
            if resources:
                announce("  tasks ask for a GPU resource")
            progress = Progress("scan", len(todo), "batches", announce)
            disk = DiskFull(f"the scan work dir {scan_dir}")
            for res in map_tasks(client, scan_batch, todo, disk, resources=resources, s=settings):
                stats[res["batch"]] = res
                report.scanned_positions += 0 if res.get("skipped") else res["positions"]
                progress.step(tokens=res.get("tokens", 0))
    report.seconds["scan"] = time.perf_counter() - t0

    for m in stats.values():
        report.samples += m["samples"]
        report.tokens += m["tokens"]
        report.positions += m["positions"]
        report.kept += m["kept"]
    if report.positions == 0:
        longest = max((m["max_len"] for m in stats.values()), default=0)
        raise BadInputError(
            f"--seq-len {s.seq_len} is larger than the samples: a position needs {s.seq_len + 1} tokens, "
            f"the longest of the {report.samples} scanned sample(s) has {longest}"
        )

    t0 = time.perf_counter()
    parts = read_parts(scan_dir, [b.index for b in batches])
    table = decode_candidates(parts, tokenizer)
    report.rows = table.num_rows
    atomic_write_parquet(s.out, table, compression="zstd")
    report.seconds["gather"] = time.perf_counter() - t0
    announce(f"gather: {report.kept:,} candidate(s), {report.rows:,} after dedup on text -> {s.out}")
    if s.to_db:
        t0 = time.perf_counter()
        report.table = write_scan_table(cfg.db, s.seq_len, table, {
            "model": model, "input": cfg.input, "seq_len": s.seq_len, "batches": len(batches),
            "samples_per_batch": s.samples_per_batch, "min_p_long": s.min_p_long,
            "min_sym_kl": s.min_sym_kl, "rows": report.rows,
        })
        report.seconds["db"] = time.perf_counter() - t0
        announce(f"database: table {report.table} ({report.rows:,} rows) in {cfg.db}")
    return report


def write_scan_table(db: str, seq_len: int, table, info: dict) -> str:
    """Replace ``scan_<L>`` in the catalog database in one transaction (the single writer)."""
    name = scan_table(seq_len)
    with writer_lock(db):
        check_existing(db)
        con = connect(db)
        try:
            with transaction(con):
                ensure_info(con)
                con.register("_scan_arrow", table)
                con.execute(f"CREATE OR REPLACE TABLE {name} AS SELECT * FROM _scan_arrow")
                con.unregister("_scan_arrow")
                stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
                write_info(con, {name: json.dumps({**info, "written_at": stamp}, sort_keys=True)})
        finally:
            con.close()
    return name


def summary_lines(report: ScanReport) -> list[str]:
    lines = ["", "summary:",
             f"  batches {report.batches} ({report.skipped} already done), samples {report.samples:,}, "
             f"tokens {report.tokens:,}, positions {report.positions:,}",
             f"  candidates {report.kept:,}, rows after dedup {report.rows:,}"]
    for stage, sec in report.seconds.items():
        lines.append(f"  {stage:<8} {sec:8.2f} s")
    scan_sec = report.seconds.get("scan", 0)
    if scan_sec and report.scanned_positions:
        lines.append(f"  {report.scanned_positions / scan_sec:,.0f} positions/s")
    if report.skipped == report.batches:
        lines.append("  every batch was scanned already: only the gather step ran")
    return lines

