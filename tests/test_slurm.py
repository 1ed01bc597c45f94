"""Builds on a real SLURM (one node on this machine, ``slurm_local``): worker jobs through
``--slurm``, a worker job cancelled mid-explode, the sbatch + scheduler-file pattern of
docs/clusters.md, and the failures a SLURM user meets first (a wrong partition, a job
that never starts) as one line each.

Skipped, with the reason, where SLURM cannot run (not root, packages missing).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import slurm_local
from helpers import REPO, db_rows, oracle, read_index, run_cli, table_dump, write_mds

pytestmark = [pytest.mark.slow, pytest.mark.faults]

if slurm_local.why_not():
    pytest.skip(f"no local SLURM: {slurm_local.why_not()}", allow_module_level=True)

SAMPLES = 240
DOCS_SCRIPT = REPO / "docs" / "clusters.md"


@pytest.fixture(scope="module")
def slurm():
    cluster = slurm_local.LocalSlurm().start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Many small shards, each its own explode unit, so a build has units to lose."""
    rng = np.random.default_rng(32)
    samples = [rng.zipf(1.3, int(rng.integers(20, 400))).clip(max=50000).tolist() for _ in range(SAMPLES)]
    mds = write_mds(tmp_path_factory.mktemp("slurm-corpus") / "mds", samples, size_limit=1 << 12)
    return mds, samples


def _args(mds: Path, tmp: Path, tokenizer: str, *extra: str) -> list[str]:
    return ["build", "--input", str(mds), "--work-dir", str(tmp / "work"), "--db", str(tmp / "c.duckdb"),
            "--tokenizer", tokenizer, "--chunks", "4", "--explode-unit-tokens", "1", *extra]


def _slurm_args(tmp: Path, name: str, *extra: str, jobs: tuple[str, ...] = ("--slurm-jobs", "2")) -> list[str]:
    return ["--slurm", *jobs, "--slurm-cores", "1", "--slurm-memory", "2GiB",
            "--slurm-walltime", "00:20:00", "--slurm-job-name", name,
            "--slurm-log-directory", str(tmp / "jobs"), "--wait-timeout", "120", *extra]


WITH_CONTEXTS = ("--contexts",)
BUILD_TABLES = {"bigrams", "bigram_prefixes", "trigrams", "trigram_prefixes", "tokens", "top_bigrams",
                "top_trigrams"}


def _tables(db: Path) -> dict:
    # catalog_info and load_ledger record when and where the build ran, not what it found
    names = [t for (t,) in db_rows(db, "SELECT table_name FROM information_schema.tables")
             if t not in ("catalog_info", "load_ledger")]
    return table_dump(db, sorted(names))


def _same_as_local(db: Path, local_build: dict) -> None:
    """Every table of ``db`` equals the LocalCluster build's, and the catalog's are all there."""
    got = _tables(db)
    assert BUILD_TABLES <= set(got)
    assert got == {name: local_build[name] for name in got}


@pytest.fixture(scope="module")
def local_build(corpus, tmp_path_factory, local_cluster, neox_tokenizer_path):
    """The same build on the session's LocalCluster, checked against the brute-force oracle."""
    mds, samples = corpus
    tmp = tmp_path_factory.mktemp("slurm-local-build")
    r = run_cli(*_args(mds, tmp, neox_tokenizer_path, "--scheduler", local_cluster, *WITH_CONTEXTS))
    assert r.returncode == 0, r.stderr
    tables = _tables(tmp / "c.duckdb")
    for n, table in ((2, "bigrams"), (3, "trigrams")):
        got = Counter({tuple(row[:-1]): row[-1] for row in tables[table]})
        assert got == oracle(samples, n)
    assert BUILD_TABLES | {"contexts"} <= set(tables) and tables["contexts"]
    return tables


def _one_error_line(r: subprocess.CompletedProcess) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, (r.returncode, r.stderr[-3000:])
    assert lines[0].startswith("ngram-dask: error: ")
    return lines[0]


def _no_jobs_left(slurm, name: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while slurm.jobs(name) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert slurm.jobs(name) == [], f"jobs {name} were not cancelled"


def test_a_slurm_build_equals_the_local_build_table_for_table(slurm, corpus, local_build, tmp_path,
                                                              neox_tokenizer_path):
    mds, _ = corpus
    # two stages, build and contexts, each on its own worker jobs
    r = run_cli(*_args(mds, tmp_path, neox_tokenizer_path, *WITH_CONTEXTS), *_slurm_args(tmp_path, "ngram-equal"),
                env=slurm.env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:] + slurm.logs()
    assert r.stdout.count("SLURM: 2 job(s)") == 2
    assert "SLURM: 2 job(s) x 1 worker(s) x 1 thread(s), 2GiB per job, the default partition; dashboard: " \
        in r.stdout
    # the dashboard listens on this machine's loopback (cluster.dashboard_address): so do the link and the tunnel
    assert re.search(r"dashboard: http://127\.0\.0\.1:(\d+)/status\n  from your machine: "
                     r"ssh -N -L \1:127\.0\.0\.1:\1 \S+@\S+\n", r.stdout), r.stdout
    assert _tables(tmp_path / "c.duckdb") == local_build
    assert len(list((tmp_path / "jobs").glob("ngram-equal-*.err"))) == 4  # each job's log
    _no_jobs_left(slurm, "ngram-equal")


def test_a_worker_job_cancelled_mid_explode_still_gives_the_exact_catalog(slurm, corpus, local_build, tmp_path,
                                                                         neox_tokenizer_path):
    mds, _ = corpus
    units = len(read_index(mds)["shards"])
    argv = [sys.executable, "-m", "ngram_dask.cli", *_args(mds, tmp_path, neox_tokenizer_path),
            *_slurm_args(tmp_path, "ngram-cancel")]
    proc = subprocess.Popen(argv, env=slurm.env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        done = tmp_path / "work" / "explode" / "_done"
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if done.is_dir() and len(list(done.iterdir())) >= 2:
                break
            time.sleep(0.1)
        jobs = slurm.jobs("ngram-cancel")
        at_cancel = len(list(done.iterdir())) if done.is_dir() else 0
        assert len(jobs) == 2 and all(j["state"] == "RUNNING" for j in jobs), jobs
        slurm.run("scancel", jobs[0]["id"])
        assert at_cancel < units, f"the explode ended ({at_cancel} of {units} units) before the cancel"
        out, err = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-3000:]
    assert "warning: 1 worker(s) were lost during the build; their tasks were re-run" in out
    _same_as_local(tmp_path / "c.duckdb", local_build)
    _no_jobs_left(slurm, "ngram-cancel")


def test_an_adaptive_slurm_build_gives_the_exact_catalog(slurm, corpus, local_build, tmp_path, neox_tokenizer_path):
    mds, _ = corpus
    adaptive = ("--slurm-min-jobs", "1", "--slurm-max-jobs", "2")
    r = run_cli(*_args(mds, tmp_path, neox_tokenizer_path), *_slurm_args(tmp_path, "ngram-adapt", jobs=adaptive),
                env=slurm.env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:] + slurm.logs()
    assert "SLURM: 1-2 (adaptive) job(s) x 1 worker(s) x 1 thread(s)" in r.stdout
    assert "were lost" not in r.stdout, r.stdout  # workers adaptive scaling retired were not lost
    _same_as_local(tmp_path / "c.duckdb", local_build)
    _no_jobs_left(slurm, "ngram-adapt")


def _docs_sbatch_script() -> str:
    """The complete sbatch script of docs/clusters.md, as a user copies it."""
    blocks = re.findall(r"```bash\n(.*?)```", DOCS_SCRIPT.read_text(), re.S)
    scripts = [b for b in blocks if b.startswith("#!/usr/bin/env bash\n#SBATCH")]
    assert len(scripts) == 1, "docs/clusters.md has one complete sbatch script"
    return scripts[0]


def test_the_sbatch_script_of_the_docs_builds_on_a_scheduler_file(slurm, corpus, local_build, tmp_path,
                                                                  neox_tokenizer_path):
    mds, _ = corpus
    script = tmp_path / "build.sbatch"
    script.write_text(_docs_sbatch_script())
    # `ngram-dask` and `dask` as the docs call them: this checkout's CLI, this venv's dask
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "ngram-dask").write_text(f'#!/bin/sh\nexec {sys.executable} -m ngram_dask.cli "$@"\n')
    (bindir / "ngram-dask").chmod(0o755)
    env = {**slurm.env, "PATH": f"{bindir}:{Path(sys.executable).parent}:{os.environ['PATH']}",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "INPUT": str(mds), "WORK_DIR": str(tmp_path / "work"), "DB": str(tmp_path / "c.duckdb"),
           "TOKENIZER": neox_tokenizer_path}
    # the docs size a job for the Pile; here: one node, its 2 CPUs, a little memory, and
    # this test's build options through NGRAM_DASK_ARGS
    env["NGRAM_DASK_ARGS"] = "--chunks 4 --explode-unit-tokens 1"
    r = subprocess.run(["sbatch", "--wait", "--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1", "--mem=3G",
                        "--time=00:20:00", f"--output={tmp_path}/job-%j.out", str(script)],
                       env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    outs = "\n".join(p.read_text()[-3000:] for p in tmp_path.glob("job-*.out"))
    assert r.returncode == 0, r.stderr + outs + slurm.logs()
    assert "attached to tcp://" in outs and "(from " in outs
    _same_as_local(tmp_path / "c.duckdb", local_build)


def test_a_partition_that_does_not_exist_is_one_line(slurm, corpus, tmp_path, neox_tokenizer_path):
    mds, _ = corpus
    r = run_cli(*_args(mds, tmp_path, neox_tokenizer_path),
                *_slurm_args(tmp_path, "ngram-nopart", "--slurm-partition", "nowhere"), env=slurm.env, cwd=tmp_path)
    line = _one_error_line(r)
    assert line == ("ngram-dask: error: SLURM refuses the worker job (2 job(s) x 1 worker(s) x 1 thread(s), "
                    "2GiB per job, partition nowhere): Invalid partition name specified"), line
    assert not (tmp_path / "work").exists() and not (tmp_path / "c.duckdb").exists()
    assert slurm.jobs("ngram-nopart") == []


def test_a_job_pending_past_the_timeout_is_one_line_and_cancelled(slurm, corpus, tmp_path, neox_tokenizer_path):
    mds, _ = corpus
    r = run_cli(*_args(mds, tmp_path, neox_tokenizer_path),
                *_slurm_args(tmp_path, "ngram-pending", "--slurm-partition", "down", "--wait-timeout", "4"),
                env=slurm.env, cwd=tmp_path)
    line = _one_error_line(r)
    assert line == ("ngram-dask: error: 0 of 2 worker(s) up after 4 s: SLURM jobs: 2 PENDING in partition down "
                    "(PartitionDown); wait longer (--wait-timeout), start with fewer (--wait-workers) or ask another "
                    "partition (--slurm-partition)"), line
    assert not (tmp_path / "work").exists() and not (tmp_path / "c.duckdb").exists()
    _no_jobs_left(slurm, "ngram-pending")
