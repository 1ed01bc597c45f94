"""Faults with real processes: killed workers and clients, a full disk, a second writer, spills."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import free_port

from ngram_dask.catalog.verify import verify
from ngram_dask.config import load_config
from ngram_dask.ngrams.pipeline import run_build

from helpers import run_cli, table_dump, write_mds

pytestmark = [pytest.mark.slow, pytest.mark.faults]

TABLES = ["bigrams", "bigram_prefixes", "trigrams", "trigram_prefixes"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """~1.2M tokens in 24 shards: enough work per stage to kill something in the middle."""
    tmp = tmp_path_factory.mktemp("fault-corpus")
    rng = np.random.default_rng(11)
    samples = [rng.zipf(1.3, 2048).clip(max=50000).tolist() for _ in range(600)]
    return write_mds(tmp / "mds", samples, size_limit=1 << 17)


@pytest.fixture(scope="module")
def clean_db(corpus, tmp_path_factory, local_cluster):
    tmp = tmp_path_factory.mktemp("clean")
    cfg = _cfg(tmp, corpus, local_cluster)
    run_build(cfg, announce=lambda m: None)
    return table_dump(cfg.db, TABLES)


def _cfg(tmp: Path, mds: Path, scheduler: str | None, **over):
    o = {"input": str(mds), "work_dir": str(tmp / "work"), "db": str(tmp / "catalog.duckdb"),
         "build.chunks": 16, "build.steps": "explode,aggregate,load", "cluster.scheduler": scheduler}
    o.update(over)
    return load_config(None, o)


def _cli_args(tmp: Path, mds: Path, *extra: str) -> list[str]:
    return ["build", "--input", str(mds), "--work-dir", str(tmp / "work"), "--db", str(tmp / "catalog.duckdb"),
            "--chunks", "16", "--steps", "explode,aggregate,load", *extra]


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("stage,marker_glob", [("explode", "explode/_done/*.json"),
                                                ("aggregate", "aggregate/n=*/_done/*.json")])
def test_worker_killed_mid_stage_build_still_exact(tmp_path, corpus, clean_db, start_dask_processes,
                                                   stage, marker_glob):
    procs = start_dask_processes(workers=2, nthreads=1)
    cfg = _cfg(tmp_path, corpus, procs.address)
    errors = []
    thread = threading.Thread(target=lambda: _capture(errors, run_build, cfg, lambda m: None))
    thread.start()
    work = tmp_path / "work"
    _wait_for(lambda: len(list(work.glob(marker_glob))) >= 1, 120, f"the first {stage} marker")
    total = 24 if stage == "explode" else 32
    done_at_kill = len(list(work.glob(marker_glob)))
    assert thread.is_alive() and done_at_kill < total, "the stage ended before the kill: make it longer"
    procs.workers[0].send_signal(signal.SIGKILL)
    procs.add_worker()
    thread.join(300)
    assert not thread.is_alive()
    assert not errors, errors
    assert table_dump(cfg.db, TABLES) == clean_db
    verify(cfg.db, announce=lambda m: None)


def test_worker_lost_inside_a_ranged_aggregate_then_rerun_is_exact(tmp_path, corpus, clean_db, local_cluster,
                                                                  start_dask_processes, monkeypatch):
    """A worker exits (as if killed) after key range 1 of chunk 5 of the trigrams, every time
    it is retried: the build fails, the chunk has no marker and no final file, and a rerun on
    a healthy cluster gives the clean database (nothing counted twice)."""
    import json

    monkeypatch.setenv("NGRAM_DASK_CRASH_IN_AGGREGATE", "3:5:1")
    procs = start_dask_processes(workers=1, nthreads=1)
    monkeypatch.delenv("NGRAM_DASK_CRASH_IN_AGGREGATE")
    over = {"build.aggregate_budget_bytes": 200_000, "build.block_rows": 256, "build.mark_rows": 256}
    from distributed import KilledWorker

    with pytest.raises(KilledWorker):
        run_build(_cfg(tmp_path, corpus, procs.address, **over), announce=lambda m: None)
    agg = tmp_path / "work" / "aggregate" / "n=3"
    assert not (agg / "_done" / "chunk=5.json").exists() and not (agg / "ngrams" / "chunk=5.parquet").exists()
    cfg = _cfg(tmp_path, corpus, local_cluster, **over)
    run_build(cfg, announce=lambda m: None)
    marker = json.loads((agg / "_done" / "chunk=5.json").read_text())
    assert marker["path"] == "numpy" and marker["ranges"] >= 3, marker
    assert table_dump(cfg.db, TABLES) == clean_db  # every row and count of a clean build


def _capture(errors, fn, *args):
    try:
        fn(*args)
    except BaseException as exc:  # surfaced by the test's assertion
        errors.append(exc)


@pytest.mark.parametrize("hook,point", [("NGRAM_DASK_CRASH_IN_LOAD", "3:5"), ("NGRAM_DASK_CRASH_AFTER_LOAD", "2:7")])
def test_client_killed_during_load_then_rerun(tmp_path, corpus, clean_db, local_cluster, hook, point):
    args = _cli_args(tmp_path, corpus, "--scheduler", local_cluster)
    r = run_cli(*args, env={hook: point})
    assert r.returncode == 86, (r.stdout, r.stderr)  # the hook's os._exit: killed mid-load
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    assert table_dump(tmp_path / "catalog.duckdb", TABLES) == clean_db
    r = run_cli(*args)
    assert r.returncode == 0 and "nothing to do" in r.stdout


def test_second_build_on_the_same_database_is_refused(tmp_path, corpus, local_cluster):
    args = [sys.executable, "-m", "ngram_dask.cli", *_cli_args(tmp_path, corpus, "--scheduler", local_cluster)]
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = tmp_path / "catalog.duckdb.lock"
    _wait_for(lambda: lock.exists() and lock.read_text().strip() == f"{first.pid} build", 60, "the first build's lock")
    second = run_cli(*_cli_args(tmp_path, corpus, "--scheduler", local_cluster))
    assert first.poll() is None, "the first build ended before the second was tried"
    assert second.returncode == 2
    assert second.stderr.strip() == (f"ngram-dask: error: ngram-dask build (pid {first.pid}) is "
                                     f"writing {tmp_path / 'catalog.duckdb'}; wait for it to finish")
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    verify(str(tmp_path / "catalog.duckdb"), announce=lambda m: None)


@pytest.fixture
def small_disk(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    mnt = tmp_path / "small disk"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_work_dir_is_a_clear_error_and_a_rerun_completes(tmp_path, corpus, clean_db, local_cluster,
                                                             small_disk):
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (15_700 * 1024))  # leaves ~300 KiB: explode needs ~8 MiB
    db = tmp_path / "catalog.duckdb"
    args = ["build", "--input", str(corpus), "--work-dir", str(small_disk / "work"), "--db", str(db),
            "--chunks", "16", "--steps", "explode,aggregate,load", "--scheduler", local_cluster]
    r = run_cli(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    line = r.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert f"out of disk space in the work dir {small_disk / 'work'}" in line
    assert "MiB more needed" in line
    assert not db.exists()
    filler.unlink()
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    assert table_dump(db, TABLES) == clean_db


def test_dashboard_answers_during_a_build(tmp_path, corpus):
    port = free_port()
    args = [sys.executable, "-m", "ngram_dask.cli",
            *_cli_args(tmp_path, corpus, "--n-workers", "1", "--dashboard-address", f"127.0.0.1:{port}")]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    status, body = None, ""
    try:
        while proc.poll() is None and status is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2) as resp:
                    status, body = resp.status, resp.read().decode(errors="replace")
            except OSError:
                time.sleep(0.1)
    finally:
        out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert status == 200
    assert "bokeh" in body.lower(), "the page is not the Bokeh dashboard (is bokeh installed?)"
    assert f"dashboard: http://127.0.0.1:{port}/status" in out


def test_performance_report_is_written(tmp_path, corpus, local_cluster):
    report = tmp_path / "perf.html"
    r = run_cli(*_cli_args(tmp_path, corpus, "--scheduler", local_cluster, "--performance-report", str(report)))
    assert r.returncode == 0, r.stderr
    assert report.stat().st_size > 10_000
    html = report.read_text(errors="replace")
    # the task stream names both stages: the bag's explode tasks and the DataFrame's
    # map_partitions over id0 chunks
    assert "explode_group" in html and "id0_chunks-aggregate_partition" in html


def test_quiet_and_verbose(tmp_path, corpus, local_cluster):
    args = _cli_args(tmp_path / "q", corpus, "--scheduler", local_cluster)
    quiet = run_cli(*args, "--quiet")
    assert quiet.returncode == 0 and quiet.stdout == "" and quiet.stderr == ""
    plain = run_cli(*args)  # the rerun: every stage is done
    assert plain.returncode == 0 and "nothing to do" in plain.stdout and plain.stderr == ""
    # -vv adds the libraries' logs (timestamped, on stderr) and changes nothing else. (-v adds
    # ngram-dask's own INFO lines, but the client of an attached cluster logs none.)
    loud = run_cli(*args, "-vv")
    assert loud.returncode == 0 and loud.stdout.splitlines()[:2] == plain.stdout.splitlines()[:2]
    stamped = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ \S+ DEBUG "
    assert any(re.match(stamped, line) for line in loud.stderr.splitlines()), loud.stderr[-2000:]


def test_small_worker_memory_makes_duckdb_spill_with_the_same_result(tmp_path, local_cluster):
    """A DuckDB limit far below the chunk's size: it spills to --spill-dir and the result is exact."""
    import json

    rng = np.random.default_rng(12)
    samples = [rng.integers(0, 65536, 2048).tolist() for _ in range(3000)]  # ~6M distinct trigrams
    mds = write_mds(tmp_path / "mds", samples, size_limit=1 << 20)
    config = tmp_path / "small.yaml"
    config.write_text("vocab_size: 65536\nbuild:\n  chunks: 1\n  ngrams: [2, 3]\n"
                      "  duckdb_memory_fraction: 0.1\n  aggregate_method: duckdb\n")
    spill = tmp_path / "spill here"
    r = run_cli("build", "--config", str(config), "--input", str(mds), "--work-dir", str(tmp_path / "w1"),
                "--db", str(tmp_path / "spilled.duckdb"), "--steps", "explode,aggregate,load",
                "--n-workers", "1", "--memory-limit", "1GiB", "--spill-dir", str(spill))
    assert r.returncode == 0, r.stderr
    marker = json.loads((tmp_path / "w1" / "aggregate" / "n=3" / "_done" / "chunk=0.json").read_text())
    assert marker["path"] == "duckdb" and marker["spilled_bytes"] > 0, marker
    assert spill.is_dir() and not any(spill.iterdir())  # spill files are removed afterwards
    r = run_cli("build", "--config", str(config), "--input", str(mds), "--work-dir", str(tmp_path / "w2"),
                "--db", str(tmp_path / "inmemory.duckdb"), "--steps", "explode,aggregate,load",
                "--aggregate-method", "numpy", "--scheduler", local_cluster)
    assert r.returncode == 0, r.stderr
    assert table_dump(tmp_path / "spilled.duckdb", TABLES) == table_dump(tmp_path / "inmemory.duckdb", TABLES)
    verify(str(tmp_path / "spilled.duckdb"), announce=lambda m: None)
