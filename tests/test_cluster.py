"""``ngram_dask.cluster``: cores, worker counts and environment, the loopback warning, and the
checks a client makes of a cluster before any work."""

from __future__ import annotations

import os
import warnings

import dask
import pytest

from ngram_dask import cluster
from ngram_dask.cluster import (
    WORKER_MALLOC,
    check_worker_access,
    check_workers,
    get_client,
    package_versions,
    usable_cores,
    worker_environ,
)
from ngram_dask.config import ClusterConfig
from ngram_dask.errors import UserError

from helpers import run_cli, write_mds


def test_usable_cores_follow_the_affinity_else_the_cpu_count(monkeypatch):
    if hasattr(os, "sched_getaffinity"):
        assert usable_cores() == len(os.sched_getaffinity(0))
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 2, 5})
        assert usable_cores() == 3
        monkeypatch.delattr(os, "sched_getaffinity")
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert usable_cores() == 6
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert usable_cores() == 1


@pytest.mark.parametrize("cores,threads,workers", [(8, 1, 8), (8, 3, 2), (8, 16, 1), (1, 1, 1), (8, 0, 8)])
def test_default_workers_fill_the_cores(monkeypatch, cores, threads, workers):
    monkeypatch.setattr(cluster, "usable_cores", lambda: cores)
    assert cluster._default_workers(threads) == workers


@pytest.mark.parametrize("user,expected", [
    (None, dict(WORKER_MALLOC)),
    ({"MALLOC_TRIM_THRESHOLD_": 65536}, WORKER_MALLOC),  # Dask's own default: ours replaces it
    ({"MALLOC_TRIM_THRESHOLD_": "123"}, {**WORKER_MALLOC, "MALLOC_TRIM_THRESHOLD_": "123"}),  # the user's: kept
    ({"MALLOC_MMAP_THRESHOLD_": 7, "OMP_NUM_THREADS": 1},
     {**WORKER_MALLOC, "MALLOC_MMAP_THRESHOLD_": 7, "OMP_NUM_THREADS": 1}),
])
def test_worker_environ_keeps_what_the_user_set(user, expected):
    with dask.config.set({"distributed.nanny.pre-spawn-environ": user}):
        assert worker_environ() == expected


class _Started(Exception):
    """Raised by the stand-in LocalCluster: get_client got as far as starting one."""


@pytest.fixture
def no_local_cluster(monkeypatch):
    """A LocalCluster that records its arguments and starts nothing."""
    import distributed

    seen: dict = {}

    def fake(**kwargs):
        seen.update(kwargs)
        raise _Started

    monkeypatch.setattr(distributed, "LocalCluster", fake)
    return seen


@pytest.mark.parametrize("host,dashboard,warns", [
    ("127.0.0.1", "127.0.0.1:8787", False),
    ("localhost", ":8787", False),
    ("0.0.0.0", "127.0.0.1:8787", True),
    ("127.0.0.1", "0.0.0.0:8787", True),
    ("10.0.0.5", "10.0.0.5:0", True),
])
def test_a_local_cluster_beyond_loopback_warns(no_local_cluster, monkeypatch, host, dashboard, warns):
    monkeypatch.setattr(cluster, "usable_cores", lambda: 6)
    cfg = ClusterConfig(host=host, dashboard_address=dashboard, threads_per_worker=2)
    with warnings.catch_warnings(record=True) as caught, pytest.raises(_Started):
        warnings.simplefilter("always")
        with get_client(cfg, announce=lambda m: None):
            pass
    said = [str(w.message) for w in caught if "listens beyond this machine" in str(w.message)]
    assert bool(said) is warns, said
    assert no_local_cluster["n_workers"] == 3 and no_local_cluster["host"] == host  # cores / threads


@pytest.mark.parametrize("address", ["tcp://127.0.0.1:notaport", "nonsense://x:1", "tcp://"])
def test_a_bad_scheduler_address_is_one_line(tmp_path, address):
    # A real process: a Client that failed to connect leaves its event loop behind, which
    # would slow the next cluster this process starts.
    mds = write_mds(tmp_path / "mds", [[1, 2, 3, 4]])
    r = run_cli("build", "--input", str(mds), "--work-dir", str(tmp_path / "w"), "--db", str(tmp_path / "c.duckdb"),
                "--steps", "explode,aggregate,load", "--scheduler", address)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"ngram-dask: error: cannot reach the Dask scheduler at {address}: ")
    assert not (tmp_path / "w").exists() and not (tmp_path / "c.duckdb").exists()


def test_check_workers_refuses_other_versions_and_no_workers(local_cluster):
    from distributed import Client, LocalCluster

    with Client(local_cluster) as client:
        check_workers(client, package_versions())  # the same environment: accepted
        theirs = package_versions()["numpy"]
        with pytest.raises(UserError) as info:
            check_workers(client, {**package_versions(), "numpy": "0.0.1"})
        assert str(info.value).endswith(f"runs numpy {theirs}, this client runs 0.0.1: "
                                        "install the same versions everywhere")
    with LocalCluster(n_workers=0, processes=False, dashboard_address=":0") as empty, Client(empty) as client:
        with pytest.raises(UserError, match="has no workers"):
            check_workers(client, package_versions())


def test_check_worker_access_names_what_a_worker_cannot_reach(local_cluster, tmp_path):
    from distributed import Client

    (tmp_path / "in").mkdir()
    (tmp_path / "work").mkdir()
    with Client(local_cluster) as client:
        check_worker_access(client, str(tmp_path / "in"), str(tmp_path / "work"))
        with pytest.raises(UserError, match="cannot see the input .* must be reachable by every worker"):
            check_worker_access(client, str(tmp_path / "nowhere"), str(tmp_path / "work"))


# --- SLURM and scheduler files (a real SLURM: tests/test_slurm.py) -------------------------

def test_the_slurm_job_script_carries_every_setting(tmp_path):
    """What dask-jobqueue would submit for ``cluster.slurm``: its own job script, not sbatch."""
    from dask_jobqueue import SLURMCluster

    from ngram_dask.cluster_slurm import cluster_kwargs, describe, expected_workers
    from ngram_dask.config import SlurmConfig

    cfg = SlurmConfig(jobs=3, cores=8, processes=4, memory="64GiB", walltime="02:00:00", partition="gpu",
                      account="proj", gres="gpu:4", local_directory="$TMPDIR", job_extra=["--qos=high"],
                      prologue=["module load cuda"], job_name="ngram-x", log_directory=str(tmp_path / "logs"))
    with SLURMCluster(**cluster_kwargs(cfg, worker_environ(), "127.0.0.1:0")) as slurm:
        script = slurm.job_script()
    lines = script.splitlines()
    for line in ["#SBATCH -J ngram-x", "#SBATCH -p gpu", "#SBATCH -A proj", "#SBATCH -n 1",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --mem=64G", "#SBATCH -t 02:00:00", "#SBATCH --gres=gpu:4",
                 "#SBATCH --qos=high", "export MALLOC_MMAP_THRESHOLD_=1073741824",
                 "export MALLOC_TRIM_THRESHOLD_=1073741824", "module load cuda"]:
        assert line in lines, (line, script)
    worker = lines[-1]
    for part in ["-m distributed.cli.dask_worker tcp://", "--nthreads 2", "--nworkers 4", "--memory-limit 16.00GiB",
                 "--death-timeout 60", "--local-directory $TMPDIR", "--resources GPU=1"]:
        assert part in worker, (part, worker)
    assert expected_workers(cfg) == 12
    assert describe(cfg) == "3 job(s) x 4 worker(s) x 2 thread(s), 64GiB per job, gres gpu:4, partition gpu"
    adaptive = SlurmConfig(min_jobs=2, max_jobs=5, processes=2, cores=2)
    assert expected_workers(adaptive) == 4  # adaptive: the minimum's workers
    assert describe(adaptive).startswith("2-5 (adaptive) job(s) x 2 worker(s) x 1 thread(s)")
    cpu = SlurmConfig(gres="tmpdisk:100")
    assert "--resources" not in cluster_kwargs(cpu, {}, ":0")["worker_extra_args"]


def test_the_tunnel_hint_names_the_dashboard_port_and_this_host():
    import getpass
    import socket

    from ngram_dask.cluster import tunnel_hint

    me = f"{getpass.getuser()}@{socket.gethostname()}"
    assert tunnel_hint("http://10.1.2.3:8790/status") == f"from your machine: ssh -N -L 8790:10.1.2.3:8790 {me}"
    assert tunnel_hint("") == ""


@pytest.mark.slow
def test_a_build_waits_for_a_scheduler_file_and_its_workers(tmp_path):
    """The batch pattern without SLURM: no file is one line; a scheduler without workers is one
    line after the timeout; with a worker, the build attaches and counts exactly."""
    import subprocess
    import sys
    from pathlib import Path

    from helpers import db_rows, oracle

    samples = [[1, 2, 3, 1, 2, 3, 4], [5, 1, 2, 3], [2, 3]]
    mds = write_mds(tmp_path / "mds", samples)
    sched_file = tmp_path / "scheduler.json"
    args = ["build", "--input", str(mds), "--work-dir", str(tmp_path / "w"), "--db", str(tmp_path / "c.duckdb"),
            "--steps", "explode,aggregate,load", "--chunks", "2", "--scheduler-file", str(sched_file)]

    r = run_cli(*args, "--wait-timeout", "1")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"ngram-dask: error: no Dask scheduler wrote {sched_file} within 1 s: start `dask scheduler "
        f"--scheduler-file {sched_file}` first (docs/clusters.md)"], r.stderr
    dask = str(Path(sys.executable).parent / "dask")
    procs = [subprocess.Popen([dask, "scheduler", "--scheduler-file", str(sched_file), "--host", "127.0.0.1",
                               "--dashboard-address", "127.0.0.1:0"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)]
    try:
        r = run_cli(*args, "--wait-timeout", "20")
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1, r.stderr
        assert lines[0].startswith("ngram-dask: error: 0 of 1 worker(s) up after 20 s: start `dask worker "
                                   f"--scheduler-file {sched_file}` on the nodes"), lines
        assert not (tmp_path / "w").exists() and not (tmp_path / "c.duckdb").exists()
        procs.append(subprocess.Popen([dask, "worker", "--scheduler-file", str(sched_file), "--nthreads", "1",
                                       "--memory-limit", "2GiB", "--host", "127.0.0.1"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        r = run_cli(*args, "--wait-timeout", "120")
        assert r.returncode == 0, r.stderr
        assert f"(from {sched_file}); dashboard: " in r.stdout
        got = {tuple(row[:-1]): row[-1] for row in db_rows(tmp_path / "c.duckdb", "SELECT * FROM trigrams")}
        assert got == dict(oracle(samples, 3))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(20)
