"""``ngram-dask exposure``: how often each task had been seen before each training checkpoint.

The input must be the training stream *in training order*: Pythia's preshuffled data
(Megatron shards of 2,049-token sequences; MDS or flat token files work too), cut into
sequences of ``exposure.seq_len`` tokens (an MDS sample is one sequence), numbered
across the input's files in their sorted order. Sequence ``i`` is trained at step
``i // samples_per_step``, so the checkpoint ``step<S>`` has seen the sequences
``i < S * samples_per_step``. Nothing in the tokens says whether a stream is in training
order: the user says it is (docs/revisions.md tells how to check a few sequences).

For every prompt of the top tables and every checkpoint step ``S`` of ``--revisions``:

    exposure (n, id0, id1, step, prompt_seen, task_seen)

``prompt_seen``: occurrences of the prompt in those sequences (the occurrences its
``sum_count`` counts: inside one sequence, followed by a token); ``task_seen``: those
followed by the top table's expected id.

The work, one pass on the cluster (``contexts.kernel.find`` finds the occurrences): one
unit per piece group, as ``contexts`` cuts them; each sequence of a piece gets its
*interval*, the number of checkpoint steps ``S`` with ``S * samples_per_step <= i``
(0 .. len(steps)); a unit writes, per prompt and interval with occurrences, the two
counts, then its marker (``runtime.resumable``), so a killed pass resumes with the
missing pieces. The writer sums the parts per prompt and interval and accumulates them
over the intervals: the count at the k-th step is the sum of intervals 0..k. The last
interval (after the last checkpoint) is not a row; with it, the counts at the last step
telescope to the pass's totals, recorded in ``catalog_info['exposure']`` and checked by
``verify``.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pyarrow as pa

from ngram_dask import faults
from ngram_dask.cluster import local_cores, piece_group_plan
from ngram_dask.config import Config
from ngram_dask.contexts import kernel
from ngram_dask.contexts.run import _read_prompts, default_work_dir
from ngram_dask.contexts.task import arrow_array, load_prompts
from ngram_dask.db import read_only, transaction, write_info
from ngram_dask.errors import BadInputError, ConfigError
from ngram_dask.inputs import PieceGroup, even_groups, plan_input, read_group
from ngram_dask.runtime import (
    DiskFull,
    Manifest,
    Stage,
    StageContext,
    StageReport,
    Step,
    resumable,
    run_stage,
    thread_buffer,
)
from ngram_dask.schema import (
    EXPOSURE,
    EXPOSURE_INFO,
    expand_revisions,
    exposure_columns,
    revision_step,
    typed_create_sql,
)
from ngram_dask.storage import atomic_write_parquet, join, redact_url

Announce = Callable[[str], None]
_PROMPTS_VIEW = "_ngram_dask_exposure_prompts"
_STEPS_VIEW = "_ngram_dask_exposure_steps"


# --- the pure core -------------------------------------------------------------------------

def sequence_intervals(sequences: np.ndarray, steps: np.ndarray, samples_per_step: int) -> np.ndarray:
    """Per global sequence index: how many checkpoint steps ``S`` (sorted) have
    ``S * samples_per_step <= i``; the sequence counts at step ``steps[k]`` iff that is <= k."""
    return np.searchsorted(np.asarray(steps, np.int64) * int(samples_per_step), np.asarray(sequences, np.int64),
                           side="right")


def exposure_counts(tokens: np.ndarray, offsets: np.ndarray, interval: np.ndarray, p: kernel.Prompts,
                    vocab: int, intervals: int, exclude_id: int | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(prompt, interval, prompt_seen, task_seen)`` for every prompt and interval with
    occurrences in the samples ``tokens[offsets[s]:offsets[s+1]]``; ``interval[s]`` is
    sample ``s``'s (``sequence_intervals``), below ``intervals``."""
    occ = kernel.find(tokens, np.asarray(offsets, np.int64), p, vocab, exclude_id)
    hit = tokens[occ.pos + p.n - 1].astype(np.int64) == p.expected[occ.prompt]
    key = occ.prompt * np.int64(intervals) + np.asarray(interval, np.int64)[occ.sample]
    uniq, inverse = np.unique(key, return_inverse=True)
    seen = np.bincount(inverse, minlength=len(uniq)).astype(np.int64)
    task = np.bincount(inverse, weights=hit, minlength=len(uniq)).astype(np.int64)
    return uniq // intervals, uniq % intervals, seen, task


# --- one unit ------------------------------------------------------------------------------

@dataclass(frozen=True)
class ExposureSettings:
    dir: str  # <work dir>/exposure-<digest>: the parts of these settings and input
    vocab_size: int
    steps: tuple[int, ...]  # the checkpoint steps, increasing
    samples_per_step: int
    file_offsets: tuple[int, ...]  # per input file: the global index of its first sequence
    drop_eos: bool = False
    eos_id: int = 0
    verify_hashes: bool = True

    @property
    def bits(self) -> int:
        return int(self.vocab_size - 1).bit_length()

    @property
    def prompts_url(self) -> str:
        return join(self.dir, "prompts.parquet")


def parts_url(s: ExposureSettings, piece: str) -> str:
    return join(s.dir, "parts", f"{piece}.parquet")


def marker_url(s: ExposureSettings, piece: str) -> str:
    return join(s.dir, "_done", f"{piece}.json")


@resumable(lambda group, s: marker_url(s, group.name))
def exposure_group(group: PieceGroup, s: ExposureSettings) -> dict:
    """One unit: the counts of one piece group per prompt and interval, as a Parquet part."""
    families = load_prompts(s.prompts_url, s.bits, cutoffs=False)  # it counts every occurrence
    data = read_group(group, s.vocab_size, s.verify_hashes, thread_buffer)
    sequences = np.asarray(s.file_offsets, np.int64)[data.files] + data.samples
    interval = sequence_intervals(sequences, np.asarray(s.steps), s.samples_per_step)
    intervals = len(s.steps) + 1
    exclude = s.eos_id if s.drop_eos else None
    cols: dict[str, list] = {"row": [], "interval": [], "prompt_seen": [], "task_seen": []}
    base, totals = 0, [0, 0]
    for _, p in sorted(families.items()):
        prompt, iv, seen, task = exposure_counts(data.tokens, data.offsets, interval, p, s.vocab_size, intervals,
                                                 exclude)
        for name, values in zip(cols, (prompt + base, iv, seen, task)):
            cols[name].append(values)
        totals[0] += int(seen.sum())
        totals[1] += int(task.sum())
        base += len(p)
    table = pa.table({name: arrow_array(np.concatenate(v) if v else np.zeros(0, np.int64), pa.int64())
                      for name, v in cols.items()})
    nbytes = atomic_write_parquet(parts_url(s, group.name), table, compression="zstd")
    return {"group": group.name, "samples": int(len(data.offsets) - 1),
            "tokens": int(data.offsets[-1] - data.offsets[0]), "prompt_seen": totals[0], "task_seen": totals[1],
            "first_sequence": int(sequences.min()) if len(sequences) else None, "bytes": nbytes}


# --- the plan and the stage ----------------------------------------------------------------

def piece_samples(part) -> int:
    """Sequences in one input piece: an MDS shard's samples, or a stream range cut by seq_len."""
    if part.format == "mds":
        return int(part.extra.samples)
    if part.seq_len:
        return -(-(part.stop - part.start) // part.seq_len)
    raise ConfigError("exposure needs sequences of a fixed length: give --seq-len (documents mode has none)")


def file_offsets(parts) -> tuple[int, ...]:
    """The global index of each input file's first sequence (files in the input's order)."""
    per_file: dict[int, int] = {}
    for part in parts:
        per_file[part.file_index] = per_file.get(part.file_index, 0) + piece_samples(part)
    files = max(per_file, default=-1) + 1
    counts = [per_file.get(f, 0) for f in range(files)]
    return tuple(int(x) for x in np.concatenate(([0], np.cumsum(counts)))[:-1])


@dataclass
class ExposureReport(StageReport):
    db: str = ""
    input: str = ""
    steps: list[int] = field(default_factory=list)
    groups: int = 0
    sequences: int = 0
    tokens: int = 0
    totals: list[int] = field(default_factory=lambda: [0, 0])
    rows: int = 0


def run_exposure(cfg: Config, announce: Announce = print) -> ExposureReport:
    """One pass over the training stream: the exposure table of every top prompt at every checkpoint."""
    return run_stage(cfg, "exposure", lambda info: declare_exposure(cfg, info, announce), announce,
                     needs_db="run `ngram-dask build --tokenizer ...` first")


def declare_exposure(cfg: Config, info: dict, announce: Announce) -> Stage:
    """The plan (checked before any work) and one step of piece groups; the writer sums the parts."""
    e = cfg.exposure
    db = cfg.db
    revisions = expand_revisions(e.revisions, "exposure.revisions")
    steps = [revision_step(r) for r in revisions if revision_step(r) is not None]
    if not steps:
        raise ConfigError("exposure.revisions names no step<N> revision: the exposure is counted per step")
    vocab = int(info["vocab_size"])
    with read_only(db) as con:
        prompts, _, sizes = _read_prompts(db, con, info)

    def plan_for(unit: int):
        return plan_input(cfg.input, input_format=cfg.build.input_format, token_dtype=cfg.build.token_dtype,
                          seq_len=e.seq_len, samples="seq-len", token_column=cfg.build.token_column,
                          unit_tokens=unit)

    read_as, unit_tokens = piece_group_plan(cfg.build.explode_unit_tokens, cfg.cluster, plan_for)
    _check_tokenizer(cfg.input, info)
    drop_eos = json.loads(info.get("drop_eos", "false"))
    groups = even_groups(list(read_as.pieces), unit_tokens, local_cores(cfg.cluster))
    # the groups name the parts, and they follow the cluster's cores (``even_groups``)
    digest_of = {"input": redact_url(cfg.input), "steps": steps, "samples_per_step": e.samples_per_step,
                 "groups": [g.name for g in groups],
                 "seq_len": e.seq_len, "drop_eos": drop_eos, "pieces": [p.identity() for p in read_as.pieces],
                 "prompts": hashlib.sha256(b"".join(np.ascontiguousarray(prompts.column(k).to_numpy()).tobytes()
                                                    for k in ("n", "id0", "id1", "expected"))).hexdigest()[:16]}
    digest = hashlib.sha256(json.dumps(digest_of, sort_keys=True).encode()).hexdigest()[:12]
    work = cfg.work_dir or default_work_dir(db).replace(".contexts-work", ".exposure-work")
    s = ExposureSettings(dir=join(work, f"exposure-{digest}"), vocab_size=vocab, steps=tuple(steps),
                         samples_per_step=e.samples_per_step, file_offsets=file_offsets(read_as.pieces),
                         drop_eos=drop_eos, eos_id=cfg.build.eos_id, verify_hashes=cfg.build.verify_hashes)
    report = ExposureReport(db=db, input=redact_url(cfg.input), steps=steps, groups=len(groups))
    identity = {k: v for k, v in digest_of.items() if k not in ("pieces", "groups")}
    manifest = Manifest(join(s.dir, "manifest.json"), {**identity, "pieces": [g.name for g in groups]},
                        f"exposure dir {s.dir}",
                        prepare=lambda: atomic_write_parquet(s.prompts_url, prompts, compression="zstd"))

    def steps_of(ctx: StageContext):
        announce(f"exposure: {', '.join(f'{t} {k:,}' for t, k in sizes.items())} prompts at {len(steps)} step(s) "
                 f"(step{steps[0]} .. step{steps[-1]}, {e.samples_per_step:,} sequences of {e.seq_len:,} tokens "
                 f"per step); {len(groups)} piece group(s) of {report.input} -> {s.dir}")

        def finish(stats: list[dict], ctx: StageContext) -> None:
            for m in stats:
                report.sequences += int(m["samples"])
                report.tokens += int(m["tokens"])
                report.totals[0] += int(m["prompt_seen"])
                report.totals[1] += int(m["task_seen"])
            _check_matches(report, cfg.input, db)
            t0 = time.perf_counter()
            report.rows = write_exposure(ctx.db(), s, prompts, [parts_url(s, g.name) for g in groups],
                                         {**identity, "totals": {"pass": report.totals}}, vocab)
            report.seconds["write"] = time.perf_counter() - t0
            announce(f"exposure: {report.rows:,} rows written to {db} (table {EXPOSURE})")

        yield Step("exposure", groups, exposure_group, args=lambda group: (group, s), counts="piece groups",
                   disk=DiskFull(f"the exposure dir {s.dir}", advice="free space (or give another --work-dir)"),
                   on_result=lambda stats, ctx: faults.crash_point(faults.CRASH_IN_CONTEXTS, "exposure"),
                   finish=finish)

    return Stage(steps_of, report, manifest=manifest, db=db, access=(cfg.input, s.dir))


def _check_tokenizer(url: str, info: dict) -> None:
    """An input that records its tokenizer (``convert``'s ngram_dask.json) must name the build's."""
    from ngram_dask.storage import get_fs

    fs, path = get_fs(join(url, "ngram_dask.json"))
    try:
        if not fs.exists(path):
            return
        with fs.open(path, "r") as f:
            recorded = json.load(f).get("tokenizer")
    except (OSError, ValueError):
        return
    if recorded and info.get("tokenizer") and recorded != info["tokenizer"]:
        raise BadInputError(f"the input {redact_url(url)} was tokenized with {recorded}, the catalog with "
                            f"{info['tokenizer']}: its ids are not the prompts' ids")


def _check_matches(report: ExposureReport, url: str, db: str) -> None:
    """Another tokenizer's ids still occur as prompts, but are almost never followed by the
    expected id: the top prompts are followed by it more than half the time in the build's
    corpus, so a stream where it happens for under a tenth of the occurrences is refused."""
    seen, task = report.totals
    if seen >= 1000 and task < 0.1 * seen:
        raise BadInputError(f"in {redact_url(url)} the top prompts are followed by their expected token in "
                            f"{task:,} of {seen:,} occurrences ({task / seen:.1%}); in the catalog of {db} each "
                            "is followed by it more than half the time: the input's ids are not the catalog's "
                            "(another tokenizer?)")


def write_exposure(con, s: ExposureSettings, prompts: pa.Table, parts: list[str], record: dict,
                   vocab: int) -> int:
    """Sum the parts per prompt and interval, accumulate over the steps, replace the table: one transaction."""
    rows = prompts.append_column("row", pa.array(np.arange(prompts.num_rows, dtype=np.int64)))
    con.register(_PROMPTS_VIEW, rows)
    con.register(_STEPS_VIEW, pa.table({"k": np.arange(len(s.steps), dtype=np.int64),
                                        "step": np.asarray(s.steps, np.int64)}))
    try:
        with transaction(con):
            con.execute(typed_create_sql(EXPOSURE, exposure_columns(vocab), replace=True))
            con.execute(f"""
                INSERT INTO {EXPOSURE}
                WITH parts AS (
                    SELECT row, interval, sum(prompt_seen) AS ps, sum(task_seen) AS ts
                    FROM read_parquet(?) GROUP BY ALL),
                prompts AS (SELECT row, n, id0, nullif(id1, -1) AS id1 FROM {_PROMPTS_VIEW}),
                grid AS (SELECT p.*, k.k, k.step FROM prompts p CROSS JOIN {_STEPS_VIEW} k)
                SELECT n, id0, id1, step,
                       sum(coalesce(ps, 0)) OVER w, sum(coalesce(ts, 0)) OVER w
                FROM grid g LEFT JOIN parts x ON x.row = g.row AND x.interval = g.k
                WINDOW w AS (PARTITION BY g.row ORDER BY g.k ROWS UNBOUNDED PRECEDING)
                ORDER BY n, id0, id1, step""", [parts])
            after = con.execute("SELECT coalesce(sum(prompt_seen), 0), coalesce(sum(task_seen), 0) "
                                "FROM read_parquet(?) WHERE interval = ?", [parts, len(s.steps)]).fetchall()[0]
            record = {**record, "totals": {**record["totals"], "after_last_step": [int(after[0]), int(after[1])]}}
            write_info(con, {EXPOSURE_INFO: json.dumps(record, sort_keys=True)})
            return int(con.execute(f"SELECT count(*) FROM {EXPOSURE}").fetchall()[0][0])
    finally:
        con.unregister(_PROMPTS_VIEW)
        con.unregister(_STEPS_VIEW)


def summary_lines(report: ExposureReport) -> list[str]:
    seen, task = report.totals
    skipped = report.skipped.get("exposure", 0)
    lines = ["", "summary:",
             f"  piece groups {report.groups} ({skipped} already done), sequences {report.sequences:,}, "
             f"tokens {report.tokens:,}",
             f"  steps {len(report.steps)} (step{report.steps[0]} .. step{report.steps[-1]})" if report.steps else "",
             f"  occurrences of the top prompts {seen:,}, followed by the expected id {task:,}",
             f"  exposure rows {report.rows:,}"]
    sec = report.seconds.get("exposure")
    if sec and report.tokens and skipped < report.groups:
        lines.append(f"  {report.tokens / sec / 1e6:.2f}M tokens/s")
    return [line for line in lines if line]
