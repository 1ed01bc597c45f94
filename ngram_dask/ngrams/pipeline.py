"""The build: explode (a Dask bag of shard groups) -> aggregate (a Dask DataFrame of id0
chunks) -> load (the client, the database's one writer) -> catalog (the top tables).

The stages are plain functions; this module submits them (through ``runtime``) and
checks, before any work, that the input, the work dir and the database belong together.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ngram_dask import __version__
from ngram_dask.cluster import (
    check_worker_access,
    get_client,
    install_storage_options,
    package_versions,
    performance_report,
)
from ngram_dask.config import Config
from ngram_dask.db import check_existing, read_info, table_names, writer_lock
from ngram_dask.errors import BadInputError, WorkDirError
from ngram_dask.mds import ShardRef, list_shards, resolve_token_dtype
from ngram_dask.ngrams.aggregate import AggregateSettings
from ngram_dask.ngrams.aggregate import marker_url as aggregate_marker_url
from ngram_dask.ngrams.counting import derived_in_aggregate
from ngram_dask.ngrams.explode import ExplodeSettings, explode_group, group_shards
from ngram_dask.ngrams.explode import marker_url as explode_marker_url
from ngram_dask.ngrams.load import CatalogWriter
from ngram_dask.runtime import DiskFull, Progress, as_finished
from ngram_dask.schema import SCHEMA_VERSION, TOOL, ngram_table, prefix_table
from ngram_dask.storage import is_local, join, local_path, read_marker, redact_url, use_storage, write_marker

Announce = Callable[[str], None]
log = logging.getLogger(__name__)


@dataclass
class BuildReport:
    shards: int = 0
    samples: int = 0
    tokens: int = 0
    ngrams: dict[int, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    loaded_chunks: int = 0
    load_seconds: float = 0.0  # time inside the load transactions (part of aggregate+load)
    skipped: dict[str, int] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    dashboard: str | None = None

    @property
    def did_nothing(self) -> bool:
        return (self.skipped.get("explode", 0) == self.shards and self.loaded_chunks == 0
                and self.skipped.get("aggregate_new", 0) == 0 and "catalog" not in self.seconds)


def build_identity(cfg: Config) -> dict[str, str]:
    return {
        "input": redact_url(cfg.input),
        "chunks": str(cfg.build.chunks),
        "ngrams": json.dumps(sorted(cfg.build.ngrams)),
        "vocab_size": str(cfg.vocab_size),
        "drop_eos": json.dumps(cfg.build.drop_eos),
    }


def _check_work_dir(cfg: Config, shards: list[ShardRef], token_dtype: str, claim: bool = False) -> None:
    """Refuse a work dir that holds intermediate results of another input or layout;
    with ``claim``, record this build's manifest there (once the cluster is known good)."""
    manifest = {
        **build_identity(cfg),
        "token_dtype": token_dtype,
        "shards": [[s.basename, s.samples, s.raw_bytes] for s in shards],
        # Part files are named after their shard group: another grouping must not mix in.
        "explode_task_tokens": cfg.build.explode_task_tokens,
        # The n whose part files hold only the samples' last n-grams.
        "derived": list(derived_in_aggregate(cfg.build.ngrams, cfg.build.drop_eos)),
    }
    url = join(cfg.work_dir, "manifest.json")
    try:
        existing = read_marker(url)
    except OSError as exc:
        raise WorkDirError(f"cannot read work dir {cfg.work_dir}: {exc}") from None
    if existing is None:
        if not claim:
            return
        try:
            write_marker(url, manifest)
        except OSError as exc:
            raise WorkDirError(f"cannot write to work dir {cfg.work_dir}: {exc}") from None
        return
    for key, value in manifest.items():
        if existing.get(key) != value:
            what = {"shards": "the input shards",
                    "explode_task_tokens": f"shard groups (build.explode_task_tokens {existing.get(key)}, "
                                           f"not {value})",
                    "derived": "partial files (written by another version of ngram-dask)"}.get(key, key)
            raise WorkDirError(
                f"work dir {cfg.work_dir} holds results for different {what}; "
                "use a fresh --work-dir (or delete this one)"
            )


def run_build(cfg: Config, announce: Announce = print) -> BuildReport:
    cfg.check("build")
    b = cfg.build
    report = BuildReport()
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    options = use_storage(cfg.storage.s3_endpoint_url, cfg.storage.s3_region)

    shards = list_shards(cfg.input)
    if not shards or sum(s.samples for s in shards) == 0:
        raise BadInputError(f"input dataset {redact_url(cfg.input)} is empty: no samples in {len(shards)} shard(s)")
    report.shards = len(shards)
    token_dtype = resolve_token_dtype(b.token_dtype, cfg.input)
    tokenizer = None
    if "catalog" in b.steps:  # fail before hours of work, not after
        from ngram_dask.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(cfg.tokenizer)
    identity = build_identity(cfg)
    check_existing(cfg.db, identity)
    _check_work_dir(cfg, shards, token_dtype)

    xs = ExplodeSettings(
        work_dir=cfg.work_dir, ngrams=tuple(sorted(b.ngrams)), chunks=b.chunks,
        vocab_size=cfg.vocab_size, token_dtype=token_dtype, drop_eos=b.drop_eos,
        eos_id=b.eos_id, verify_hashes=b.verify_hashes, task_tokens=b.explode_task_tokens,
        count_engine=b.count_engine, derived=derived_in_aggregate(b.ngrams, b.drop_eos),
    )
    ags = AggregateSettings(work_dir=cfg.work_dir, memory_fraction=b.duckdb_memory_fraction,
                            threads=b.duckdb_threads, method=b.aggregate_method, spill_dir=b.spill_dir,
                            derived=xs.derived)

    with writer_lock(cfg.db), get_client(cfg.cluster, announce) as client:
        report.dashboard = client.dashboard_link
        install_storage_options(client, options)
        check_worker_access(client, cfg.input, cfg.work_dir)
        _check_work_dir(cfg, shards, token_dtype, claim=True)
        workers_at_start = set(client.scheduler_info()["workers"])
        with performance_report(cfg.cluster.performance_report):
            _run_explode(client, shards, xs, b.steps, announce, report)
            if not {"aggregate", "load"} & set(b.steps):
                return report
            _run_aggregate_and_load(client, cfg, xs, ags, identity, started, announce, report, tokenizer)
        _warn_lost_workers(client, workers_at_start, announce)
    return report


def _warn_lost_workers(client, at_start: set, announce: Announce) -> None:
    lost = at_start - set(client.scheduler_info()["workers"])
    if lost:
        log.warning("%d worker(s) left during the build (%s); Dask re-ran their tasks elsewhere",
                    len(lost), ", ".join(sorted(lost)))
        announce(f"warning: {len(lost)} worker(s) were lost during the build; their tasks were re-run")


def _disk(work_dir: str) -> DiskFull:
    return DiskFull(f"the work dir {work_dir}", advice="free space (or use a larger --work-dir)",
                    hint=lambda: _space_hint(work_dir))


def _space_hint(work_dir: str) -> str:
    """' (free X MiB, this build has written Y MiB so far, about Z MiB more needed)' for a local work dir."""
    import shutil

    if not is_local(work_dir):
        return ""
    path = local_path(work_dir)
    written = sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
    free = shutil.disk_usage(path).free
    done = sum(len(json.loads(m.read_text()).get("shards", [None]))
               for m in Path(path, "explode", "_done").glob("*.json"))
    total = len(json.loads(Path(path, "manifest.json").read_text())["shards"])
    needed = written / max(done, 1) * total * 1.5 - written  # aggregate output ~ half of explode's
    return (f" (free {free / 2**20:.1f} MiB, written so far {written / 2**20:.1f} MiB, "
            f"about {max(needed, 0) / 2**20:.1f} MiB more needed)")


def _run_explode(client, shards, xs: ExplodeSettings, steps, announce, report: BuildReport) -> list[dict]:
    import dask.bag as db

    token_bytes = 4 if xs.token_dtype == "uint32" else 2
    groups = group_shards(shards, xs.task_tokens, token_bytes)
    if "explode" not in steps:
        stats = [read_marker(explode_marker_url(xs.work_dir, g.name)) for g in groups]
        missing = [g.name for g, st in zip(groups, stats) if st is None]
        if missing:
            raise WorkDirError(f"shard group {missing[0]} has not been exploded yet: run the explode step first")
        report.skipped["explode"] = len(shards)
        _tally(report, stats)
        return stats

    announce(f"explode: {len(shards)} shard(s) in {len(groups)} task(s) -> {xs.chunks} chunk(s), "
             f"n = {', '.join(map(str, xs.ngrams))}")
    # A bag of shard groups (descriptors, never data): one partition, one task, per group.
    bag = db.from_sequence(groups, partition_size=1).map(explode_group, xs)
    futures = client.compute(bag.to_delayed(), optimize_graph=False)
    progress = Progress("explode", len(futures), "tasks", announce)
    stats: list[dict] = []
    for _, part in as_finished(futures, _disk(xs.work_dir)):
        stats.extend(part)
        progress.step(tokens=sum(p["tokens"] for p in part))
    report.seconds["explode"] = progress.seconds
    report.skipped["explode"] = sum(len(s["shards"]) for s in stats if s.get("skipped"))
    _tally(report, stats)
    return stats


def _tally(report: BuildReport, stats: list[dict]) -> None:
    report.samples = sum(s["samples"] for s in stats)
    report.tokens = sum(s["tokens"] for s in stats)
    totals: dict[int, int] = {}
    for s in stats:
        for n, v in s["ngrams"].items():
            totals[int(n)] = totals.get(int(n), 0) + int(v)
    report.ngrams = totals


def _run_aggregate_and_load(client, cfg: Config, xs: ExplodeSettings, ags: AggregateSettings,
                            identity: dict, started: str, announce: Announce,
                            report: BuildReport, tokenizer=None) -> None:
    b = cfg.build
    steps = set(b.steps)
    if report.tokens == 0:
        raise BadInputError(f"input dataset {redact_url(cfg.input)} is empty: its samples hold no tokens")
    info = {
        **identity,
        "tool": TOOL,
        "schema_version": str(SCHEMA_VERSION),
        "ngram_dask_version": __version__,
        "versions": package_versions(),
        "shards": str(report.shards),
        "samples": str(report.samples),
        "tokens": str(report.tokens),
        **{f"ngram_total_{n}": str(v) for n, v in report.ngrams.items()},
        "token_dtype": xs.token_dtype,
        "started_at": started,
    }
    writer = (CatalogWriter(cfg.db, b.ngrams, cfg.vocab_size, b.chunks, info, cfg.work_dir)
              if "load" in steps else None)
    try:
        loaded = writer.loaded() if writer else set()
        todo = [(n, c) for n in sorted(b.ngrams) for c in range(b.chunks) if (n, c) not in loaded]
        announce(f"aggregate: {len(todo)} chunk(s) to do, {len(loaded)} already loaded")
        progress = Progress("aggregate+load" if writer else "aggregate", len(todo), "chunks", announce)
        t0 = time.perf_counter()
        if "aggregate" in steps:
            # One task per chunk of each n not derived: it writes the derived n of its chunk too.
            tops = sorted({(ags.top(n), c) for n, c in todo})
            wanted = set(todo)
            results = (r for r in _aggregate_results(client, tops, ags, cfg.work_dir)
                       if (int(r["n"]), int(r["chunk"])) in wanted)
        else:
            results = (_aggregated(cfg.work_dir, n, c) for n, c in todo)
        # Each n is loaded in one transaction (its rows and its ledger rows together) as
        # soon as its last chunk is aggregated: a few large INSERTs per table are as fast
        # as loading the finished files at once. (An n aggregated by its own tasks, not
        # derived, loads while a larger one still aggregates.)
        waiting = {n: sum(1 for m, _ in todo if m == n) for n in sorted(b.ngrams)}
        ready: dict[int, list[dict]] = {n: [] for n in waiting}
        new_aggregates = 0
        for res in results:
            n = int(res["n"])
            new_aggregates += 0 if res.get("skipped") else 1
            ready[n].append(res)
            progress.step()
            if len(ready[n]) == waiting[n] and writer:
                t_load = time.perf_counter()
                report.loaded_chunks += writer.append_chunks(ready[n])
                report.load_seconds += time.perf_counter() - t_load
                ready[n] = []
        report.skipped["aggregate_new"] = new_aggregates
        report.seconds["aggregate+load"] = time.perf_counter() - t0
        if writer:
            if report.loaded_chunks:
                writer.write_info({"finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})
            if tokenizer is not None:
                _run_catalog(writer, cfg, tokenizer, announce, report)
            for n in sorted(b.ngrams):
                for table in [ngram_table(n)] + ([prefix_table(n)] if n >= 2 else []):
                    report.rows[table] = writer.con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    finally:
        if writer:
            writer.close()


def _run_catalog(writer: CatalogWriter, cfg: Config, tokenizer, announce: Announce,
                 report: BuildReport) -> None:
    from ngram_dask.ngrams.top import build_catalog, top_rules
    from ngram_dask.schema import catalog_tables

    missing = set(catalog_tables(cfg.build.ngrams)) - table_names(writer.con)
    info = read_info(writer.con)
    wanted = {**top_rules(cfg.build.ngrams, cfg.catalog), "tokenizer": cfg.tokenizer}
    changed = any(info.get(k) != v for k, v in wanted.items())
    if not report.loaded_chunks and not missing and not changed:
        return  # counts, thresholds and tokenizer unchanged: keep the top tables and their scores
    t0 = time.perf_counter()
    rows = build_catalog(writer.con, tokenizer, cfg.vocab_size, sorted(cfg.build.ngrams), cfg.catalog)
    writer.write_info({"tokenizer": cfg.tokenizer})
    report.seconds["catalog"] = time.perf_counter() - t0
    announce(f"catalog: {', '.join(f'{t} {r:,} rows' for t, r in rows.items())}")


def _aggregate_results(client, todo: list[tuple[int, int]], ags: AggregateSettings, work_dir: str):
    """Compute the aggregate DataFrame (one partition per chunk); yield each chunk's
    statistics as its partition finishes."""
    from ngram_dask.ngrams.aggregate import aggregate_frame

    if not todo:
        return
    futures = client.compute(aggregate_frame(todo, ags).to_delayed())
    for _, frame in as_finished(futures, _disk(work_dir)):
        for res in frame["result"]:
            yield json.loads(res)


def _aggregated(work_dir: str, n: int, c: int) -> dict:
    res = read_marker(aggregate_marker_url(work_dir, n, c))
    if res is None:
        raise WorkDirError(f"chunk {c} of n={n} has not been aggregated yet: run the aggregate step first")
    return {**res, "skipped": True}


def summary_lines(report: BuildReport) -> list[str]:
    total = sum(report.seconds.values())
    lines = ["", "summary:",
             f"  shards {report.shards}, samples {report.samples:,}, tokens {report.tokens:,}"]
    for stage, sec in report.seconds.items():
        lines.append(f"  {stage:<15} {sec:8.2f} s")
    if total:
        lines.append(f"  {'total':<15} {total:8.2f} s  ({report.tokens / total / 1e6:.2f}M tokens/s)")
    for table, rows in report.rows.items():
        lines.append(f"  {table:<17} {rows:>14,} rows")
    if report.did_nothing:
        lines.append("  nothing to do: every shard was exploded and every chunk loaded already")
    return lines
