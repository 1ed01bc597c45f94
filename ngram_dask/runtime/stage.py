"""Running a stage: everything but the work itself, the same way for every stage.

A stage (build, convert, score, scan, contexts) declares what only it knows, as a
``Stage``: its name, the ``Manifest`` that ties its work dir to one input and one set
of settings, the database it writes (if any) and its ``Step``\\ s. A step names its
units of work, the ``@resumable`` task that does one (``runtime.tasks``), how the tasks
are submitted (``client.map`` unless the step says otherwise: the build's explode is a
Dask bag, its aggregate a Dask DataFrame) and what the single writer does with each
result as it arrives and once all have. ``run_stage`` does the rest:

1. before any work: refuse a database of another tool, schema or build
   (``db.check_existing``) and a work dir of another input (``Manifest.check``);
2. the writer lock of the database, held for the whole stage (a second writer is
   told which stage holds it);
3. the cluster, started when the first task is submitted (a rerun with nothing to do
   starts none): ``cluster.get_client``, sized for the stage by ``cluster.stage_cluster``,
   storage options on every worker, the workers' access to input and work dir, then the
   manifest claimed; the performance report; a warning for workers lost on the way;
4. per step: units whose marker exists are not submitted (their recorded statistics
   are used), the rest run with progress lines; a worker's full disk becomes one line;
5. the writer (``db.writer``): ``StageContext.db()`` is the one read-write connection,
   opened on first use and closed when the stage ends.

The steps never see markers, clients or locks.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

from ngram_dask.errors import WorkDirError
from ngram_dask.runtime.driver import DiskFull, Progress, as_finished, gpu_resources, workers
from ngram_dask.runtime.tasks import completed
from ngram_dask.storage import read_marker, write_marker

__all__ = ["Manifest", "Stage", "StageContext", "Step", "run_stage"]

Announce = Callable[[str], None]
Stats = dict[str, Any]
log = logging.getLogger(__name__)


@dataclass
class Manifest:
    """``<work dir>/manifest.json``: which input and settings the stage's work dir holds results for.

    Written once (when the cluster is known good), compared on every later run: a work
    dir of another input or other settings is refused before any work, untouched.
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

    def read(self) -> dict | None:
        try:
            return read_marker(self.url)
        except OSError as exc:
            raise WorkDirError(f"cannot read {self.place}: {exc}") from None

    def check(self) -> None:
        self._refuse_other(self.read())

    def claim(self) -> None:
        """Record this identity where none is recorded (or a recorded one binds nothing)."""
        existing = self.read()
        self._refuse_other(existing)
        if existing == self.identity:
            return
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

    name: str  # in progress lines and messages: "explode"
    units: Sequence  # the work, in order; each is passed to the task as ``args(unit)``
    task: Callable[..., Stats] | None = None  # a ``runtime.resumable`` task (or a plain one: never skipped)
    kwargs: dict = field(default_factory=dict)  # passed to every task
    args: Callable[[Any], tuple] = lambda unit: (unit,)
    unit: str = "tasks"  # what the progress line counts
    # futures for the units to run; default ``client.map(task, ...)``. A step whose
    # futures' results are not one unit's statistics says how to unpack them.
    submit: Callable[[Any, list], list] | None = None
    # a task's statistics -> those of every unit it completed, itself first (recorded
    # ones, and fresh ones unless ``unpack`` is given)
    expand: Callable[[Stats], list[Stats]] = _one
    # a submitted future's result -> the statistics of every unit it completed
    unpack: Callable[[Any], list[Stats]] | None = None
    tokens: Callable[[Stats], int] = _tokens  # shown as tokens/s
    disk: DiskFull | None = None  # what a full disk on a worker means here
    run: bool = True  # False: use the units' recorded results; a missing one is an error
    not_run: Callable[[Any], str] = lambda unit: f"{unit} has not run yet"  # the message then
    gpu: bool = False  # tasks need a GPU where workers advertise one
    release: bool = False  # drop each result from the cluster once read (large results)
    show_rate: bool = False
    # the single writer: called with each unit's statistics as they arrive (recorded
    # ones first, in unit order), then once with all of them
    on_result: Callable[[Stats, "StageContext"], None] | None = None
    finish: Callable[[list[Stats], "StageContext"], None] | None = None


@dataclass
class Stage:
    """What a stage declares; ``run_stage`` runs it."""

    name: str  # "build": messages and the writer lock name it
    cluster: Any  # config.ClusterConfig
    storage: Any  # config.StorageConfig
    # the steps, produced lazily: a step may depend on the results of the ones before it
    steps: Callable[["StageContext"], Iterable[Step]]
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

    stage: Stage
    announce: Announce
    results: dict[str, list[Stats]] = field(default_factory=dict)  # step name -> every unit's stats
    seconds: dict[str, float] = field(default_factory=dict)  # step name -> wall time of its tasks
    skipped: dict[str, int] = field(default_factory=dict)  # step name -> units done by an earlier run
    writer: Any = None  # db.Writer of the stage's database, None when it writes none
    dashboard: str | None = None  # the cluster's dashboard link, once it runs
    said_gpu: bool = False
    _start: Callable[[], Any] | None = None
    _client: Any = None

    @property
    def client(self):
        """The cluster's client, started on first use: a rerun with nothing to do starts none."""
        if self._client is None:
            self._client = self._start()
            self.dashboard = self._client.dashboard_link
        return self._client

    def db(self):
        """The stage's one read-write connection to its database, opened on first use."""
        if self.writer is None:
            raise RuntimeError(f"stage {self.stage.name} declared no database to write")
        return self.writer.con


def run_stage(stage: Stage, announce: Announce = print) -> StageContext:
    """Check, claim, start the cluster when there is work, run every step, write through the single writer."""
    from ngram_dask.db import check_existing, writer
    from ngram_dask.storage import use_storage

    options = use_storage(stage.storage.s3_endpoint_url, stage.storage.s3_region)
    if stage.db:
        check_existing(stage.db, stage.db_identity)
    if stage.manifest:
        stage.manifest.check()
    the_writer = writer(stage.db, stage.name, stage.db_settings) if stage.db else contextlib.nullcontext()
    with the_writer as db_writer, contextlib.ExitStack() as cluster:
        ctx = StageContext(stage, announce, writer=db_writer,
                           _start=lambda: _start_cluster(stage, cluster, options, announce))
        for step in stage.steps(ctx):
            ctx.results[step.name] = _run_step(step, ctx)
        if stage.manifest:
            stage.manifest.claim()  # also when no task ran (every unit was done)
    return ctx


def _start_cluster(stage: Stage, stack: contextlib.ExitStack, options: dict, announce: Announce):
    """The client, storage options on every worker, their access checked, the manifest
    claimed, the performance report started; closed (in reverse) when the stage ends."""
    from ngram_dask.cluster import (
        check_worker_access,
        get_client,
        install_storage_options,
        performance_report,
        stage_cluster,
    )

    cluster_cfg = stage_cluster(stage.cluster, stage.uses_gpu, stage.device, stage.cpu_workers)
    client = stack.enter_context(get_client(cluster_cfg, announce))
    install_storage_options(client, options)
    if stage.access:
        check_worker_access(client, *stage.access)
    if stage.manifest:
        stage.manifest.claim()
    at_start = set(workers(client))
    stack.callback(_warn_lost_workers, client, at_start, stage.name, announce)
    stack.enter_context(performance_report(stage.cluster.performance_report))
    return client


def _run_step(step: Step, ctx: StageContext) -> list[Stats]:
    """Every unit of the step: recorded results for done units, tasks for the rest."""
    recorded: list[Stats] = []
    todo = []
    for unit in step.units:
        done = completed(step.task, *step.args(unit), **step.kwargs) if hasattr(step.task, "marker") else None
        if done is not None:
            recorded.append(done)
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
    ctx.skipped[step.name] = len(recorded)
    progress = Progress(step.name, len(step.units), step.unit, ctx.announce, show_rate=step.show_rate)
    progress.done = len(recorded)
    if todo:
        for stats in _results(step, todo, ctx):
            progress.step(tokens=step.tokens(stats[0]) if stats else 0)
            for one in stats:
                out.append(one)
                if step.on_result:
                    step.on_result(one, ctx)
    ctx.seconds[step.name] = progress.seconds
    if step.finish:
        step.finish(out, ctx)
    return out


def _results(step: Step, todo: list, ctx: StageContext) -> Iterator[list[Stats]]:
    client = ctx.client
    disk = step.disk or DiskFull(f"the {ctx.stage.name} stage's output")
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
        lost = at_start - set(workers(client))
    except Exception:  # the stage is ending on another error: that one is the news
        return
    if lost:
        log.warning("%d worker(s) left during the %s (%s); Dask re-ran their tasks elsewhere",
                    len(lost), stage, ", ".join(sorted(lost)))
        announce(f"warning: {len(lost)} worker(s) were lost during the {stage}; their tasks were re-run")

