"""The client of ``ngram-dask contexts``: check, plan, run the piece groups, write.

A stage of the runtime (``runtime.run_stage``): it checks the database and the settings,
checks and claims the contexts dir's manifest (writing the prompts every unit reads
into a new dir first), holds the database's single writer, starts the cluster only when
a unit is left to do and skips units whose marker exists. This module declares the
rest: the ``plan`` (checked before any work), one step of piece groups (the task
``task.contexts_group``), and the writer (``write.ContextsWriter``), which merges each
unit's parts as its result arrives and writes everything in one transaction at the end.
The prompts carry cutoffs (``kernel.cutoffs``); should one have dropped one of its
prompt's k smallest (odds under 1e-13 a prompt), the writer sees it and a second step,
``rescan``, runs every piece group again without cutoffs, into its own parts.

Before any work: the database must be an ngram-dask catalog with top tables; the input
is the one ``catalog_info`` recorded (``--input``, when given, must be that one) and
must have its pieces and samples; the settings and the prompts name the contexts dir
(``<work dir>/contexts-<digest>``), so parts of other settings never mix. When the
database already holds contexts of these settings and prompts, nothing runs.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import pyarrow as pa

from ngram_dask.cluster import local_cores, piece_group_plan
from ngram_dask.config import Config
from ngram_dask.contexts.task import PART_FORMAT, ContextsSettings, contexts_group, prompts_table
from ngram_dask.contexts.write import ContextsWriter
from ngram_dask.db import read_info, read_only, scalar, table_names
from ngram_dask.errors import BadInputError, DatabaseError
from ngram_dask.inputs import PieceGroup, even_groups, plan_input
from ngram_dask.runtime import DiskFull, Manifest, Stage, StageContext, StageReport, Step, run_stage
from ngram_dask.schema import CONTEXTS, CONTEXTS_INFO, TOP_NGRAMS, top_table
from ngram_dask.storage import atomic_write_parquet, join, redact_url

Announce = Callable[[str], None]


@dataclass
class ContextsReport(StageReport):
    groups: int = 0  # units: piece groups of the input
    tokens: int = 0
    occurrences: dict[str, int] = field(default_factory=dict)
    rows: int = 0
    prunes: int = 0  # times the writer cut its merged examples to per_task per prompt
    rescanned: int = 0  # prompts a cutoff left short, so every piece group was scanned again without cutoffs
    phases: dict[str, float] = field(default_factory=dict)  # the units' seconds per phase, summed (this run's)
    prompts: dict[str, int] = field(default_factory=dict)
    present: bool = False  # the database held these contexts already: nothing ran
    dir: str | None = None


@dataclass
class Plan:
    db: str
    input: str
    settings: ContextsSettings
    identity: dict  # what the database's contexts must have been written with
    prompts: pa.Table
    sum_counts: np.ndarray
    groups: list[PieceGroup]
    present: bool


def default_work_dir(db: str) -> str:
    base = db[:-len(".duckdb")] if db.endswith(".duckdb") else db
    return base + ".contexts-work"


def _read_prompts(db: str, con, info: dict, per_task: int | None = None,
                  cutoff_sigmas: float = 0.0) -> tuple[pa.Table, np.ndarray, dict[str, int]]:
    """The top tables' prompts (``prompts_table``), their ``sum_count`` and each table's size;
    with ``per_task``, each prompt's cutoff for that many examples (``kernel.cutoffs``)."""
    tables = table_names(con)
    tops = [n for n in TOP_NGRAMS if top_table(n) in tables]
    if not tops:
        raise DatabaseError(f"database {db} has no top tables ({', '.join(top_table(n) for n in TOP_NGRAMS)}): "
                            "run `ngram-dask build --tokenizer ...` with its top step first")
    from ngram_dask.contexts.kernel import Prompts, cutoffs

    bits = int(int(info["vocab_size"]) - 1).bit_length()
    families, sums, sizes = {}, [], {}
    for n in tops:
        ids = ", ".join(f"id{j}" for j in range(n - 1))
        rows = con.execute(f"SELECT {ids}, id{n - 1}, sum_count FROM {top_table(n)} ORDER BY {ids}").fetchnumpy()
        sums.append(np.asarray(rows["sum_count"], np.int64))
        families[n] = Prompts(n, tuple(np.asarray(rows[f"id{j}"], np.int64) for j in range(n - 1)),
                              np.asarray(rows[f"id{n - 1}"], np.int64), bits,
                              cutoff=None if per_task is None else cutoffs(sums[-1], per_task, cutoff_sigmas))
        sizes[top_table(n)] = len(families[n])
    return prompts_table(families), np.concatenate(sums), sizes


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def plan(cfg: Config, info: dict) -> tuple[Plan, dict[str, int]]:
    """Everything checked before any work: database, input, prompts, settings, pieces
    (``info``: the database's ``catalog_info``)."""
    db = cfg.db
    if "input" not in info:
        raise DatabaseError(f"database {db} holds no build: run `ngram-dask build` first")
    recorded = info["input"]
    if cfg.input and redact_url(cfg.input) != recorded:
        raise DatabaseError(f"database {db} was built from input {recorded}, not {redact_url(cfg.input)}: "
                            "give the build's input (or leave --input out)")
    source = cfg.input or recorded
    if "***@" in source:
        raise DatabaseError(f"database {db} records its input without credentials ({recorded}): give it as --input")
    with read_only(db) as con:
        prompts, sum_counts, sizes = _read_prompts(db, con, info, cfg.contexts.per_task, cfg.contexts.cutoff_sigmas)
        have_tables = CONTEXTS in table_names(con)
    b = cfg.build

    def plan_for(unit: int):
        return plan_input(source, input_format=info.get("input_format", "auto"),
                          token_dtype=info.get("token_dtype") or b.token_dtype,
                          seq_len=int(info.get("seq_len", b.seq_len)), samples=info.get("samples_mode", b.samples),
                          token_column=info.get("token_column") or None, unit_tokens=unit)

    read_as, unit_tokens = piece_group_plan(b.explode_unit_tokens, cfg.cluster, plan_for)
    pieces = read_as.pieces
    if read_as.format == "mds":
        size, unit, recorded_size = sum(r.extra.samples for r in pieces), "samples", info.get("samples")
    else:
        size, unit, recorded_size = sum(r.tokens for r in pieces), "tokens", info.get("tokens")
    # (token files are cut into pieces by the unit size, which may differ from the build's)
    if (read_as.format == "mds" and str(len(pieces)) != info.get("shards")) or str(size) != recorded_size:
        raise DatabaseError(f"the input {redact_url(source)} has {len(pieces)} piece(s) and {size:,} {unit}; "
                            f"database {db} was built from {info.get('shards')} piece(s) and "
                            f"{int(recorded_size or 0):,} {unit}: the input changed since the build")
    c = cfg.contexts
    token_dtype = read_as.token_dtype
    drop_eos = json.loads(info.get("drop_eos", "false"))
    prompt_digest = hashlib.sha256(b"".join(
        np.ascontiguousarray(prompts.column(k).to_numpy()).tobytes() for k in ("n", "id0", "id1", "expected"))
    ).hexdigest()
    identity = {"input": recorded, "seed": c.seed, "per_task": c.per_task, "before": c.before, "after": c.after,
                "drop_eos": drop_eos, "eos_id": cfg.build.eos_id if drop_eos else None,
                "prompts": prompt_digest[:16]}
    present = have_tables and _recorded(info) == identity
    work = cfg.work_dir or default_work_dir(db)
    groups = even_groups(pieces, unit_tokens, local_cores(cfg.cluster))
    # the groups name the parts, and they follow the cluster's cores (``even_groups``)
    digest = _digest({**identity, "unit_tokens": unit_tokens, "token_dtype": token_dtype,
                      "shards": [r.identity() for r in pieces], "part_format": PART_FORMAT,
                      "cutoff_sigmas": c.cutoff_sigmas, "groups": [g.name for g in groups]})[:12]
    settings = ContextsSettings(
        dir=join(work, f"contexts-{digest}"), token_dtype=token_dtype, vocab_size=int(info["vocab_size"]),
        per_task=c.per_task, seed=c.seed, before=c.before, after=c.after, drop_eos=drop_eos,
        eos_id=cfg.build.eos_id, verify_hashes=cfg.build.verify_hashes)
    return Plan(db, source, settings, identity, prompts, sum_counts, groups, present), sizes


def _recorded(info: dict) -> dict | None:
    try:
        got = json.loads(info.get(CONTEXTS_INFO) or "null")
    except json.JSONDecodeError:
        return None
    return {k: got.get(k) for k in ("input", "seed", "per_task", "before", "after", "drop_eos", "eos_id",
                                    "prompts")} if isinstance(got, dict) else None


def manifest_of(p: Plan) -> Manifest:
    """The contexts dir's manifest: its settings, prompts and pieces. A new dir gets the
    prompts every unit reads before the manifest is written."""
    return Manifest(join(p.settings.dir, "manifest.json"), {**p.identity, "pieces": [x.name for x in p.groups]},
                    f"contexts dir {p.settings.dir}",
                    prepare=lambda: atomic_write_parquet(p.settings.prompts_url, p.prompts, compression="zstd"))


def run_contexts(cfg: Config, announce: Announce = print) -> ContextsReport:
    """Plan, then one runtime stage: a step of piece groups whose results the single writer
    merges as they arrive and writes in one transaction when all are in."""
    return run_stage(cfg, "contexts", lambda info: declare_contexts(cfg, info, announce), announce,
                     needs_db="run `ngram-dask build` first")


def declare_contexts(cfg: Config, info: dict, announce: Announce) -> Stage:
    p, sizes = plan(cfg, info)
    report = ContextsReport(groups=len(p.groups), prompts=sizes, dir=p.settings.dir)
    prompts_line = ", ".join(f"{t} {k:,}" for t, k in sizes.items())
    if p.present:
        report.present = True
        with read_only(p.db) as con:
            report.rows = int(scalar(con, f"SELECT count(*) FROM {CONTEXTS}"))
        announce(f"contexts: {p.db} holds them already ({report.rows:,} examples of {prompts_line} prompts, "
                 f"seed {p.identity['seed']}): nothing to do")
        return Stage(lambda ctx: (), report)
    s = p.settings

    def steps(ctx: StageContext):
        announce(f"contexts: {prompts_line} prompts, up to {s.per_task} examples each (seed {s.seed}); "
                 f"{len(p.groups)} piece group(s) of {redact_url(p.input)} -> {s.dir}")
        short: list[int] = []
        yield _scan_step("contexts", p, s, cfg, ctx, report, short, announce)
        if short:  # a cutoff dropped one of a prompt's k smallest (kernel.cutoffs): again, without any
            report.rescanned = len(short)
            announce(f"contexts: {len(short):,} prompt(s) kept fewer than {s.per_task} examples under their cutoffs: "
                     "scanning again without cutoffs")
            yield _scan_step("rescan", p, replace(s, cutoffs=False), cfg, ctx, report, short, announce)

    return Stage(steps, report, manifest=manifest_of(p), db=p.db, access=(p.input, s.dir))


def _scan_step(name: str, p: Plan, s: ContextsSettings, cfg: Config, ctx: StageContext, report: ContextsReport,
               short: list[int], announce: Announce) -> Step:
    """A step of every piece group whose results one writer merges; its ``finish`` checks
    them and commits, or (with cutoffs) puts the prompts they left short in ``short``."""
    files = {piece.file_index: piece.location for group in p.groups for piece in group.pieces}
    writer = ContextsWriter(ctx.db(), s, p.prompts, p.sum_counts, files, cfg.contexts.prune_rows)

    def finish(stats: list[dict], ctx: StageContext) -> None:
        t0 = time.perf_counter()
        report.tokens, report.occurrences, report.phases = 0, {}, {}
        _tally(report, stats)
        info = read_info(ctx.db())
        if str(report.tokens) != info.get("tokens"):
            raise BadInputError(f"the input holds {report.tokens:,} tokens, database {p.db} counted "
                                f"{int(info.get('tokens', 0)):,}: it was built from other data")
        writer.check_counts(p.db)
        if s.cutoffs:
            short.extend(int(i) for i in writer.short_prompts())
            if short:
                return
        report.rows = writer.commit({**p.identity, "pieces": len(p.groups)})
        report.prunes = writer.prunes
        report.seconds["write"] = time.perf_counter() - t0
        announce(f"contexts: {report.rows:,} examples written to {p.db} (tables contexts, context_counts)")

    return Step(name, p.groups, contexts_group, args=lambda group: (group, s), counts="piece groups",
                disk=DiskFull(f"the contexts dir {s.dir}", advice="free space (or give another --work-dir)"),
                on_result=lambda stats, ctx: writer.add(stats), finish=finish)


def _tally(report: ContextsReport, stats) -> None:
    for m in stats:
        for phase, sec in m.get("phases", {}).items():  # (a marker of an earlier version has none)
            report.phases[phase] = report.phases.get(phase, 0.0) + float(sec)
        report.tokens += int(m["tokens"])
        for n, v in m["occurrences"].items():
            report.occurrences[n] = report.occurrences.get(n, 0) + int(v)


def summary_lines(report: ContextsReport) -> list[str]:
    lines = ["", "summary:"]
    if report.present:
        return lines + [f"  contexts already present: {report.rows:,} examples (nothing ran)"]
    lines.append(f"  piece groups {report.groups} ({report.skipped.get('contexts', 0)} already done), "
                 f"tokens {report.tokens:,}")
    for n, v in sorted(report.occurrences.items()):
        lines.append(f"  {top_table(int(n)):<13} {report.prompts.get(top_table(int(n)), 0):>10,} prompts, "
                     f"{v:,} occurrences")
    lines.append(f"  examples      {report.rows:>10,}")
    lines += report.time_lines(width=13)
    if report.phases:
        lines.append("  units' time   " + ", ".join(f"{k} {v:.1f} s" for k, v in report.phases.items())
                     + " (summed over units, done ones included)")
    sec = report.seconds.get("contexts", 0)
    if sec and report.tokens and report.ran("contexts"):
        lines.append(f"  {report.tokens / sec / 1e6:.2f}M tokens/s")
    return lines
