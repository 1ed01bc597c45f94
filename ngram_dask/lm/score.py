"""Score the catalog with causal LMs: a ``p_<model>`` column on each top table (the client).

For every row of ``top_bigrams`` (prompt ``[id0]``, expected ``id1``) and
``top_trigrams`` (prompt ``[id0, id1]``, expected ``id2``), the probability that the
model gives the expected token: the softmax of its last-position logits, no BOS.

How the work is split:

* The client reads the ids of every row (read-only), sorted by ``sum_count``
  descending as in the original, and cuts them into partitions of
  ``score.rows_per_unit`` rows; each partition is one Dask task
  (``score_worker.score_partition``) that receives a small numpy array of ids and
  returns the probabilities.
* When workers advertise a ``GPU`` resource (``dask worker --resources GPU=1``) each
  task asks for one, so a GPU holds one model and runs one task at a time.
* DuckDB has a single writer: only the client writes, one transaction per model
  that adds the column, fills it and records the model in ``catalog_info``
  (key ``scored_models``). A client killed mid-model leaves no column behind, and a
  model already scored is skipped unless ``score.force``.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ngram_dask import faults
from ngram_dask.config import Config, ScoreConfig
from ngram_dask.db import columns, one, read_info, read_only, scalar, table_names, transaction, write_info
from ngram_dask.errors import ConfigError, DatabaseError, UserError
from ngram_dask.lm.score_worker import TaskSettings, score_partition
from ngram_dask.runtime import DiskFull, Stage, StageReport, Step, run_stage
from ngram_dask.schema import INFO, scored_models, scored_models_info
from ngram_dask.storage import sql_identifier

Announce = Callable[[str], None]

_SCORES_VIEW = "_ngram_dask_scores"


@dataclass
class TableRows:
    """The rows of one top table, in scoring order (``sum_count`` descending)."""

    table: str
    n: int  # ids per row: the prompt is ids[:, :-1], the expected token ids[:, -1]
    ids: np.ndarray  # (rows, n), the table's unsigned id type
    columns: list[str]

    @property
    def rows(self) -> int:
        return int(self.ids.shape[0])

    @property
    def key_columns(self) -> list[str]:
        return [f"id{j}" for j in range(self.n - 1)]  # one row per prefix in a top table

    def max_id(self) -> int:
        return int(self.ids.max()) if self.rows else -1


@dataclass
class ModelPlan:
    name: str  # as given
    model: str  # expanded: hub id or path
    column: str
    batch_size: int
    tables: list[str]  # to score now
    done: list[str]  # scored already, skipped


@dataclass
class ModelRun:
    column: str
    rows: int = 0
    seconds: float = 0.0
    device: str = ""
    dtype: str = ""
    batch_size: int = 0


@dataclass
class ScoreReport(StageReport):
    db: str = ""
    tables: list[str] = field(default_factory=list)
    plans: list[ModelPlan] = field(default_factory=list)
    runs: dict[str, ModelRun] = field(default_factory=dict)
    # column -> table -> (rows, mean p, share of rows with p > 0.5)
    means: dict[str, dict[str, tuple[int, float | None, float | None]]] = field(default_factory=dict)


def parse_batch_sizes(entries: list[str]) -> dict[str, int]:
    """``["12b=256", "./m=64"]`` -> {expanded model: batch size}."""
    from ngram_dask.lm.models import expand_model_name

    # The entries were checked with the config (ScoreConfig): MODEL=N, N >= 1.
    return {expand_model_name(name): int(value) for name, _, value in (e.rpartition("=") for e in entries)}


def _columns(con, table: str) -> list[str]:
    return [name for name, _ in columns(con, table)]


def read_rows(db: str, tables: list[str]) -> tuple[dict[str, TableRows], dict[str, str]]:
    """Every selected table's ids in scoring order, and ``catalog_info``; opened read-only."""
    with read_only(db) as con:
        present = table_names(con)
        info = read_info(con) if INFO in present else {}
        out = {}
        for table in tables:
            if table not in present:
                raise DatabaseError(
                    f"database {db} has no table {table}: run `ngram-dask build --tokenizer ...` first "
                    "(the top step writes the top tables)")
            cols = _columns(con, table)
            ids = [c for c in cols if re.fullmatch(r"id\d+", c)]
            n = len(ids)
            if n < 2 or ids != [f"id{j}" for j in range(n)] or "sum_count" not in cols:
                raise DatabaseError(f"table {table} of {db} is not a top table of the catalog (columns {cols})")
            order = ", ".join(ids)
            arrays = con.execute(f"SELECT {order} FROM {sql_identifier(table)} "
                                 f"ORDER BY sum_count DESC, {order}").fetchnumpy()
            mat = np.stack([np.asarray(arrays[c]) for c in ids], axis=1) if len(arrays[ids[0]]) else \
                np.zeros((0, n), dtype=np.uint32)
            out[table] = TableRows(table, n, np.ascontiguousarray(mat), cols)
        return out, info


def plan_models(cfg: Config, rows: dict[str, TableRows], info: dict[str, str]) -> list[ModelPlan]:
    """Which model scores which table; checks every model that has work before anything runs."""
    from ngram_dask.lm.models import column_name, expand_model_name, is_causal_lm, model_config, vocab_size_of

    s = cfg.score
    overrides = parse_batch_sizes(s.batch_sizes)
    scored = scored_models(info)
    plans: list[ModelPlan] = []
    seen: dict[str, str] = {}
    for name in dict.fromkeys(m.strip() for m in s.models if m.strip()):
        full = expand_model_name(name)
        col = column_name(name)
        if col in seen and seen[col] != full:
            raise ConfigError(f"models {seen[col]!r} and {full!r} would both be stored as column {col}; "
                              "score them one at a time (or rename a local folder)")
        if col in seen:
            continue
        seen[col] = full
        done_tables = scored.get(col, {}).get("tables", {}) if isinstance(scored.get(col), dict) else {}
        done, todo = [], []
        for table in s.tables:
            complete = (col in rows[table].columns and table in done_tables
                        and int(done_tables[table]) == rows[table].rows)
            (done if complete and not s.force else todo).append(table)
        plans.append(ModelPlan(name, full, col, overrides.get(full, s.batch_size), todo, done))
    for plan in plans:
        if not plan.tables:
            continue
        config = model_config(plan.model)
        if not is_causal_lm(config):
            raise UserError(f"model {plan.model!r} ({type(config).__name__}) is not a causal language model")
        vocab = vocab_size_of(config, plan.model)
        for table in plan.tables:
            top = rows[table].max_id()
            if top >= vocab:
                raise UserError(
                    f"model {plan.model!r} has a vocabulary of {vocab} tokens, but {table} holds token id "
                    f"{top}: the catalog was built with another tokenizer than this model's")
    return plans


def partitions(rows: int, size: int) -> list[tuple[int, int]]:
    return [(start, min(start + size, rows)) for start in range(0, rows, size)]


@dataclass(frozen=True)
class RowsPart:
    """Rows ``[start, stop)`` of one top table, with their ids: one scoring task's unit."""

    table: str
    start: int
    stop: int
    ids: np.ndarray


def score_rows(part: RowsPart, s: TaskSettings) -> dict:
    """One Dask task: the probabilities of one part of a table (``score_worker.score_partition``)."""
    return {**score_partition(part.ids, s), "table": part.table, "start": part.start, "stop": part.stop}


def _model_step(plan: ModelPlan, rows: dict[str, TableRows], cfg: Config, report: ScoreReport,
                ctx) -> Step:
    """One model over its tables: tasks of ``rows_per_unit`` rows; the writer fills the column."""
    s = cfg.score
    settings = TaskSettings(model=plan.model, device=s.device, dtype=s.dtype, batch_size=plan.batch_size,
                            cpu_threads=s.cpu_threads, placement=ctx.worker_placement())
    parts = [RowsPart(table, a, b, rows[table].ids[a:b])
             for table in plan.tables for a, b in partitions(rows[table].rows, s.rows_per_unit)]
    probs = {t: np.full(rows[t].rows, np.nan) for t in plan.tables}
    run = ModelRun(plan.column, rows=sum(rows[t].rows for t in plan.tables))
    ctx.announce(f"{plan.column}: {plan.model} on {', '.join(plan.tables)} "
                 f"(batch {plan.batch_size}, {s.rows_per_unit:,} rows per task)")

    def on_result(res: dict, ctx) -> None:
        probs[res["table"]][res["start"]:res["stop"]] = res["p"]
        run.device, run.dtype = res["device"], res["dtype"]
        run.batch_size = max(run.batch_size, res["batch_size"])
        faults.crash_point(faults.CRASH_IN_SCORE, plan.column)

    def finish(_, ctx) -> None:
        run.seconds = ctx.report.seconds.get(plan.column, 0.0)
        write_model(ctx.db(), plan, rows, probs, run)
        report.runs[plan.column] = run
        ctx.announce(f"  {plan.column}: {run.rows:,} rows in {run.seconds:.1f} s "
                     f"({run.rows / max(run.seconds, 1e-9):,.0f} rows/s) on {run.device} {run.dtype}; written")

    # Scoring tasks write nothing; a full disk can only be the model cache on a worker.
    disk = DiskFull("a worker's model cache", advice="free space (or set HF_HOME to a larger disk)")
    return Step(plan.column, parts, score_rows, kwargs={"s": settings}, gpu=True, release=True,
                disk=disk, on_result=on_result, finish=finish)


def _prune(con, scored: dict) -> dict:
    """Drop records of columns that are gone (a rebuilt top table has none of its scores)."""

    present = {t: set(_columns(con, t)) for t in table_names(con)}
    out = {}
    for column, entry in scored.items():
        if not isinstance(entry, dict):
            continue
        tables = {t: r for t, r in dict(entry.get("tables", {})).items() if column in present.get(t, ())}
        if tables:
            out[column] = {**entry, "tables": tables}
    return out


def write_model(con, plan: ModelPlan, rows: dict[str, TableRows], probs: dict[str, np.ndarray],
                run: ModelRun) -> None:
    """Add and fill ``plan.column`` on every table of the plan, and record it: one transaction."""
    import pyarrow as pa

    col = sql_identifier(plan.column)  # column_name() makes it [a-z0-9_]; quoted all the same
    with transaction(con):
        for k, table in enumerate(plan.tables):
            t = rows[table]
            p = probs[table]
            if np.isnan(p).any():
                raise RuntimeError(f"{plan.column}: {int(np.isnan(p).sum())} rows of {table} got no score")
            tq = sql_identifier(table)
            con.execute(f"ALTER TABLE {tq} DROP COLUMN IF EXISTS {col}")
            con.execute(f"ALTER TABLE {tq} ADD COLUMN {col} DOUBLE")
            keys = t.key_columns
            arrow = pa.table({**{c: t.ids[:, j] for j, c in enumerate(keys)}, "p": p})
            con.register(_SCORES_VIEW, arrow)
            try:
                on = " AND ".join(f"{tq}.{c} = s.{c}" for c in keys)
                updated = scalar(con, f"UPDATE {tq} SET {col} = s.p FROM {_SCORES_VIEW} s WHERE {on}")
            finally:
                con.unregister(_SCORES_VIEW)
            if int(updated) != t.rows:
                raise RuntimeError(f"{table} changed while it was scored: {updated} of {t.rows} rows updated")
            if k == 0:
                faults.crash_point(faults.CRASH_IN_SCORE, f"{plan.column}:write")
        scored = _prune(con, scored_models(read_info(con)))
        entry = scored.get(plan.column, {})
        tables = dict(entry.get("tables", {}))
        tables.update({table: rows[table].rows for table in plan.tables})
        scored[plan.column] = {
            "model": plan.model, "tables": tables, "device": run.device, "dtype": run.dtype,
            "scored_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        write_info(con, scored_models_info(scored))


def _means(con, report: ScoreReport) -> None:
    for plan in report.plans:
        per = {}
        for table in report.tables:
            if plan.column not in _columns(con, table):
                continue
            col = sql_identifier(plan.column)
            n, mean, share = one(
                con, f"SELECT count({col}), avg({col}), avg(({col} > 0.5)::DOUBLE) FROM {sql_identifier(table)}")
            per[table] = (int(n), mean, share)
        report.means[plan.column] = per


def run_score(cfg: Config, announce: Announce = print) -> ScoreReport:
    """Score every model of ``cfg.score.models`` on ``cfg.score.tables`` of ``cfg.db``
    (at each training checkpoint of ``score.revisions`` when given: ``lm.revisions``)."""
    if cfg.score.revisions:
        from ngram_dask.lm.revisions import run_revisions

        return run_revisions(cfg, announce)
    return run_stage(cfg, "score", lambda info: declare_score(cfg, announce), announce,
                     needs_db="run `ngram-dask build --tokenizer ...` first")


def declare_score(cfg: Config, announce: Announce) -> Stage:
    """One step per model still to score; the writer fills its column in one transaction."""
    s: ScoreConfig = cfg.score
    db = cfg.db
    report = ScoreReport(db=db, tables=list(s.tables))

    def steps(ctx):
        rows, info = read_rows(db, s.tables)  # under the writer lock: nothing changes them now
        report.plans = plans = plan_models(cfg, rows, info)
        for plan in plans:
            if plan.done:
                announce(f"{plan.column}: already scored on {', '.join(plan.done)}; skipped (--force rescores)")
        todo = [p for p in plans if p.tables]
        if todo:
            total = {t: rows[t].rows for t in s.tables}
            announce(f"score {db}: {len(todo)} model(s) x " + ", ".join(f"{t} {r:,} rows" for t, r in total.items()))
            ctx.db()  # opened (and held) before any model runs: a reader cannot block the writes later
        for plan in todo:
            yield _model_step(plan, rows, cfg, report, ctx)
        if todo:
            _means(ctx.db(), report)
        else:
            with read_only(db) as con:
                _means(con, report)

    return Stage(steps, report, db=db, uses_gpu=True, device=s.device, cpu_workers=1)


def summary_lines(report: ScoreReport) -> list[str]:
    """The table printed at the end: mean probability (and share of rows with p > 0.5) per model."""
    if not isinstance(report, ScoreReport):
        from ngram_dask.lm import revisions

        return revisions.summary_lines(report)
    if not report.plans:
        return []
    head = ["model", "column"] + [f"{t} mean p (p>0.5)" for t in report.tables] + ["rows/s"]
    body = []
    for plan in report.plans:
        per = report.means.get(plan.column, {})
        cells = [plan.model, plan.column]
        for t in report.tables:
            if t in per and per[t][1] is not None:
                _, mean, share = per[t]
                cells.append(f"{mean:.4f} ({100 * share:.1f}%)")
            else:
                cells.append("-")
        run = report.runs.get(plan.column)
        cells.append(f"{run.rows / max(run.seconds, 1e-9):,.0f}" if run else "skipped")
        body.append(cells)
    widths = [max(len(r[i]) for r in [head] + body) for i in range(len(head))]
    fmt = lambda cells: "  " + "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return ["", f"summary: mean probability of the expected next token ({report.db})", fmt(head),
            "  " + "  ".join("-" * w for w in widths)] + [fmt(r) for r in body]
