"""``score --revisions``: every top-table prompt scored at each training checkpoint.

Pythia publishes 154 checkpoints per size as hub revisions: ``step0``, the ten log-spaced
``step1`` ... ``step512``, then ``step1000`` to ``step143000`` every 1,000 steps (one step
= 1,024 sequences of 2,048 tokens). A hub id's revision ``r`` loads with
``from_pretrained(id, revision=r)``; a local folder's is its subfolder ``r``.

On disk (the catalog database, written by the client only):

* ``scores (model, revision, step, n, id0, id1, p)``: one row per model, revision and
  prompt of the top tables (``step`` NULL for a revision not named ``step<N>``);
* ``learning``: per model and prompt, when ``p`` crossed ``score.learned_threshold`` for
  good (``lm.learning``), recomputed whenever a model's scores change;
* ``p_<model>`` on the top tables is filled from ``score.final_revision`` when scored;
* ``catalog_info['scored_revisions']``: per model, its revisions and the threshold.

The work: one unit per (model, revision, slice of ``score.rows_per_unit`` prompts), each
one Dask task, submitted model by model and revision by revision in step order, so a
worker scores every slice of a checkpoint after loading it once (``models.load_model``
keeps one checkpoint per worker). The writer inserts each unit's rows as it arrives, one
statement each: the ``scores`` table is the ledger, so a run killed at any point resumes
with the slices whose rows are missing, and a revision added later scores only itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from ngram_dask import faults
from ngram_dask.config import Config
from ngram_dask.db import columns, read_info, read_only, table_names, transaction, write_info
from ngram_dask.errors import ConfigError, DatabaseError, UserError
from ngram_dask.lm.learning import write_learning
from ngram_dask.lm.score_worker import TaskSettings, score_partition
from ngram_dask.runtime import DiskFull, Stage, StageReport, Step, gpu_resources, run_stage
from ngram_dask.schema import (
    LEARNING,
    SCORED_REVISIONS,
    SCORES,
    expand_revisions,
    learned_columns,
    revision_step,
    score_model,
    scores_columns,
    top_table,
    typed_create_sql,
)
from ngram_dask.storage import sql_identifier

Announce = Callable[[str], None]

_ROWS_VIEW = "_ngram_dask_revision_rows"


# --- the plan -------------------------------------------------------------------------------

@dataclass
class Prompts:
    """The prompts of one top table in scoring order (``sum_count`` descending), with the expected id."""

    table: str
    n: int
    ids: np.ndarray  # (rows, n): the prompt is ids[:, :-1], the expected next id ids[:, -1]


@dataclass
class ModelRevisions:
    name: str  # as given
    model: str  # expanded: hub id or local folder
    label: str  # the scores/learning ``model`` value (p_<label> is its column)
    batch_size: int
    revisions: list[str]
    todo: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)  # (revision, table) -> rows to score
    units: int = 0
    skipped_revisions: int = 0  # revisions every prompt of which was scored by an earlier run


@dataclass(frozen=True)
class RevisionPart:
    """One unit: a slice of one table's prompts for one checkpoint of one model."""

    settings: TaskSettings
    label: str
    revision: str
    table: str
    n: int
    ids: np.ndarray


@dataclass
class RevisionsReport(StageReport):
    db: str = ""
    models: list[ModelRevisions] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)  # label -> rows scored now (seconds: per label too)
    learned: dict[str, tuple[int, int]] = field(default_factory=dict)  # label -> (learned, prompts)
    device: str = ""


def _vocab(info: dict, db: str) -> int:
    try:
        return int(info["vocab_size"])
    except (KeyError, ValueError):
        raise DatabaseError(f"database {db} records no vocab_size: rebuild it with `ngram-dask build`") from None


def read_prompts(con, db: str, tables: list[str]) -> dict[str, Prompts]:
    present = table_names(con)
    out = {}
    for table in tables:
        n = next((k for k in (2, 3) if top_table(k) == table), None)
        if n is None:
            raise ConfigError(f"score --revisions scores top_bigrams and top_trigrams, not {table}")
        if table not in present:
            raise DatabaseError(f"database {db} has no table {table}: run `ngram-dask build --tokenizer ...` first "
                                "(the catalog step writes the top tables)")
        ids = [f"id{j}" for j in range(n)]
        got = con.execute(f"SELECT {', '.join(ids)} FROM {table} ORDER BY sum_count DESC, {', '.join(ids)}"
                          ).fetchnumpy()
        mat = np.stack([np.asarray(got[c], np.int64) for c in ids], axis=1) if len(got["id0"]) else \
            np.zeros((0, n), np.int64)
        out[table] = Prompts(table, n, mat)
    return out


def _missing(con, label: str, revision: str, p: Prompts) -> np.ndarray:
    """The rows of ``p`` that have no score for (label, revision) yet, in scoring order."""
    import pyarrow as pa

    if SCORES not in table_names(con) or not len(p.ids):
        return p.ids
    keys = {f"id{j}": p.ids[:, j] for j in range(p.n - 1)}
    con.register(_ROWS_VIEW, pa.table({"row": np.arange(len(p.ids)), **keys}))
    try:
        id1 = "r.id1 = s.id1" if p.n == 3 else "s.id1 IS NULL"
        done = con.execute(
            f"SELECT r.row FROM {_ROWS_VIEW} r JOIN {SCORES} s ON s.model = ? AND s.revision = ? AND s.n = ? "
            f"AND r.id0 = s.id0 AND {id1}", [label, revision, p.n]).fetchnumpy()["row"]
    finally:
        con.unregister(_ROWS_VIEW)
    keep = np.ones(len(p.ids), bool)
    keep[np.asarray(done, np.int64)] = False
    return p.ids[keep]


def plan(cfg: Config, con, db: str, prompts: dict[str, Prompts]) -> list[ModelRevisions]:
    """Every model and revision checked (loadable, a causal LM, the catalog's vocabulary)
    before anything runs; what each still has to score."""
    from ngram_dask.lm.models import expand_model_name, is_causal_lm, model_config, vocab_size_of
    from ngram_dask.lm.score import parse_batch_sizes

    s = cfg.score
    revisions = expand_revisions(s.revisions)
    if not revisions:
        raise ConfigError("score.revisions names no revision")
    overrides = parse_batch_sizes(s.batch_sizes)
    out: list[ModelRevisions] = []
    seen: dict[str, str] = {}
    for name in dict.fromkeys(m.strip() for m in s.models if m.strip()):
        full = expand_model_name(name)
        label = score_model(full)
        if seen.setdefault(label, full) != full:
            raise ConfigError(f"models {seen[label]!r} and {full!r} would both be stored as model {label}; "
                              "score them one at a time (or rename a local folder)")
        out.append(ModelRevisions(name, full, label, overrides.get(full, s.batch_size), revisions))
    top = max((int(p.ids.max()) for p in prompts.values() if len(p.ids)), default=-1)
    for m in out:
        for revision in m.revisions:
            config = model_config(m.model, revision)
            if not is_causal_lm(config):
                raise UserError(f"model {m.model!r} revision {revision!r} ({type(config).__name__}) "
                                "is not a causal language model")
            vocab = vocab_size_of(config, m.model)
            if top >= vocab:
                raise UserError(f"model {m.model!r} revision {revision!r} has a vocabulary of {vocab} tokens, "
                                f"but the top tables hold token id {top}: the catalog was built with another "
                                "tokenizer than this model's")
            rows = {t: (p.ids if s.force else _missing(con, m.label, revision, p)) for t, p in prompts.items()}
            if not any(len(r) for r in rows.values()):
                m.skipped_revisions += 1
                continue
            for table, r in rows.items():
                if len(r):
                    m.todo[revision, table] = r
    return out


def _parts(m: ModelRevisions, prompts: dict[str, Prompts], cfg: Config, placement) -> list[RevisionPart]:
    """The model's units in the order a worker should meet them: revision by revision."""
    from ngram_dask.lm.score import partitions

    s = cfg.score
    base = TaskSettings(model=m.model, device=s.device, dtype=s.dtype, batch_size=m.batch_size,
                        cpu_threads=s.cpu_threads, placement=placement)
    out = []
    for revision in m.revisions:
        settings = replace(base, revision=revision)
        for table in prompts:
            rows = m.todo.get((revision, table))
            if rows is None:
                continue
            out += [RevisionPart(settings, m.label, revision, table, prompts[table].n, rows[a:b])
                    for a, b in partitions(len(rows), s.rows_per_unit)]
    return out


def score_part(part: RevisionPart) -> dict:
    """One Dask task: ``p`` of a slice of prompts at one checkpoint (the checkpoint cached per worker)."""
    res = score_partition(part.ids, part.settings)
    return {**res, "label": part.label, "revision": part.revision, "n": part.n, "ids": part.ids}


def insert_scores(con, res: dict) -> None:
    """One unit's rows into ``scores``: one statement, so a kill leaves all of them or none."""
    import pyarrow as pa

    ids, n = res["ids"], res["n"]
    rows = len(ids)
    step = revision_step(res["revision"])
    arrow = pa.table({
        "model": pa.array([res["label"]] * rows, pa.string()),
        "revision": pa.array([res["revision"]] * rows, pa.string()),
        "step": pa.array([step] * rows, pa.uint32()),
        "n": pa.array(np.full(rows, n, np.uint8)),
        "id0": pa.array(ids[:, 0]),
        "id1": pa.array(ids[:, 1] if n == 3 else [None] * rows, pa.int64()),
        "p": pa.array(np.asarray(res["p"], np.float64)),
    })
    con.register(_ROWS_VIEW, arrow)
    try:
        con.execute(f"INSERT INTO {SCORES} SELECT * FROM {_ROWS_VIEW}")
    finally:
        con.unregister(_ROWS_VIEW)


def _delete_for_force(con, m: ModelRevisions) -> None:
    if SCORES in table_names(con):
        revisions = sorted({r for r, _ in m.todo})
        con.execute(f"DELETE FROM {SCORES} WHERE model = ? AND list_contains(?, revision)", [m.label, revisions])


def _prune_stale(con, tables: list[str]) -> None:
    """Drop scores of prompts that are no longer in the top tables (a rebuilt catalog)."""
    if SCORES not in table_names(con):
        return
    for table in tables:
        n = 2 if table == top_table(2) else 3
        id1 = "t.id1 = s.id1" if n == 3 else "s.id1 IS NULL"
        con.execute(f"DELETE FROM {SCORES} s WHERE s.n = {n} AND NOT EXISTS "
                    f"(SELECT 1 FROM {table} t WHERE t.id0 = s.id0 AND {id1})")


def fill_final(con, m: ModelRevisions, revision: str, prompts: dict[str, Prompts]) -> bool:
    """``p_<model>`` on the top tables from the final revision's scores, recorded in
    ``scored_models`` as a plain ``score`` run would; False when that revision is not
    fully scored for this model."""
    from ngram_dask.lm.models import column_name
    from ngram_dask.lm.score import ModelPlan, ModelRun, TableRows, write_model

    rows, probs = {}, {}
    for table, p in prompts.items():
        keys = ", ".join(f"t.id{j}" for j in range(p.n))
        id1 = "t.id1 = s.id1" if p.n == 3 else "s.id1 IS NULL"
        got = con.execute(
            f"SELECT s.p FROM {table} t LEFT JOIN {SCORES} s ON s.model = ? AND s.revision = ? AND s.n = ? "
            f"AND t.id0 = s.id0 AND {id1} ORDER BY t.sum_count DESC, {keys}", [m.label, revision, p.n]
        ).fetchnumpy()["p"]
        got = np.ma.filled(got, np.nan) if np.ma.isMaskedArray(got) else np.asarray(got, np.float64)
        if len(got) != len(p.ids) or np.isnan(got).any():
            return False
        cols = [c for c, _ in columns(con, table)]
        rows[table] = TableRows(table, p.n, p.ids, cols)
        probs[table] = got
    plan = ModelPlan(m.name, m.model, column_name(m.model), m.batch_size, list(prompts), [])
    write_model(con, plan, rows, probs, ModelRun(plan.column, device="", dtype=f"revision {revision}"))
    return True


def _record(con, m: ModelRevisions, threshold: float) -> None:
    info = read_info(con)
    try:
        recorded = json.loads(info.get(SCORED_REVISIONS) or "{}")
    except ValueError:
        recorded = {}
    got = [r[0] for r in con.execute(f"SELECT DISTINCT revision FROM {SCORES} WHERE model = ?",
                                     [m.label]).fetchall()]
    recorded[m.label] = {"model": m.model, "revisions": expand_revisions(got), "threshold": threshold}
    write_info(con, {SCORED_REVISIONS: json.dumps(recorded, sort_keys=True)})


def scored_revisions(info: dict) -> dict[str, dict]:
    """``catalog_info['scored_revisions']``: label -> {model, revisions, threshold}."""
    try:
        got = json.loads(info.get(SCORED_REVISIONS) or "{}")
    except ValueError:
        return {}
    return got if isinstance(got, dict) else {}


def _model_step(m: ModelRevisions, prompts: dict[str, Prompts], cfg: Config, vocab: int,
                report: RevisionsReport, ctx) -> Step:
    s = cfg.score
    parts = _parts(m, prompts, cfg, ctx.worker_placement())
    m.units = len(parts)
    report.rows[m.label] = 0
    revisions = sorted({r for r, _ in m.todo}, key=m.revisions.index)
    ctx.announce(f"{m.label}: {m.model}, {len(revisions)} revision(s) to score "
                 f"({revisions[0]} .. {revisions[-1]}), {len(parts)} unit(s) of up to {s.rows_per_unit:,} prompts"
                 + (f"; {m.skipped_revisions} revision(s) scored earlier" if m.skipped_revisions else ""))
    if s.force:
        with transaction(ctx.db()):
            _delete_for_force(ctx.db(), m)

    def on_result(res: dict, ctx) -> None:
        insert_scores(ctx.db(), res)
        report.rows[m.label] += len(res["ids"])
        report.device = f"{res['device']} {res['dtype']}"
        faults.crash_point(faults.CRASH_IN_SCORE, f"{m.label}:{res['revision']}")

    def finish(_, ctx) -> None:
        _conclude(ctx.db(), m, prompts, cfg, vocab, report, ctx.announce)

    disk = DiskFull("a worker's model cache", advice="free space (or set HF_HOME to a larger disk)")
    return Step(m.label, parts, score_part, args=lambda part: (part,), counts="units", gpu=True, release=True,
                submit=submit_in_order, disk=disk, on_result=on_result, finish=finish)


def submit_in_order(client, parts: list[RevisionPart]) -> list:
    """One Dask task per unit, with falling priorities: a worker meets the units in the
    given order (revision by revision), so it loads each checkpoint once. Dask's own order
    is only roughly the submission order: a one-worker run loaded checkpoints twice."""
    resources = gpu_resources(client)
    return [client.submit(score_part, part, pure=False, resources=resources, priority=len(parts) - i)
            for i, part in enumerate(parts)]


def _conclude(con, m: ModelRevisions, prompts: dict[str, Prompts], cfg: Config, vocab: int,
              report: RevisionsReport, announce: Announce) -> None:
    """The model's learning rows, its p_<model> from the final revision, its record."""
    s = cfg.score
    rows = write_learning(con, m.label, s.learned_threshold, vocab)
    learning_columns_on_tops(con, m.label, prompts)
    with transaction(con):
        _record(con, m, s.learned_threshold)
    if s.final_revision in m.revisions and fill_final(con, m, s.final_revision, prompts):
        from ngram_dask.lm.models import column_name

        announce(f"  {m.label}: {column_name(m.model)} filled from {s.final_revision}")
    learned = con.execute("SELECT count(learned_step) FROM learning WHERE model = ?", [m.label]).fetchall()[0][0]
    report.learned[m.label] = (int(learned), rows)


def learning_columns_on_tops(con, label: str, prompts: dict[str, Prompts]) -> None:
    """``learned_step_<model>`` and ``forgotten_<model>`` on the top tables, from the learning
    table, so the task browser filters and sorts by them like any column: one transaction."""
    learned, forgotten = (sql_identifier(c) for c in learned_columns(label))
    with transaction(con):
        for table, p in prompts.items():
            t = sql_identifier(table)
            for col, typ in ((learned, "UINTEGER"), (forgotten, "UTINYINT")):
                con.execute(f"ALTER TABLE {t} DROP COLUMN IF EXISTS {col}")
                con.execute(f"ALTER TABLE {t} ADD COLUMN {col} {typ}")
            id1 = f"{t}.id1 = l.id1" if p.n == 3 else "l.id1 IS NULL"
            con.execute(f"UPDATE {t} SET {learned} = l.learned_step, {forgotten} = l.forgotten::UTINYINT "
                        f"FROM {LEARNING} l WHERE l.model = ? AND l.n = ? AND {t}.id0 = l.id0 AND {id1}",
                        [label, p.n])


def run_revisions(cfg: Config, announce: Announce = print) -> RevisionsReport:
    """Score every model of ``score.models`` at every revision of ``score.revisions``."""
    return run_stage(cfg, "score", lambda info: declare_revisions(cfg, info, announce), announce,
                     needs_db="run `ngram-dask build --tokenizer ...` first")


def declare_revisions(cfg: Config, info: dict, announce: Announce) -> Stage:
    """One step per model with prompts left to score, revision after revision."""
    s = cfg.score
    db = cfg.db
    vocab = _vocab(info, db)
    expand_revisions(s.revisions)  # a malformed list is refused before the writer lock is taken
    report = RevisionsReport(db=db)

    def steps(ctx):
        with read_only(db) as con:
            prompts = read_prompts(con, db, s.tables)
            report.models = models = plan(cfg, con, db, prompts)
            recorded = scored_revisions(read_info(con))
        todo = [m for m in models if m.todo]
        con = ctx.db()
        with transaction(con):
            if SCORES not in table_names(con):
                con.execute(typed_create_sql(SCORES, scores_columns(vocab)))
            _prune_stale(con, s.tables)
        for m in models:
            if not m.todo:
                announce(f"{m.label}: every prompt already scored at its {len(m.revisions)} revision(s); "
                         "skipped (--force rescores)")
                if recorded.get(m.label, {}).get("threshold") != s.learned_threshold:
                    _conclude(con, m, prompts, cfg, vocab, report, announce)
        if todo:
            announce(f"score {db}: {len(todo)} model(s) x up to {len(models[0].revisions)} revision(s) x "
                     + ", ".join(f"{t} {len(p.ids):,} prompts" for t, p in prompts.items()))
        for m in todo:
            yield _model_step(m, prompts, cfg, vocab, report, ctx)

    return Stage(steps, report, db=db, uses_gpu=True, device=s.device, cpu_workers=1)


def summary_lines(report: RevisionsReport) -> list[str]:
    lines = ["", f"summary: scores across revisions ({report.db}, table {SCORES}; learning in table learning)"]
    for m in report.models:
        rows, secs = report.rows.get(m.label, 0), report.seconds.get(m.label)
        rate = f", {rows / max(secs, 1e-9):,.0f} prompts/s" if secs else ""
        learned, total = report.learned.get(m.label, (None, None))
        learned_text = f"; learned by the last step: {learned:,} of {total:,} prompts" if total else ""
        lines.append(f"  {m.label}: {len(m.revisions)} revision(s), {m.units} unit(s) run, "
                     f"{rows:,} prompts scored{rate}{learned_text}")
    return lines
