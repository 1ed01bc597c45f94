"""The build: explode (a Dask bag of piece groups) -> aggregate (a Dask DataFrame of id0
chunks) -> load (the client, the database's one writer) -> top (the top tables).

The stage's steps are declared here; ``runtime.run_stage`` runs them: it checks, before
any work, that the input, the work dir and the database belong together, starts the
cluster, skips done units and holds the database's single writer.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ngram_dask import __version__
from ngram_dask.cluster import local_cores, package_versions, sized_unit_tokens
from ngram_dask.config import Config
from ngram_dask.db import read_info, scalar, table_names
from ngram_dask.errors import BadInputError, DatabaseError
from ngram_dask.inputs import InputPlan, balanced_plan, group_pieces, plan_input
from ngram_dask.ngrams.aggregate import AggregateSettings
from ngram_dask.ngrams.counting import derived_in_aggregate
from ngram_dask.ngrams.explode import ExplodeSettings, explode_group
from ngram_dask.ngrams.load import WRITER_SETTINGS, CountsWriter
from ngram_dask.runtime import DiskFull, Manifest, Stage, StageContext, StageReport, Step, run_stage
from ngram_dask.schema import LEDGER, SCHEMA_VERSION, TOOL, ngram_table, prefix_table
from ngram_dask.storage import is_local, join, local_path, redact_url

Announce = Callable[[str], None]
log = logging.getLogger(__name__)


@dataclass
class BuildReport(StageReport):
    pieces: int = 0
    samples: int = 0
    tokens: int = 0
    ngrams: dict[int, int] = field(default_factory=dict)
    loaded_chunks: int = 0
    load_seconds: float = 0.0  # time inside the load transactions (part of aggregate+load)
    aggregated: int = 0  # chunks aggregated by this run (not by an earlier one)
    rows: dict[str, int] = field(default_factory=dict)

    @property
    def did_nothing(self) -> bool:
        return (self.ran("explode") == 0 and self.loaded_chunks == 0 and self.aggregated == 0
                and "top" not in self.seconds)


def build_identity(cfg: Config) -> dict[str, str]:
    return {
        "input": redact_url(cfg.input),
        "chunks": str(cfg.build.chunks),
        "ngrams": json.dumps(sorted(cfg.build.ngrams)),
        "vocab_size": str(cfg.vocab_size),
        "drop_eos": json.dumps(cfg.build.drop_eos),
        # how the input was read: `contexts` reads it again the same way
        "input_format": cfg.build.input_format,
        "seq_len": str(cfg.build.seq_len),
        "samples_mode": cfg.build.samples,
        "token_column": cfg.build.token_column or "",
    }


# The explode's part files: one data and index file per (unit, n), chunks as blocks
# (``ngrams.partfile``). A work dir of the older layout (a file per unit, n and chunk) has
# no such key in its manifest and is refused in one line.
EXPLODE_LAYOUT = "unit-files-2"


def work_dir_manifest(cfg: Config, plan: InputPlan, unit_tokens: int) -> Manifest:
    """What the work dir's intermediate results depend on: another input or layout is refused."""
    identity = {
        **build_identity(cfg),
        "token_dtype": plan.token_dtype,
        "input_format": plan.format,
        "samples": plan.samples,
        "shards": [piece.identity() for piece in plan.pieces],
        # Part files are named after their shard group: another grouping must not mix in.
        "explode_unit_tokens": unit_tokens,
        "explode_layout": EXPLODE_LAYOUT,
        # The n whose part files hold only the samples' last n-grams.
        "derived": list(derived_in_aggregate(cfg.build.ngrams, cfg.build.drop_eos)),
    }
    return Manifest(join(cfg.work_dir, "manifest.json"), identity, f"work dir {cfg.work_dir}", describe={
        "shards": "the input pieces",
        "explode_unit_tokens": lambda old, new: f"piece groups (build.explode_unit_tokens {old}, not {new})",
        "derived": "partial files (written by another version of ngram-dask)",
        "explode_layout": "explode layout (written by an older ngram-dask)",
    })


def explode_unit_tokens(cfg: Config) -> tuple[int, bool]:
    """Tokens per explode unit, and whether they are the automatic size:
    ``build.explode_unit_tokens``, else the size a work dir recorded (it keeps its
    grouping, whatever the cluster now), else sized from the worker's memory
    (``cluster.sized_unit_tokens``; ``explode_plan`` may lower it for a small corpus)."""
    if cfg.build.explode_unit_tokens:
        return cfg.build.explode_unit_tokens, False
    recorded = Manifest(join(cfg.work_dir, "manifest.json"), {}, f"work dir {cfg.work_dir}").read() or {}
    if recorded.get("explode_layout") == EXPLODE_LAYOUT and recorded.get("explode_unit_tokens"):
        return int(recorded["explode_unit_tokens"]), False
    return sized_unit_tokens(None, cfg.cluster), True


def explode_plan(cfg: Config) -> tuple[InputPlan, int]:
    """The input's plan and the tokens per explode unit it was cut with: the automatic size
    is lowered until every core of a LocalCluster gets ``inputs.UNITS_PER_CORE`` units."""
    b = cfg.build
    unit_tokens, auto = explode_unit_tokens(cfg)

    def plan_for(unit: int) -> InputPlan:
        return plan_input(cfg.input, input_format=b.input_format, token_dtype=b.token_dtype, seq_len=b.seq_len,
                          samples=b.samples, token_column=b.token_column, unit_tokens=unit)

    return balanced_plan(plan_for, unit_tokens, local_cores(cfg.cluster) if auto else None)


def run_build(cfg: Config, announce: Announce = print) -> BuildReport:
    """explode -> aggregate -> load -> top, as one stage of the runtime."""
    return run_stage(cfg, "build", lambda info: declare_build(cfg, announce), announce)


def declare_build(cfg: Config, announce: Announce) -> Stage:
    b = cfg.build
    report = BuildReport()
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    plan, unit_tokens = explode_plan(cfg)
    pieces = plan.pieces
    report.pieces = len(pieces)
    token_dtype = plan.token_dtype
    tokenizer = None
    if "top" in b.steps:  # fail before hours of work, not after
        from ngram_dask.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(cfg.tokenizer)
    identity = build_identity(cfg)
    xs = ExplodeSettings(
        work_dir=cfg.work_dir, ngrams=tuple(sorted(b.ngrams)), chunks=b.chunks,
        vocab_size=cfg.vocab_size, token_dtype=token_dtype, drop_eos=b.drop_eos,
        eos_id=b.eos_id, verify_hashes=b.verify_hashes, unit_tokens=unit_tokens,
        count_engine=b.count_engine, derived=derived_in_aggregate(b.ngrams, b.drop_eos), block_rows=b.block_rows,
        mark_rows=b.mark_rows,
    )
    ags = AggregateSettings(work_dir=cfg.work_dir, memory_fraction=b.duckdb_memory_fraction,
                            threads=b.duckdb_threads, method=b.aggregate_method, spill_dir=b.spill_dir,
                            derived=xs.derived, numpy_budget_bytes=b.aggregate_budget_bytes)

    def steps(ctx: StageContext):
        yield _explode_step(pieces, xs, b.steps, announce)
        _tally(report, ctx.results["explode"])
        if not {"aggregate", "load", "top"} & set(b.steps):
            return
        if report.tokens == 0:
            raise BadInputError(f"input dataset {redact_url(cfg.input)} is empty: its samples hold no tokens")
        writer = None
        if "load" in b.steps:
            info = {**identity, "tool": TOOL, "schema_version": str(SCHEMA_VERSION),
                    "ngram_dask_version": __version__, "versions": package_versions(),
                    "shards": str(report.pieces), "samples": str(report.samples), "tokens": str(report.tokens),
                    **{f"ngram_total_{n}": str(v) for n, v in report.ngrams.items()},
                    "token_dtype": xs.token_dtype, "started_at": started}
            writer = CountsWriter(ctx.db(), b.ngrams, cfg.vocab_size, b.chunks, info, cfg.work_dir)
        if {"aggregate", "load"} & set(b.steps):
            yield _aggregate_step(cfg, ags, writer, announce, report)
        if writer is None and tokenizer is not None:
            writer = _loaded_counts(ctx, cfg)  # the top step without the load: an earlier run's counts
        if writer is None:
            return
        if report.loaded_chunks:
            writer.write_info({"finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})
        if tokenizer is not None:
            _build_top(writer, cfg, tokenizer, announce, report)
        for n in sorted(b.ngrams):
            for table in [ngram_table(n)] + ([prefix_table(n)] if n >= 2 else []):
                report.rows[table] = scalar(writer.con, f"SELECT count(*) FROM {table}")

    return Stage(steps, report, manifest=work_dir_manifest(cfg, plan, unit_tokens), db=cfg.db, db_identity=identity,
                 db_settings=WRITER_SETTINGS, access=(cfg.input, cfg.work_dir))


def _disk(work_dir: str) -> DiskFull:
    return DiskFull(f"the work dir {work_dir}", advice="free space (or use a larger --work-dir)",
                    hint=lambda done, total: _space_hint(work_dir, done, total))


def _space_hint(work_dir: str, done: int, total: int) -> str:
    """' (free X MiB, this build has written Y MiB so far, about Z MiB more needed)' for a local work
    dir, ``done`` of the explode's ``total`` units being finished."""
    import shutil

    if not is_local(work_dir):
        return ""
    path = local_path(work_dir)
    written = sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
    free = shutil.disk_usage(path).free
    needed = written / max(done, 1) * total * 1.5 - written  # aggregate output ~ half of explode's
    return (f" (free {free / 2**20:.1f} MiB, written so far {written / 2**20:.1f} MiB, "
            f"about {max(needed, 0) / 2**20:.1f} MiB more needed)")


def _explode_step(pieces, xs: ExplodeSettings, steps, announce) -> Step:
    """A Dask bag of piece groups (descriptors, never data): one partition, one unit, per group."""
    import dask.bag as db

    groups = group_pieces(pieces, xs.unit_tokens)
    if "explode" in steps:
        announce(f"explode: {len(pieces)} piece(s) of input in {len(groups)} unit(s) -> {xs.chunks} chunk(s), "
                 f"n = {', '.join(map(str, xs.ngrams))}")

    def submit(client, todo):
        bag = db.from_sequence(todo, partition_size=1).map(explode_group, xs)
        return client.compute(bag.to_delayed(), optimize_graph=False)

    return Step("explode", groups, explode_group, args=lambda g: (g, xs), submit=submit, unpack=list,
                disk=_disk(xs.work_dir), run="explode" in steps,
                not_run=lambda g: f"piece group {g.name} has not been exploded yet: run the explode step first")


def _tally(report: BuildReport, stats: list[dict]) -> None:
    report.samples = sum(s["samples"] for s in stats)
    report.tokens = sum(s["tokens"] for s in stats)
    totals: dict[int, int] = {}
    for s in stats:
        for n, v in s["ngrams"].items():
            totals[int(n)] = totals.get(int(n), 0) + int(v)
    report.ngrams = totals


def _aggregate_step(cfg: Config, ags: AggregateSettings, writer: CountsWriter | None, announce: Announce,
                    report: BuildReport) -> Step:
    """A Dask DataFrame of id0 chunks (one partition per chunk); the writer loads each n
    as soon as its last chunk is aggregated."""
    from ngram_dask.ngrams.aggregate import aggregate_chunk, aggregate_frame, chunk_results, unit_stats

    b = cfg.build
    loaded = writer.loaded() if writer else set()
    todo = [(n, c) for n in sorted(b.ngrams) for c in range(b.chunks) if (n, c) not in loaded]
    announce(f"aggregate: {len(todo)} chunk(s) to do, {len(loaded)} already loaded")
    # One task per chunk of each n not derived: it writes the derived n of its chunk too.
    tops = sorted({(ags.top(n), c) for n, c in todo})
    wanted = set(todo)
    # Each n is loaded in one transaction (its rows and its ledger rows together) as soon as
    # its last chunk is aggregated: a few large INSERTs per table are as fast as loading the
    # finished files at once. (An n aggregated by its own tasks, not derived, loads while a
    # larger one still aggregates.)
    waiting = {n: sum(1 for m, _ in todo if m == n) for n in sorted(b.ngrams)}
    ready: dict[int, list[dict]] = {n: [] for n in waiting}
    def on_result(res: dict, ctx) -> None:
        n = int(res["n"])
        if (n, int(res["chunk"])) not in wanted:
            return  # a derived n of a chunk loaded before
        report.aggregated += 0 if res.get("skipped") else 1
        ready[n].append(res)
        if len(ready[n]) == waiting[n] and writer:
            t_load = time.perf_counter()
            report.loaded_chunks += writer.append_chunks(ready[n])
            report.load_seconds += time.perf_counter() - t_load
            ready[n] = []

    def submit(client, units):
        return client.compute(aggregate_frame(units, ags).to_delayed())

    return Step("aggregate+load" if writer else "aggregate", tops, aggregate_chunk, args=lambda u: (*u, ags),
                counts="chunk units", submit=submit, unpack=unit_stats,
                expand=chunk_results, disk=_disk(cfg.work_dir), run="aggregate" in b.steps,
                not_run=lambda u: f"chunk {u[1]} of n={u[0]} has not been aggregated yet: "
                                  "run the aggregate step first",
                on_result=on_result)


def _loaded_counts(ctx: StageContext, cfg: Config) -> CountsWriter:
    """The writer over counts an earlier run loaded: every chunk of every n, else one line
    (and a database that does not exist is not created)."""
    missing_db = not os.path.exists(cfg.db)
    loaded = set() if missing_db or LEDGER not in table_names(ctx.db()) else \
        {(int(n), int(c)) for n, c in ctx.db().execute(f"SELECT n, chunk FROM {LEDGER}").fetchall()}
    missing = sorted((n, c) for n in cfg.build.ngrams for c in range(cfg.build.chunks) if (n, c) not in loaded)
    if missing:
        n, c = missing[0]
        raise DatabaseError(f"database {cfg.db} has not loaded chunk {c} of n={n} ({len(missing)} chunk(s) "
                            "missing): run the load step first (--steps load,top)")
    return CountsWriter(ctx.db(), cfg.build.ngrams, cfg.vocab_size, cfg.build.chunks, {}, cfg.work_dir)


def _build_top(writer: CountsWriter, cfg: Config, tokenizer, announce: Announce,
                 report: BuildReport) -> None:
    from ngram_dask.ngrams.top import build_top_tables, top_rules
    from ngram_dask.schema import catalog_tables

    missing = set(catalog_tables(cfg.build.ngrams)) - table_names(writer.con)
    info = read_info(writer.con)
    wanted = {**top_rules(cfg.build.ngrams, cfg.top), "tokenizer": cfg.tokenizer}
    changed = any(info.get(k) != v for k, v in wanted.items())
    if not report.loaded_chunks and not missing and not changed:
        return  # counts, thresholds and tokenizer unchanged: keep the top tables and their scores
    t0 = time.perf_counter()
    rows = build_top_tables(writer.con, tokenizer, cfg.vocab_size, sorted(cfg.build.ngrams), cfg.top)
    writer.write_info({"tokenizer": cfg.tokenizer})
    report.seconds["top"] = time.perf_counter() - t0
    announce(f"top: {', '.join(f'{t} {r:,} rows' for t, r in rows.items())}")


def summary_lines(report: BuildReport) -> list[str]:
    total = sum(report.seconds.values())
    lines = ["", "summary:",
             f"  input pieces {report.pieces}, samples {report.samples:,}, tokens {report.tokens:,}"]
    lines += report.time_lines()
    if total:
        lines[-1] += f"  ({report.tokens / total / 1e6:.2f}M tokens/s)"
    for table, rows in report.rows.items():
        lines.append(f"  {table:<17} {rows:>14,} rows")
    if report.did_nothing:
        lines.append("  nothing to do: every piece was exploded and every chunk loaded already")
    return lines
