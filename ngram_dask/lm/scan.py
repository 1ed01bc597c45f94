"""First-token deletion scan (``scan_<L>``): where one token of earlier context changes
the model's prediction sharply. This module holds the batches, the resumable task and
the client; the statistics are ``scan_stats``, the gather of the parts ``scan_gather``.

The input is any format ``build`` reads (``ngram_dask.inputs``), cut into samples as the
build cuts it (``build.seq_len``, ``build.samples``). Its samples are numbered in input
order (files sorted, each file's samples in order), whatever the format: that number is
the ``sample`` column. Work units are *batches*: batch ``b`` is samples
``[b * samples_per_batch, (b + 1) * samples_per_batch)``, so a batch means the same samples
in every run and from every format holding the same samples; a batch may span input
pieces (it reads the ones it overlaps). Each Dask task scans one batch and writes the
candidate rows (``p_long > min_p_long AND sym_kl > min_sym_kl``) to
``parts/batch-<b>.parquet`` under a temporary name, then a ``_done`` marker: a rerun
skips done batches, and a retried task overwrites its own file, never duplicating rows.
The client then gathers the parts, decodes them with the tokenizer, deduplicates on
``text`` and writes ``--out`` (and optionally the table ``scan_<L>`` of the catalog
database, in one transaction, recorded in ``catalog_info`` under its own name).
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
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
from ngram_dask.inputs import InputPlan, Piece, plan_input, read_piece
from ngram_dask.lm.scan_gather import (
    batch_name,
    decode_candidates,
    marker_url,
    part_schema,
    part_url,
    read_parts,
)
from ngram_dask.lm.scan_stats import FLOAT_STATS, candidate_mask, context_bounds, position_statistics
from ngram_dask.runtime import DiskFull, Manifest, Stage, StageReport, Step, resumable, run_stage
from ngram_dask.schema import scan_table
from ngram_dask.storage import atomic_write_parquet, join, redact_url

Announce = Callable[[str], None]


# ---------------------------------------------------------------------------------------
# Batches and the per-batch task.
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BatchRef:
    """Samples ``[sample0, sample0 + len)`` of the input: ``spans`` are ``(piece, first, stop)``,
    samples ``[first, stop)`` of each piece it overlaps, in order."""

    index: int
    spans: tuple[tuple[Piece, int, int], ...]
    sample0: int

    @property
    def name(self) -> str:
        return batch_name(self.index)


def make_batches(pieces: Sequence[Piece], samples_per_batch: int, limit: int | None = None) -> list[BatchRef]:
    """Batch ``b``: samples ``[b * samples_per_batch, (b + 1) * samples_per_batch)`` of the
    input, across pieces and files; the first ``limit`` batches only when given."""
    out: list[BatchRef] = []
    spans: list[tuple[Piece, int, int]] = []
    have = 0
    for piece in pieces:
        first = 0
        while first < piece.samples:
            if limit is not None and len(out) >= limit:
                return out
            take = min(samples_per_batch - have, piece.samples - first)
            spans.append((piece, first, first + take))
            first, have = first + take, have + take
            if have == samples_per_batch:
                out.append(BatchRef(len(out), tuple(spans), len(out) * samples_per_batch))
                spans, have = [], 0
    if spans and (limit is None or len(out) < limit):
        out.append(BatchRef(len(out), tuple(spans), len(out) * samples_per_batch))
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
def _piece_samples(piece: Piece, vocab: int, verify: bool) -> list[np.ndarray]:
    """A piece's samples; kept for the next batch, which often reads the same piece."""
    data = read_piece(piece, vocab, verify)
    return [data.tokens[data.offsets[j]:data.offsets[j + 1]] for j in range(len(data.offsets) - 1)]


def batch_samples(batch: BatchRef, vocab: int, verify: bool = True) -> list[np.ndarray]:
    """The samples of one batch, in order, ids checked against ``vocab``."""
    return [x for piece, first, stop in batch.spans for x in _piece_samples(piece, vocab, verify)[first:stop]]


@resumable(lambda batch, s: marker_url(s.scan_dir, batch.index))
def scan_batch(batch: BatchRef, s: ScanSettings) -> dict:
    """Scan one batch: write its candidate rows; return its statistics (a resumable task)."""
    samples = batch_samples(batch, s.model_vocab, s.verify_hashes)
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
        "pieces": [piece.name for piece, _, _ in batch.spans],
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


def scan_identity(cfg: Config, model: str, plan: InputPlan) -> dict:
    s, b = cfg.scan, cfg.build
    return {
        "input": redact_url(cfg.input),
        "model": model,
        "seq_len": s.seq_len,
        "samples_per_batch": s.samples_per_batch,
        "min_p_long": s.min_p_long,
        "min_sym_kl": s.min_sym_kl,
        "device": s.device,
        "dtype": s.dtype,
        "token_dtype": plan.token_dtype,
        # how the input is cut into samples: the batches and the sample column depend on it
        "input_format": plan.format,
        "samples": plan.samples,
        "sample_len": b.seq_len if plan.format != "mds" else None,
        "token_column": b.token_column,
        # batches run across pieces; a work dir of shard-bound batches (older ngram-dask) has no
        # pieces. A digest: a whole corpus in pieces of about one batch is millions of them.
        "pieces": f"{len(plan.pieces)} piece(s), sha256 "
                  + hashlib.sha256(json.dumps([p.identity() for p in plan.pieces]).encode()).hexdigest()[:16],
    }


def plan_scan_input(cfg: Config) -> InputPlan:
    """The input's pieces, cut into samples as ``build`` cuts them. Pieces hold about one
    batch (not an explode unit's tokens), so a batch reads little more than its own samples."""
    b, s = cfg.build, cfg.scan
    plan = plan_input(cfg.input, input_format=b.input_format, token_dtype=b.token_dtype, seq_len=b.seq_len,
                      samples=b.samples, token_column=b.token_column,
                      unit_tokens=max(1, s.samples_per_batch * b.seq_len))
    if sum(p.samples for p in plan.pieces) == 0:
        raise BadInputError(f"input dataset {redact_url(cfg.input)} is empty: no samples in "
                            f"{len(plan.pieces)} piece(s)")
    return plan


def run_scan(cfg: Config, announce: Announce = print) -> ScanReport:
    """Scan every batch (resumable), gather the candidates into ``--out`` (and ``scan_<L>``)."""
    return run_stage(cfg, "scan", lambda info: declare_scan(cfg, announce), announce)


def declare_scan(cfg: Config, announce: Announce) -> Stage:
    from ngram_dask.lm.models import expand_model_name
    from ngram_dask.tokenizer import load_tokenizer

    s = cfg.scan
    report = ScanReport(out=s.out)
    model = expand_model_name(s.model)
    plan = plan_scan_input(cfg)
    model_vocab, model_cfg = _model_config(model)
    max_pos = getattr(model_cfg, "max_position_embeddings", None)
    if isinstance(max_pos, int) and s.seq_len + 1 > max_pos:
        raise ConfigError(f"--seq-len {s.seq_len} needs {s.seq_len + 1}-token windows; "
                          f"{model} takes at most {max_pos} positions")
    tokenizer = load_tokenizer(cfg.tokenizer)  # fail before the scan, not after

    batches = make_batches(plan.pieces, s.samples_per_batch, s.batches)
    work_dir = cfg.work_dir or default_work_dir(s.out)
    scan_dir = join(work_dir, f"scan-{s.seq_len}-{_safe(model)}")
    settings = ScanSettings(
        scan_dir=scan_dir, model=model, seq_len=s.seq_len, micro_batch=s.micro_batch,
        min_p_long=s.min_p_long, min_sym_kl=s.min_sym_kl, device=s.device, dtype=s.dtype,
        model_vocab=model_vocab, verify_hashes=cfg.build.verify_hashes,
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
        manifest=Manifest(join(scan_dir, "manifest.json"), scan_identity(cfg, model, plan),
                          f"scan work dir {scan_dir}",
                          describe={"pieces": "input pieces (or batches of an older ngram-dask)"}),
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
