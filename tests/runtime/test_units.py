"""``runtime.resumable``: the completion-marker contract every stage's tasks rely on."""

from __future__ import annotations

import json

import pytest

from ngram_dask.runtime import resumable

CALLS: list[str] = []


def _marker(tmp, name):
    return str(tmp / "_done" / f"{name}.json")


@resumable(_marker)
def work(tmp, name):
    CALLS.append(name)
    (tmp / f"{name}.out").write_text("payload")
    return {"name": name, "rows": 3}


@resumable(_marker, accept=lambda done, tmp, name: done.get("version") == 2)
def versioned(tmp, name):
    CALLS.append(name)
    return {"name": name, "version": 2}


@resumable(_marker)
def failing(tmp, name):
    CALLS.append(name)
    raise OSError("disk on fire")


@pytest.fixture(autouse=True)
def _calls():
    CALLS.clear()


def test_runs_once_then_returns_the_recorded_statistics(tmp_path):
    first = work(tmp_path, "a")
    assert first["skipped"] is False and first["rows"] == 3 and first["seconds"] >= 0
    marker = json.loads((tmp_path / "_done" / "a.json").read_text())
    assert marker == {k: v for k, v in first.items() if k != "skipped"}  # "skipped" is never recorded
    again = work(tmp_path, "a")
    assert again == {**marker, "skipped": True}
    assert CALLS == ["a"]


def test_a_torn_marker_means_the_work_is_redone(tmp_path):
    work(tmp_path, "a")
    (tmp_path / "_done" / "a.json").write_text('{"name": "a", "ro')  # killed mid-write
    assert work(tmp_path, "a")["skipped"] is False
    assert CALLS == ["a", "a"]


def test_failed_work_leaves_no_marker(tmp_path):
    with pytest.raises(OSError, match="disk on fire"):
        failing(tmp_path, "b")
    assert not (tmp_path / "_done" / "b.json").exists()


def test_a_marker_of_other_settings_is_not_accepted(tmp_path):
    (tmp_path / "_done").mkdir()
    (tmp_path / "_done" / "c.json").write_text(json.dumps({"name": "c", "version": 1}))
    assert versioned(tmp_path, "c")["skipped"] is False  # version 1 rejected: redone
    assert versioned(tmp_path, "c")["skipped"] is True
    assert CALLS == ["c"]


def test_the_marker_url_is_reachable_from_the_task(tmp_path):
    assert work.marker(tmp_path, "z") == _marker(tmp_path, "z")
