"""Decide where the work runs: a LocalCluster on this machine, a running scheduler (by
address or scheduler file), or worker jobs on SLURM (``cluster_slurm``).

``get_client(cfg.cluster)`` is the only place that knows the difference; every stage
just receives a ``distributed.Client``. ``stage_cluster`` sizes a LocalCluster for a
stage whose tasks load a model (one worker per GPU), the one policy for all of them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import warnings
from typing import TYPE_CHECKING, Callable, Iterator

from ngram_dask.config import ClusterConfig
from ngram_dask.errors import UserError

if TYPE_CHECKING:
    from distributed import Client

    from ngram_dask.inputs import InputPlan

log = logging.getLogger(__name__)

_LOOPBACK = ("127.0.0.1", "localhost", "::1", "")
# A busy default dashboard port is not an error: Dask picks another, and the link says which.
_PORT_IN_USE = ".*Port .* is already in use.*"


def _security(cfg: ClusterConfig):
    if not cfg.tls:
        return None
    from distributed.security import Security

    return Security(
        tls_ca_file=cfg.tls_ca,
        tls_client_cert=cfg.tls_cert,
        tls_client_key=cfg.tls_key,
        tls_worker_cert=cfg.tls_cert,
        tls_worker_key=cfg.tls_key,
        tls_scheduler_cert=cfg.tls_cert,
        tls_scheduler_key=cfg.tls_key,
        require_encryption=True,
    )


def _dashboard_host(address: str) -> str:
    return address.rsplit(":", 1)[0] if ":" in address else ""


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, where the OS has one)."""
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _default_workers(threads_per_worker: int) -> int:
    return max(1, usable_cores() // max(1, threads_per_worker))


# Dask starts each worker with MALLOC_TRIM_THRESHOLD_=65536 so that freed memory goes back
# to the OS at once. Setting that also stops glibc from raising its mmap threshold, so every
# array of 128 KiB or more is a fresh mmap that the next task page-faults in again: 8 of the
# aggregate's 30 CPU-s at 1e9 tokens were the kernel's. Our tasks allocate the same few
# large arrays each time, so the workers keep up to 1 GiB of freed heap for the next task
# (the aggregate step at 1e9 tokens: 14.6 -> 11.3 s; docs/performance.md). A value the
# user set in Dask's config is kept, and one in the environment wins (Dask's rule).
WORKER_MALLOC = {"MALLOC_MMAP_THRESHOLD_": 1 << 30, "MALLOC_TRIM_THRESHOLD_": 1 << 30}
_DASK_DEFAULT_TRIM = 65536


def worker_environ() -> dict:
    """``distributed.nanny.pre-spawn-environ`` for the LocalCluster's workers."""
    import dask

    env = dict(dask.config.get("distributed.nanny.pre-spawn-environ", None) or {})
    env.setdefault("MALLOC_MMAP_THRESHOLD_", WORKER_MALLOC["MALLOC_MMAP_THRESHOLD_"])
    if str(env.get("MALLOC_TRIM_THRESHOLD_", _DASK_DEFAULT_TRIM)) == str(_DASK_DEFAULT_TRIM):
        env["MALLOC_TRIM_THRESHOLD_"] = WORKER_MALLOC["MALLOC_TRIM_THRESHOLD_"]
    return env


def install_storage_options(client, options: dict) -> None:
    """Apply storage options (S3 endpoint, region) here and on every worker, present and future."""
    from distributed.diagnostics.plugin import WorkerPlugin

    from ngram_dask.storage import apply_storage_options

    apply_storage_options(options)
    if not options:
        return

    class StorageOptions(WorkerPlugin):
        name = "ngram-dask-storage-options"

        def setup(self, worker):
            apply_storage_options(options)

    client.register_plugin(StorageOptions())


def check_worker_access(client, input_url: str, work_dir: str) -> None:
    """Every worker must read the input and write the work dir (shared storage), checked up front."""
    from ngram_dask.storage import check_access

    for worker, problem in client.run(check_access, input_url, work_dir).items():
        if problem:
            raise UserError(f"{problem} ({worker}); --input and --work-dir must be reachable by every worker")


def check_workers(client, expected_versions: dict[str, str]) -> None:
    """Refuse a cluster whose workers run other versions of the packages that matter."""
    got = client.run(_worker_versions)
    if not got:
        raise UserError(f"the scheduler at {client.scheduler.address} has no workers")
    for worker, versions in got.items():
        for name, want in expected_versions.items():
            have = versions.get(name)
            if have != want:
                raise UserError(
                    f"worker {worker} runs {name} {have}, this client runs {want}: "
                    "install the same versions everywhere"
                )


def _worker_versions() -> dict[str, str]:
    return package_versions()


def package_versions() -> dict[str, str]:
    import dask
    import distributed
    import duckdb
    import numpy
    import pyarrow

    from ngram_dask import __version__

    return {
        "ngram_dask": __version__,
        "dask": dask.__version__,
        "distributed": distributed.__version__,
        "duckdb": duckdb.__version__,
        "numpy": numpy.__version__,
        "pyarrow": pyarrow.__version__,
    }


@contextlib.contextmanager
def get_client(cfg: ClusterConfig, announce=print) -> Iterator[Client]:
    """Yield a connected ``Client`` on the cluster ``cfg.runs_on`` names; a cluster started
    here (a LocalCluster, SLURM jobs) is closed on exit (the jobs cancelled)."""
    security = _security(cfg)
    start = {"address": _attached, "slurm": _slurm, "local": _local}[cfg.runs_on]
    with start(cfg, security, announce) as client:
        yield client


def _silence() -> int:
    return logging.CRITICAL if not log.isEnabledFor(logging.INFO) else logging.INFO


@contextlib.contextmanager
def _attached(cfg: ClusterConfig, security, announce) -> Iterator[Client]:
    """A running scheduler, by address or by the file it wrote (``--scheduler-file``)."""
    from distributed import Client

    if cfg.scheduler:
        address = where = cfg.scheduler
    else:
        address = _address_in(cfg.scheduler_file, cfg.wait_timeout, announce)
        where = f"{address} (from {cfg.scheduler_file})"
    try:
        client = Client(address, security=security, timeout="30s")
    except (OSError, TimeoutError, ValueError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot reach the Dask scheduler at {where}: {first}") from None
    try:
        # workers of a batch job start beside the scheduler: wait for them; a standing
        # scheduler must have its workers already (unless told to wait)
        want = cfg.wait_workers or (1 if cfg.scheduler_file else 0)
        if want:
            wait_for_workers(client, want, cfg.wait_timeout, announce, lambda: (
                f"start `dask worker --scheduler-file {cfg.scheduler_file}` on the nodes"
                if cfg.scheduler_file else f"start `dask worker {address}` on the nodes"))
        check_workers(client, package_versions())
        announce(f"attached to {where}; dashboard: {client.dashboard_link}")
        _announce_tunnel(client.dashboard_link, announce)
        yield client
    finally:
        client.close()


def _address_in(path: str, timeout: float, announce) -> str:
    """The address a scheduler wrote to its scheduler file, waiting for the file to appear."""
    import json
    import time

    deadline = time.monotonic() + timeout
    said = False
    while True:
        try:
            with open(path) as f:
                return json.load(f)["address"]
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass  # not written yet, or half-written
        except OSError as exc:
            raise UserError(f"cannot read the scheduler file {path}: {exc.strerror or exc}") from None
        if time.monotonic() >= deadline:
            raise UserError(f"no Dask scheduler wrote {path} within {timeout:g} s: start `dask scheduler "
                            f"--scheduler-file {path}` first (docs/clusters.md)")
        if not said:
            announce(f"  waiting for the scheduler to write {path}")
            said = True
        time.sleep(0.5)


def wait_for_workers(client, want: int, timeout: float, announce, explain, advice: str = "",
                     say_every: float = 30) -> None:
    """Block until ``want`` workers have joined; a progress line when the count changes (and
    every ``say_every`` s), and after ``timeout`` s a UserError saying ``explain()`` and ``advice``."""
    import time

    deadline = time.monotonic() + timeout
    said, said_at = None, 0.0
    while True:
        have = len(client.nthreads())
        if have >= want:
            if said is not None:
                announce(f"  workers: {have} of {want} up")
            return
        now = time.monotonic()
        if now >= deadline:
            raise UserError(f"{have} of {want} worker(s) up after {timeout:g} s: {explain()}{advice}")
        if have != said or now - said_at >= say_every:
            announce(f"  waiting for workers: {have} of {want} up ({explain()})")
            said, said_at = have, now
        time.sleep(min(1.0, max(0.05, deadline - now)))


@contextlib.contextmanager
def _slurm(cfg: ClusterConfig, security, announce) -> Iterator[Client]:
    """Worker jobs through dask-jobqueue; the scheduler runs in this process."""
    from distributed import Client

    from ngram_dask import cluster_slurm as slurm

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_PORT_IN_USE)
        cluster = slurm.start(cfg.slurm, worker_environ(), cfg.dashboard_address, security, _silence())
    try:
        with Client(cluster, security=security) as client:
            link = client.dashboard_link
            if _dashboard_host(cfg.dashboard_address) in ("127.0.0.1", "localhost"):
                # Dask's link names the scheduler's address; the dashboard listens on loopback
                link = re.sub(r"//[^/]+:(\d+)", r"//127.0.0.1:\1", link, count=1)
            announce(f"SLURM: {slurm.describe(cfg.slurm)}; dashboard: {link}")
            _announce_tunnel(link, announce)
            wait_for_workers(client, cfg.wait_workers or slurm.expected_workers(cfg.slurm), cfg.wait_timeout,
                             announce, lambda: "SLURM jobs: " + slurm.queue_state(slurm.job_ids(cluster)),
                             advice="; wait longer (--wait-timeout), start with fewer (--wait-workers) or ask "
                                    "another partition (--slurm-partition)")
            check_workers(client, package_versions())
            yield client
    finally:
        cluster.close()  # cancels the jobs


def tunnel_hint(dashboard_link: str) -> str:
    """How to see a dashboard served on a cluster node from a laptop."""
    import getpass
    import socket

    m = re.match(r"https?://\[?([^\]/]+?)\]?:(\d+)", dashboard_link or "")
    if not m:
        return ""
    host, port = m.groups()
    return f"from your machine: ssh -N -L {port}:{host}:{port} {getpass.getuser()}@{socket.gethostname()}"


def _announce_tunnel(dashboard_link: str, announce) -> None:
    hint = tunnel_hint(dashboard_link)
    if hint:
        announce(f"  {hint}")


@contextlib.contextmanager
def _local(cfg: ClusterConfig, security, announce) -> Iterator[Client]:
    from distributed import Client, LocalCluster

    if cfg.host not in _LOOPBACK or _dashboard_host(cfg.dashboard_address) not in _LOOPBACK:
        warnings.warn(
            "the LocalCluster listens beyond this machine "
            f"(host={cfg.host!r}, dashboard={cfg.dashboard_address!r}); anyone who reaches it "
            "can run code as this user unless TLS is configured",
            stacklevel=4,
        )
    import dask

    n_workers = cfg.n_workers or _default_workers(cfg.threads_per_worker)
    with warnings.catch_warnings(), dask.config.set({"distributed.nanny.pre-spawn-environ": worker_environ()}):
        warnings.filterwarnings("ignore", message=_PORT_IN_USE)
        cluster = LocalCluster(
            n_workers=n_workers,
            threads_per_worker=cfg.threads_per_worker,
            memory_limit=cfg.memory_limit,
            host=cfg.host,
            dashboard_address=cfg.dashboard_address,
            processes=True,
            silence_logs=_silence(),
            security=security,
            protocol="tls://" if security else None,
        )
    try:
        with Client(cluster, security=security) as client:
            announce(
                f"LocalCluster: {n_workers} worker(s) x {cfg.threads_per_worker} thread(s); "
                f"dashboard: {client.dashboard_link}"
            )
            yield client
    finally:
        cluster.close()


def worker_memory(cfg: ClusterConfig) -> tuple[int | None, int]:
    """``(memory limit of one worker in bytes, its threads)``, known before any cluster starts.

    A LocalCluster's come from its settings, as Dask will parse them (``auto``: the
    machine's memory times threads per worker over cores). A running scheduler's workers
    are not asked (that would start a connection for a rerun with nothing to do): their
    limit is ``cluster.memory_limit`` when set explicitly, else unknown (None).
    """
    from distributed.worker_memory import parse_memory_limit

    threads = cfg.threads_per_worker
    if cfg.scheduler and cfg.memory_limit == "auto":
        return None, threads
    cores = usable_cores() if not cfg.scheduler else threads
    return parse_memory_limit(cfg.memory_limit, threads, total_cores=max(cores, threads), logger=log), threads


def local_cores(cfg: ClusterConfig) -> int | None:
    """Threads of the LocalCluster a stage would start (None for any other cluster: a
    running scheduler's or SLURM's workers are not counted before they are there)."""
    if cfg.scheduler or cfg.scheduler_file or cfg.kind in ("address", "slurm"):
        return None
    return (cfg.n_workers or _default_workers(cfg.threads_per_worker)) * cfg.threads_per_worker


def sized_unit_tokens(setting: int | None, cfg: ClusterConfig) -> int:
    """Tokens per unit of a stage that reads piece groups (the build's explode, contexts):
    ``setting`` (``build.explode_unit_tokens``) when given, else sized so that a worker's
    threads, each running one unit, stay under ``inputs.UNIT_MEMORY_SHARE`` of its memory
    limit (``worker_memory``; ``inputs.FALLBACK_UNIT_TOKENS`` when it is unknown)."""
    from ngram_dask.inputs import unit_tokens_for

    if setting:
        return int(setting)
    worker_limit, threads = worker_memory(cfg)
    return unit_tokens_for(worker_limit, threads)


def piece_group_plan(setting: int | None, cfg: ClusterConfig, plan_for: Callable[[int], "InputPlan"]
                     ) -> tuple["InputPlan", int]:
    """``(plan, unit tokens)`` of a stage that reads piece groups apart from the build
    (contexts, exposure), its units sized as the explode sizes them: ``setting`` when given,
    else to the workers' memory (``sized_unit_tokens``) and balanced over a LocalCluster's
    cores (``inputs.balanced_plan``). ``plan_for(unit)`` plans the input for a unit size."""
    from ngram_dask.inputs import balanced_plan

    return balanced_plan(plan_for, sized_unit_tokens(setting, cfg), None if setting else local_cores(cfg))


def local_gpus(device: str) -> int:
    """CUDA devices this machine would give tasks that ask for ``device`` (0 for cpu)."""
    if device == "cpu":
        return 0
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def stage_cluster(cfg: ClusterConfig, uses_gpu: bool, device: str = "auto",
                  cpu_workers: int | None = None) -> ClusterConfig:
    """The LocalCluster a stage gets. A stage whose tasks load a model runs one worker per
    GPU (each worker holds the model once; more would each load it again), or
    ``cpu_workers`` without a GPU. The user's ``n_workers`` always wins, and a cluster not
    started here (an address, SLURM jobs: ``cluster.slurm`` sizes those) is as it is."""
    if cfg.runs_on != "local" or cfg.n_workers or not uses_gpu:
        return cfg
    gpus = local_gpus(device)
    if gpus:
        return dataclasses.replace(cfg, n_workers=gpus)
    return dataclasses.replace(cfg, n_workers=cpu_workers) if cpu_workers else cfg


def performance_report(filename: str | None):
    """Dask's HTML performance report of what runs inside the block, or nothing without a file."""
    if not filename:
        return contextlib.nullcontext()
    from distributed import performance_report as dask_performance_report

    return dask_performance_report(filename=filename)
