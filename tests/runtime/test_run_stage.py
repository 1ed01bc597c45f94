"""``runtime.run_stage`` and ``Manifest`` on their own: a toy stage on a real LocalCluster.

The stages (build, contexts, convert, score, scan) are tested whole elsewhere; here the
runtime's own promises: what is checked before any work, that the cluster starts only
when a unit is left, that the manifest is claimed before the first unit runs, that done
units are skipped with their recorded statistics, that the report is filled in, and
that the database has one writer.
"""

from __future__ import annotations

import json
import os

import pytest

from ngram_dask.config import load_config
from ngram_dask.errors import DatabaseError, WorkDirError
from ngram_dask.runtime import Manifest, Stage, Step, resumable, run_stage

UNREACHABLE = "tcp://127.0.0.1:9"  # the discard port: a stage that tries to start its cluster fails


def _marker(unit: int, out: str) -> str:
    return os.path.join(out, "_done", f"{unit}.json")


@resumable(_marker)
def square(unit: int, out: str) -> dict:
    """A unit that says whether the manifest was there when it ran."""
    manifest_seen = os.path.exists(os.path.join(out, "manifest.json"))
    with open(os.path.join(out, f"{unit}.out"), "w") as f:
        f.write(str(unit * unit))
    return {"unit": unit, "square": unit * unit, "manifest_seen": manifest_seen}


def _cfg(scheduler: str):
    return load_config(None, {"cluster.scheduler": scheduler})


def _toy(out: str, units, seen: list, **step) -> Stage:
    def steps(ctx):
        yield Step("square", units, square, kwargs={"out": out}, counts="numbers",
                   on_result=lambda stats, ctx: seen.append((stats["unit"], stats["skipped"])), **step)

    return Stage(steps, manifest=Manifest(os.path.join(out, "manifest.json"), {"input": "numbers"}, f"dir {out}"))


def test_units_run_once_and_a_rerun_starts_no_cluster(tmp_path, local_cluster):
    out = str(tmp_path)
    seen: list = []
    report = run_stage(_cfg(local_cluster), "toy", lambda info: _toy(out, [1, 2, 3], seen), lambda line: None)
    assert sorted(seen) == [(1, False), (2, False), (3, False)]
    assert report.units == {"square": 3} and report.skipped == {"square": 0} and report.seconds["square"] > 0
    assert report.dashboard  # a cluster ran
    for unit in (1, 2, 3):
        recorded = json.loads((tmp_path / "_done" / f"{unit}.json").read_text())
        assert recorded["square"] == unit * unit
        assert recorded["manifest_seen"], "the manifest is claimed before the first unit runs"
    # Every unit done: nothing is submitted, so an unreachable scheduler is never contacted.
    seen.clear()
    again = run_stage(_cfg(UNREACHABLE), "toy", lambda info: _toy(out, [1, 2, 3], seen), lambda line: None)
    assert seen == [(1, True), (2, True), (3, True)]  # recorded results, in unit order
    assert again.skipped == {"square": 3} and again.ran("square") == 0
    assert "square" not in again.seconds and again.dashboard is None


def test_only_the_missing_units_run_and_recorded_ones_come_first(tmp_path, local_cluster):
    out = str(tmp_path)
    run_stage(_cfg(local_cluster), "toy", lambda info: _toy(out, [1, 2], []), lambda line: None)
    seen: list = []
    report = run_stage(_cfg(local_cluster), "toy", lambda info: _toy(out, [1, 2, 3, 4], seen), lambda line: None)
    assert seen[:2] == [(1, True), (2, True)] and sorted(seen[2:]) == [(3, False), (4, False)]
    assert report.units == {"square": 4} and report.skipped == {"square": 2} and report.ran("square") == 2


def test_select_runs_only_the_chosen_units_and_reports_every_recorded_one(tmp_path, local_cluster):
    out = str(tmp_path)
    run_stage(_cfg(local_cluster), "toy", lambda info: _toy(out, [1, 2], []), lambda line: None)
    seen: list = []
    report = run_stage(_cfg(local_cluster), "toy",
                       lambda info: _toy(out, [1, 2, 3, 4, 5], seen, select=lambda u: u in (2, 3)), lambda line: None)
    # 1 was done by an earlier run (reported), 2 too, 3 runs now, 4 and 5 are neither chosen nor done.
    assert sorted(seen) == [(1, True), (2, True), (3, False)]
    assert not (tmp_path / "4.out").exists() and not (tmp_path / "5.out").exists()
    assert report.units == {"square": 2} and report.skipped == {"square": 1}


def test_a_step_that_may_not_run_names_its_missing_unit(tmp_path):
    out = str(tmp_path)
    with pytest.raises(WorkDirError, match="number 7 was never squared"):
        run_stage(_cfg(UNREACHABLE), "toy",
                  lambda info: _toy(out, [7], [], run=False, not_run=lambda u: f"number {u} was never squared"),
                  lambda line: None)


def test_a_work_dir_of_other_settings_is_refused_before_any_work(tmp_path):
    out = str(tmp_path)
    Manifest(os.path.join(out, "manifest.json"), {"input": "letters"}, f"dir {out}").claim()
    declared = []

    def declare(info):
        declared.append(True)
        return _toy(out, [1], [])

    with pytest.raises(WorkDirError, match=f"dir {out} holds results for different input; use a fresh --work-dir"):
        run_stage(_cfg(UNREACHABLE), "toy", declare, lambda line: None)
    assert declared and not (tmp_path / "_done").exists()
    assert json.loads((tmp_path / "manifest.json").read_text()) == {"input": "letters"}  # untouched


def test_a_stage_that_needs_a_database_refuses_a_missing_one_before_declaring(tmp_path):
    db = str(tmp_path / "missing.duckdb")
    cfg = load_config(None, {"db": db, "cluster.scheduler": UNREACHABLE})
    with pytest.raises(DatabaseError, match=f"database {db} does not exist: run the build first"):
        run_stage(cfg, "toy", lambda info: pytest.fail("declared"), lambda line: None, needs_db="run the build first")
    assert not os.path.exists(db)


def test_the_database_has_one_writer_while_a_stage_runs(tmp_path):
    db = str(tmp_path / "c.duckdb")
    cfg = load_config(None, {"db": db, "cluster.scheduler": UNREACHABLE})
    inner: list = []

    def outer_steps(ctx):
        # (the connection is not opened: in one process DuckDB itself refuses a second one)
        with pytest.raises(DatabaseError, match=rf"ngram-dask outer \(pid {os.getpid()}\) is writing"):
            run_stage(cfg, "inner", lambda info: Stage(lambda c: inner.append(1) or (), db=db), lambda line: None)
        return ()

    run_stage(cfg, "outer", lambda info: Stage(outer_steps, db=db), lambda line: None)
    assert inner == []  # refused before its steps
    # released when the stage ended: the next stage writes
    def write(ctx):
        ctx.db().execute("CREATE TABLE t AS SELECT 1 AS x")
        inner.append(1)
        return ()

    run_stage(cfg, "inner", lambda info: Stage(write, db=db), lambda line: None)
    assert inner == [1]


def test_manifest_claims_once_prepares_a_new_dir_first_and_refuses_what_it_did_not_write(tmp_path):
    url = str(tmp_path / "m" / "manifest.json")
    prepared: list = []

    def prepare():
        assert not os.path.exists(url), "the identity is written after what it promises"
        prepared.append(1)

    m = Manifest(url, {"input": "a", "k": 4}, "dir m", describe={"k": lambda old, new: f"K ({old}, not {new})"},
                 prepare=prepare)
    assert m.check() is None
    m.claim()
    m.claim()
    assert prepared == [1] and json.loads(open(url).read()) == {"input": "a", "k": 4}
    other = Manifest(url, {"input": "a", "k": 8}, "dir m", describe={"k": lambda old, new: f"K ({old}, not {new})"})
    with pytest.raises(WorkDirError, match=r"dir m holds results for different K \(4, not 8\)"):
        other.check()
    # A recorded identity that binds nothing (no finished unit) is replaced, not refused.
    loose = Manifest(url, {"input": "b"}, "dir m", binds=lambda: False)
    loose.claim()
    assert json.loads(open(url).read()) == {"input": "b"}
    # A dir without a manifest that holds something else is refused, and left as it was.
    alien = tmp_path / "alien"
    alien.mkdir()
    (alien / "index.json").write_text("{}")
    foreign = Manifest(str(alien / "manifest.json"), {"input": "a"}, "dir alien",
                       foreign=lambda: "dir alien holds a dataset this tool did not write"
                       if (alien / "index.json").exists() else None)
    with pytest.raises(WorkDirError, match="did not write"):
        foreign.claim()
    assert sorted(os.listdir(alien)) == ["index.json"]
    # A torn manifest reads as missing (a new dir), as torn markers do.
    torn = tmp_path / "torn.json"
    torn.write_text('{"input": ')
    assert Manifest(str(torn), {"input": "a"}, "dir t").check() is None
