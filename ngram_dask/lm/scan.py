"""First-token deletion scan (``scan_<L>``): where one token of earlier context changes
the model's prediction sharply. This module holds the batches, the resumable task and
the client; the statistics are ``scan_stats``, the gather of the parts ``scan_gather``.

Work units are *batches*: ``samples_per_batch`` consecutive samples of one shard, numbered
in dataset order, so a batch means the same samples in every run. Each Dask task scans
one batch and writes the candidate rows (``p_long > min_p_long AND sym_kl > min_sym_kl``)
to ``parts/batch-<b>.parquet`` under a temporary name, then a ``_done`` marker: a rerun
skips done batches, and a retried task overwrites its own file, never duplicating rows.
The client then gathers the parts, decodes them with the tokenizer, deduplicates on
``text`` and writes ``--out`` (and optionally the table ``scan_<L>`` of the catalog
database, in one transaction, recorded in ``catalog_info`` under its own name).
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import re
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ngram_dask import faults
from ngram_dask.config import Config
from ngram_dask.db import ensure_info, transaction, write_info
from ngram_dask.errors import BadInputError, ConfigError
from ngram_dask.lm.scan_gather import (
    batch_name,
    decode_candidates,
    marker_url,
    part_schema,
    part_url,
    read_parts,
)
from ngram_dask.lm.scan_stats import FLOAT_STATS, candidate_mask, context_bounds, position_statistics
from ngram_dask.mds import ShardRef, list_shards, read_shard, resolve_token_dtype
from ngram_dask.runtime import DiskFull, Manifest, Stage, StageReport, Step, resumable, run_stage
from ngram_dask.schema import scan_table
from ngram_dask.storage import atomic_write_parquet, join, redact_url

Announce = Callable[[str], None]


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
        return batch_name(self.index)


def make_batches(shards: Sequence[ShardRef], samples_per_batch: int, limit: int | None = None) -> list[BatchRef]:
    """Consecutive groups of ``samples_per_batch`` samples, never across shards, in dataset order."""
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


@resumable(lambda batch, s: marker_url(s.scan_dir, batch.index))
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
    nbytes = atomic_write_parquet(part_url(s.scan_dir, batch.index), table, compression="zstd")
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
# The client: validate, submit, gather, write.
# ---------------------------------------------------------------------------------------

@dataclass
class ScanReport(StageReport):
    batches: int = 0
    samples: int = 0
    tokens: int = 0
    positions: int = 0
    kept: int = 0
    scanned_positions: int = 0  # positions scanned by this run (not by an earlier one)
    rows: int = 0
    out: str | None = None
    table: str | None = None


def _model_config(name: str):
    from ngram_dask.lm.models import model_config, vocab_size_of

    cfg = model_config(name)  # a UserError naming the model when it cannot be had
    return vocab_size_of(cfg, name), cfg


def _safe(name: str) -> str:
    base = os.path.basename(name.rstrip("/")) or "model"
    return re.sub(r"[^0-9a-zA-Z._-]+", "_", base)


def default_work_dir(out: str) -> str:
    return re.sub(r"\.parquet$", "", out.rstrip("/")) + ".work"


def scan_identity(cfg: Config, model: str, token_dtype: str, shards: Sequence[ShardRef]) -> dict:
    s = cfg.scan
    return {
        "input": redact_url(cfg.input),
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


def run_scan(cfg: Config, announce: Announce = print) -> ScanReport:
    """Scan every batch (resumable), gather the candidates into ``--out`` (and ``scan_<L>``)."""
    return run_stage(cfg, "scan", lambda info: declare_scan(cfg, announce), announce)


def declare_scan(cfg: Config, announce: Announce) -> Stage:
    from ngram_dask.lm.models import expand_model_name
    from ngram_dask.tokenizer import load_tokenizer

    s = cfg.scan
    report = ScanReport(out=s.out)
    model = expand_model_name(s.model)
    shards = list_shards(cfg.input)
    if not shards or sum(r.samples for r in shards) == 0:
        raise BadInputError(f"input dataset {redact_url(cfg.input)} is empty: no samples in {len(shards)} shard(s)")
    token_dtype = resolve_token_dtype(cfg.build.token_dtype, cfg.input)
    model_vocab, model_cfg = _model_config(model)
    max_pos = getattr(model_cfg, "max_position_embeddings", None)
    if isinstance(max_pos, int) and s.seq_len + 1 > max_pos:
        raise ConfigError(f"--seq-len {s.seq_len} needs {s.seq_len + 1}-token windows; "
                          f"{model} takes at most {max_pos} positions")
    tokenizer = load_tokenizer(cfg.tokenizer)  # fail before the scan, not after

    batches = make_batches(shards, s.samples_per_batch, s.batches)
    work_dir = cfg.work_dir or default_work_dir(s.out)
    scan_dir = join(work_dir, f"scan-{s.seq_len}-{_safe(model)}")
    settings = ScanSettings(
        scan_dir=scan_dir, model=model, seq_len=s.seq_len, micro_batch=s.micro_batch,
        min_p_long=s.min_p_long, min_sym_kl=s.min_sym_kl, device=s.device, dtype=s.dtype,
        token_dtype=token_dtype, model_vocab=model_vocab, verify_hashes=cfg.build.verify_hashes,
    )
    report.batches = len(batches)

    def gather(stats: list[dict], ctx) -> None:
        for m in stats:
            report.samples += m["samples"]
            report.tokens += m["tokens"]
            report.positions += m["positions"]
            report.kept += m["kept"]
            report.scanned_positions += 0 if m.get("skipped") else m["positions"]
        if report.positions == 0:
            longest = max((m["max_len"] for m in stats), default=0)
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
            report.table = write_scan_table(ctx.db(), s.seq_len, table, {
                "model": model, "input": redact_url(cfg.input), "seq_len": s.seq_len, "batches": len(batches),
                "samples_per_batch": s.samples_per_batch, "min_p_long": s.min_p_long,
                "min_sym_kl": s.min_sym_kl, "rows": report.rows,
            })
            report.seconds["db"] = time.perf_counter() - t0
            announce(f"database: table {report.table} ({report.rows:,} rows) in {cfg.db}")

    def steps(ctx):
        announce(f"scan: {model}, L = {s.seq_len}, {len(batches)} batch(es) of <= {s.samples_per_batch} "
                 f"samples -> {scan_dir}")
        yield Step("scan", batches, scan_batch, args=lambda b: (b, settings), counts="batches", gpu=True,
                   disk=DiskFull(f"the scan work dir {scan_dir}"), finish=gather)

    return Stage(
        steps, report,
        manifest=Manifest(join(scan_dir, "manifest.json"), scan_identity(cfg, model, token_dtype, shards),
                          f"scan work dir {scan_dir}", describe={"shards": "input shards"}),
        db=cfg.db if s.to_db else None, access=(cfg.input, work_dir), uses_gpu=True, device=s.device,
    )


def write_scan_table(con, seq_len: int, table, info: dict) -> str:
    """Replace ``scan_<L>`` in the catalog database in one transaction (``con``: the stage's writer)."""
    name = scan_table(seq_len)
    with transaction(con):
        ensure_info(con)
        con.register("_scan_arrow", table)
        con.execute(f"CREATE OR REPLACE TABLE {name} AS SELECT * FROM _scan_arrow")
        con.unregister("_scan_arrow")
        stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        write_info(con, {name: json.dumps({**info, "written_at": stamp}, sort_keys=True)})
    return name


def summary_lines(report: ScanReport) -> list[str]:
    lines = ["", "summary:",
             f"  batches {report.batches} ({report.skipped.get('scan', 0)} already done), samples {report.samples:,}, "
             f"tokens {report.tokens:,}, positions {report.positions:,}",
             f"  candidates {report.kept:,}, rows after dedup {report.rows:,}"]
    lines += report.time_lines(width=8)
    scan_sec = report.seconds.get("scan", 0)
    if scan_sec and report.scanned_positions:
        lines.append(f"  {report.scanned_positions / scan_sec:,.0f} positions/s")
    if report.ran("scan") == 0:
        lines.append("  every batch was scanned already: only the gather step ran")
    return lines
