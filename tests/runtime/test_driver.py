"""``runtime.driver``: gathering real Dask tasks, progress lines, one-line errors."""

from __future__ import annotations

import errno
import time

import pytest
from distributed import Client

from ngram_dask.errors import BadInputError, WorkDirError
from ngram_dask.runtime import DiskFull, Progress, as_finished


def square(x):
    return x * x


def fail_on(x, bad, error):
    if x == bad:
        raise error
    time.sleep(0.05)
    return x


class FakeClock:
    """``time.perf_counter`` that moves only when told to."""

    def __init__(self, now: float = 0.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_progress_prints_at_most_every_interval_and_at_the_end(monkeypatch):
    from ngram_dask.runtime import driver

    clock = FakeClock(0.0)  # a clock that starts at 0 (a machine just booted): the first step still prints
    monkeypatch.setattr(driver.time, "perf_counter", clock)
    lines: list[str] = []
    p = Progress("explode", 4, "tasks", lines.append, interval=2.0)
    clock.now = 0.5
    p.step(tokens=2_000_000)
    assert lines == ["  explode: 1/4 tasks, 4.00M tokens/s"]  # 2M tokens in 0.5 s
    clock.now = 2.0
    p.step(tokens=2_000_000)  # 1.5 s after the last line: inside the interval
    assert len(lines) == 1
    clock.now = 2.5
    p.step(tokens=2_000_000)  # 2 s after the last line: a line
    assert lines[-1] == "  explode: 3/4 tasks, 2.40M tokens/s"
    clock.now = 2.6
    p.step(tokens=2_000_000)  # the end: always a line
    assert lines[-1] == "  explode: 4/4 tasks, 3.08M tokens/s" and len(lines) == 3
    assert p.seconds == 2.6
    plain: list[str] = []
    Progress("load", 2, "chunks", plain.append).step(2)
    assert plain == ["  load: 2/2 chunks"]  # no tokens: no rate


def test_as_finished_gathers_every_result(local_cluster):
    with Client(local_cluster) as client:
        got = sorted(r for _, r in as_finished(client.map(square, range(10)), DiskFull("nowhere")))
    assert got == [x * x for x in range(10)]


def test_a_full_disk_becomes_one_line_naming_where_and_how_far_the_step_came(local_cluster):
    full = OSError(errno.ENOSPC, "No space left on device")
    progress = Progress("explode", 4, "units", lambda line: None)
    progress.done = 1
    disk = DiskFull("the work dir /data/work", advice="free space (or use a larger --work-dir)",
                    hint=lambda done, total: f" (free 0.0 MiB, {done} of {total} units done)").at(progress)
    with Client(local_cluster) as client, pytest.raises(WorkDirError) as info:
        list(as_finished(client.map(fail_on, range(4), bad=2, error=full, pure=False), disk))
    assert str(info.value) == ("out of disk space in the work dir /data/work (free 0.0 MiB, 1 of 4 units done); "
                               "free space (or use a larger --work-dir) and rerun: finished work is kept")


def test_a_task_user_error_comes_back_as_itself_and_the_rest_are_cancelled(local_cluster):
    with Client(local_cluster) as client:
        futures = client.map(fail_on, range(20), bad=0, error=BadInputError("shard 0 is broken"), pure=False)
        with pytest.raises(BadInputError, match="shard 0 is broken"):
            for _ in as_finished(futures, DiskFull("nowhere")):
                pass
        # Cancelling is asynchronous: wait (bounded) for every future to settle, not a fixed time.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(f.status in ("cancelled", "finished", "error")
                                                      for f in futures):
            time.sleep(0.05)
        assert all(f.status in ("cancelled", "finished", "error") for f in futures)
        assert any(f.status == "cancelled" for f in futures)


def test_workers_lists_every_worker_not_the_first_few():
    from distributed import LocalCluster

    from ngram_dask.runtime import scheduler_workers

    with LocalCluster(n_workers=7, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        client.wait_for_workers(7)
        assert set(scheduler_workers(client)) == set(cluster.scheduler.workers) and len(cluster.scheduler.workers) == 7
