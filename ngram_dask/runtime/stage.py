"""Running a stage: everything but the work itself, the same way for every stage.

A stage (build, convert, score, scan, contexts) declares what only it knows, as a
``Stage``: the ``Manifest`` that ties its work dir to one input and one set of
settings, the database it writes (if any), its ``Step``\\ s and its report. A step
names its units, the ``@resumable`` task that does one (``runtime.units``), how the
units are submitted (``client.submit`` unless the step says otherwise: the build's
explode is a Dask bag, its aggregate a Dask DataFrame) and what the single writer does
with each result as it arrives and once all have. ``run_stage`` does the rest:

1. before any work: the stage's settings (``Config.check``), the storage options, the
   database the stage needs (missing, empty, or of another tool, schema or build: one
   line); then the stage is declared (it may list its input and read the database),
   and its work dir checked against its manifest (``Manifest.check``);
2. the writer lock of the database, held for the whole stage (a second writer is
   told which stage holds it);
3. the cluster, started when the first unit is submitted (a rerun with nothing to do
   starts none): ``cluster.get_client``, sized for the stage by ``cluster.stage_cluster``,
   storage options on every worker, the workers' access to input and work dir, then the
   manifest claimed; the performance report; a warning for workers lost on the way;
4. per step: units whose marker exists are not submitted (their recorded statistics
   are used), the rest run with progress lines; a worker's full disk becomes one line;
   the step's wall time, units and skipped units go into the stage's report;
5. the writer (``db.writer``): ``StageContext.db()`` is the one read-write connection,
   opened on first use and closed when the stage ends.

The steps never see markers, clients or locks.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

from ngram_dask.errors import DatabaseError, WorkDirError
from ngram_dask.runtime.driver import DiskFull, Progress, as_finished, gpu_resources, scheduler_workers
from ngram_dask.runtime.units import completed, release_thread_buffers
from ngram_dask.storage import read_marker, write_marker

__all__ = ["Manifest", "Stage", "StageContext", "StageReport", "Step", "run_stage"]

Announce = Callable[[str], None]
Stats = dict[str, Any]
log = logging.getLogger(__name__)


@dataclass
class Manifest:
    """``<work dir>/manifest.json``: which input and settings the stage's work dir holds results for.

    Written once (when the cluster is known good, before any unit runs), compared on
    every later run: a work dir of another input or other settings is refused before
    any work, untouched.
    """

    url: str  # the manifest file
    identity: dict  # JSON-able; every key must match on a rerun
    place: str  # how messages name the work dir: "work dir data/work"
    # key -> how a mismatch on it is described ("the input shards"); default: the key itself
    describe: dict[str, Callable[[Any, Any], str] | str] = field(default_factory=dict)
    # the whole message for a mismatch, (key, recorded, now) -> str, instead of the default
    refusal: Callable[[str, Any, Any], str] | None = None
    # whether a recorded identity protects results (default: always); one that protects
    # none (an output folder with no finished unit yet) is replaced instead of refused
    binds: Callable[[], bool] | None = None
    # a dir with no manifest yet: the message when it holds something this stage did not write
    foreign: Callable[[], str | None] | None = None
    # a new dir: what to write into it before its identity is recorded (so a recorded
    # identity means it is there), e.g. the inputs every unit reads
    prepare: Callable[[], None] | None = None

    def read(self) -> dict | None:
        try:
            return read_marker(self.url)
        except OSError as exc:
            raise WorkDirError(f"cannot read {self.place}: {exc}") from None

    def check(self) -> dict | None:
        """Refuse a dir of another identity (or a foreign one); returns what is recorded."""
        existing = self.read()
        if existing is None and self.foreign is not None:
            message = self.foreign()
            if message:
                raise WorkDirError(message)
        self._refuse_other(existing)
        return existing

    def claim(self) -> None:
        """Record this identity where none is recorded (or a recorded one binds nothing)."""
        existing = self.check()
        if existing == self.identity:
            return
        if self.prepare is not None:
            self.prepare()
        try:
            write_marker(self.url, self.identity)
        except OSError as exc:
            raise WorkDirError(f"cannot write to {self.place}: {exc}") from None

    def _refuse_other(self, existing: dict | None) -> None:
        if existing is None or (self.binds is not None and not self.binds()):
            return
        for key, value in self.identity.items():
            if existing.get(key) != value:
                if self.refusal is not None:
                    raise WorkDirError(self.refusal(key, existing.get(key), value))
                what = self.describe.get(key, key)
                what = what(existing.get(key), value) if callable(what) else what
                raise WorkDirError(f"{self.place} holds results for different {what}; "
                                   "use a fresh --work-dir (or delete this one)")


def _one(result: Any) -> list[Stats]:
    return [result]


def _tokens(stats: Stats) -> int:
    return int(stats.get("tokens", 0) or 0)


@dataclass
class Step:
    """One step of a stage: units, the task that does one, and what the writer does with the results."""

    name: str  # in progress lines, messages and the report: "explode"
    units: Sequence  # the work, in order; each is passed to the task as ``args(unit)``
    task: Callable[..., Stats]  # a ``runtime.resumable`` task (or a plain one: never skipped)
    kwargs: dict = field(default_factory=dict)  # passed to every task
    args: Callable[[Any], tuple] = lambda unit: (unit,)
    counts: str = "units"  # what the progress line counts: "chunks"
    # which units this run may do (default: all); the others only contribute recorded results
    select: Callable[[Any], bool] | None = None
    # futures for the units to run; default one ``client.submit`` per unit. A step whose
    # futures' results are not one unit's statistics says how to unpack them.
    submit: Callable[[Any, list], list] | None = None
    # a task's statistics -> those of every unit it completed, itself first (recorded
    # ones, and fresh ones unless ``unpack`` is given)
    expand: Callable[[Stats], list[Stats]] = _one
    # a submitted future's result -> the statistics of every unit it completed
    unpack: Callable[[Any], list[Stats]] | None = None
    disk: DiskFull | None = None  # what a full disk on a worker means here
    run: bool = True  # False: use the units' recorded results; a missing one is an error
    not_run: Callable[[Any], str] = lambda unit: f"{unit} has not run yet"  # the message then
    gpu: bool = False  # tasks need a GPU where workers advertise one
    release: bool = False  # drop each result from the cluster once read (large results)
    # the single writer: called with each unit's statistics as they arrive (recorded
    # ones first, in unit order), then once with all of them
    on_result: Callable[[Stats, "StageContext"], None] | None = None
    finish: Callable[[list[Stats], "StageContext"], None] | None = None


@dataclass
class StageReport:
    """What the runtime records of every stage; a stage's own report extends it."""

    seconds: dict[str, float] = field(default_factory=dict)  # step (or the stage's own phase) -> wall time
    units: dict[str, int] = field(default_factory=dict)  # step -> its units
    skipped: dict[str, int] = field(default_factory=dict)  # step -> units done by an earlier run
    dashboard: str | None = None  # the cluster's dashboard link, when one ran

    def ran(self, step: str) -> int:
        """Units of ``step`` this run did (not done by an earlier one)."""
        return self.units.get(step, 0) - self.skipped.get(step, 0)

    def time_lines(self, width: int = 15) -> list[str]:
        """One line per timed step, then the total."""
        lines = [f"  {name:<{width}} {sec:8.2f} s" for name, sec in self.seconds.items()]
        if len(self.seconds) > 1:
            lines.append(f"  {'total':<{width}} {sum(self.seconds.values()):8.2f} s")
        return lines


@dataclass
class Stage:
    """What a stage declares; ``run_stage`` runs it."""

    # the steps, produced lazily: a step may depend on the results of the ones before it
    steps: Callable[["StageContext"], Iterable[Step]]
    report: StageReport = field(default_factory=StageReport)  # what ``run_stage`` returns, filled in
    manifest: Manifest | None = None
    db: str | None = None  # the database this stage writes through the single writer
    db_identity: dict | None = None  # what an existing database must have recorded
    db_settings: dict | None = None  # DuckDB SET options of the writer's connection
    access: tuple[str, str] | None = None  # (input, work dir) every worker must read / write
    uses_gpu: bool = False  # its tasks load a model: the LocalCluster is sized for the GPUs
    device: str = "auto"  # the device its tasks ask for (cluster.stage_cluster)
    cpu_workers: int | None = None  # LocalCluster workers of a model stage without a GPU (None: per core)


@dataclass
class StageContext:
    """What a step's writer callbacks and the stage's later steps see."""

    name: str  # the stage: "build"
    stage: Stage
    announce: Announce
    results: dict[str, list[Stats]] = field(default_factory=dict)  # step name -> every unit's stats
    writer: Any = None  # db.Writer of the stage's database, None when it writes none
    said_gpu: bool = False
    _start: Callable[[], Any] | None = None
    _client: Any = None

    @property
    def report(self) -> StageReport:
        return self.stage.report

    def _cluster(self):
        """The cluster's client, started on first use: a rerun with nothing to do starts none."""
        if self._client is None:
            self._client = self._start()
            self.report.dashboard = self._client.dashboard_link
        return self._client

    def worker_placement(self) -> tuple[tuple[str, int, int], ...]:
        """``(worker address, its index among its host's workers, workers on that host)`` for
        every worker (the cluster starts if it has not): lets a task pick its GPU among
        several one process sees, and a fair share of its host's cores."""
        by_host: dict[str, list[str]] = {}
        for address, w in scheduler_workers(self._cluster()).items():
            by_host.setdefault(w.get("host") or address.rsplit(":", 1)[0], []).append(address)
        return tuple((address, i, len(addresses))
                     for addresses in by_host.values() for i, address in enumerate(sorted(addresses)))

    def db(self):
        """The stage's one read-write connection to its database, opened on first use."""
        if self.writer is None:
            raise RuntimeError(f"stage {self.name} declared no database to write")
        return self.writer.con


def run_stage(cfg, name: str, declare: Callable[[dict | None], Stage], announce: Announce = print,
              needs_db: str | None = None) -> StageReport:
    """Check, declare, claim, start the cluster when there is work, run every step, write
    through the single writer; returns the stage's report.

    ``declare(info)`` gets the ``catalog_info`` of ``cfg.db`` when the stage ``needs_db``
    (what to do when there is none: "run `ngram-dask build` first"), else None.
    """
    from ngram_dask.db import check_existing, writer
    from ngram_dask.storage import use_storage

    cfg.check(name)
    options = use_storage(cfg.storage.s3_endpoint_url, cfg.storage.s3_region)  # inputs are listed next
    info = None
    if needs_db is not None:
        info = check_existing(cfg.db)
        if not info:
            what = "does not exist" if info is None else "holds no catalog"
            raise DatabaseError(f"database {cfg.db} {what}: {needs_db}")
    stage = declare(info)
    if stage.db:
        check_existing(stage.db, stage.db_identity)
    if stage.manifest:
        stage.manifest.check()
    the_writer = writer(stage.db, name, stage.db_settings) if stage.db else contextlib.nullcontext()
    with the_writer as db_writer, contextlib.ExitStack() as cluster:
        ctx = StageContext(name, stage, announce, writer=db_writer,
                           _start=lambda: _start_cluster(cfg, name, stage, cluster, options, announce))
        for step in stage.steps(ctx):
            ctx.results[step.name] = _run_step(step, ctx)
        if stage.manifest:
            stage.manifest.claim()  # also when no unit ran (every unit was done)
    return stage.report


def _start_cluster(cfg, name: str, stage: Stage, stack: contextlib.ExitStack, options: dict,
                   announce: Announce):
    """The client, storage options on every worker, their access checked, the manifest
    claimed, the performance report started; closed (in reverse) when the stage ends."""
    from ngram_dask.cluster import (
        check_worker_access,
        get_client,
        install_storage_options,
        performance_report,
        stage_cluster,
    )

    cluster_cfg = stage_cluster(cfg.cluster, stage.uses_gpu, stage.device, stage.cpu_workers)
    client = stack.enter_context(get_client(cluster_cfg, announce))
    install_storage_options(client, options)
    if stage.access:
        check_worker_access(client, *stage.access)
    if stage.manifest:
        stage.manifest.claim()
    at_start = set(scheduler_workers(client))
    stack.callback(_warn_lost_workers, client, at_start, name, announce)
    stack.enter_context(performance_report(cfg.cluster.performance_report))
    if stage.uses_gpu and not gpu_resources(client):
        announce("  no worker advertises a GPU resource: tasks run anywhere")
    return client


def _run_step(step: Step, ctx: StageContext) -> list[Stats]:
    """Every unit of the step: recorded results for done units, tasks for the rest."""
    recorded: list[Stats] = []
    todo = []
    resumable = hasattr(step.task, "marker")
    chosen = [u for u in step.units if step.select is None or step.select(u)]
    for unit in step.units:
        done = completed(step.task, *step.args(unit), **step.kwargs) if resumable else None
        if done is not None:
            recorded.append(done)
        elif step.select is not None and not step.select(unit):
            continue  # not this run's to do, and not done by an earlier one
        elif not step.run:
            raise WorkDirError(step.not_run(unit))
        else:
            todo.append(unit)
    out: list[Stats] = []
    for stats in recorded:
        for one in step.expand(stats):
            out.append(one)
            if step.on_result:
                step.on_result(one, ctx)
    skipped = len(chosen) - len(todo)
    report = ctx.report
    report.units[step.name] = len(chosen)
    report.skipped[step.name] = skipped
    progress = Progress(step.name, len(chosen), step.counts, ctx.announce)
    progress.done = skipped
    if todo:
        for stats in _results(step, todo, ctx, progress):
            progress.step(tokens=_tokens(stats[0]) if stats else 0)
            for one in stats:
                out.append(one)
                if step.on_result:
                    step.on_result(one, ctx)
        report.seconds[step.name] = progress.seconds
        # the next step's memory is its own; a worker lost meanwhile holds none ("ignore":
        # a broadcast reaching a killed worker raised CommClosedError and failed the build)
        ctx._cluster().run(release_thread_buffers, on_error="ignore")
    if step.finish:
        step.finish(out, ctx)
    return out


def _results(step: Step, todo: list, ctx: StageContext, progress: Progress) -> Iterator[list[Stats]]:
    client = ctx._cluster()
    disk = step.disk or DiskFull(f"the {ctx.name} stage's output")
    disk = disk.at(progress)
    if step.submit is not None:
        futures = step.submit(client, todo)
    else:
        resources = gpu_resources(client) if step.gpu else None
        if resources and not ctx.said_gpu:
            ctx.announce("  workers advertise GPU: each task asks for GPU=1")
            ctx.said_gpu = True
        futures = [client.submit(step.task, *step.args(u), pure=False, resources=resources, **step.kwargs)
                   for u in todo]
    for _, result in as_finished(futures, disk, release=step.release):
        yield step.unpack(result) if step.unpack else step.expand(result)


def _warn_lost_workers(client, at_start: set, stage: str, announce: Announce) -> None:
    try:
        lost = at_start - set(scheduler_workers(client))
    except Exception:  # the stage is ending on another error: that one is the news
        return
    if lost:
        log.warning("%d worker(s) left during the %s (%s); Dask re-ran their tasks elsewhere",
                    len(lost), stage, ", ".join(sorted(lost)))
        announce(f"warning: {len(lost)} worker(s) were lost during the {stage}; their tasks were re-run")
