"""``runtime.driver``: gathering real Dask tasks, progress lines, one-line errors."""

from __future__ import annotations

import errno
import time

import pytest
from distributed import Client

from ngram_dask.errors import BadInputError, WorkDirError
from ngram_dask.runtime import DiskFull, Progress, as_finished, map_tasks


def square(x):
    return x * x


def fail_on(x, bad, error):
    if x == bad:
        raise error
    time.sleep(0.05)
    return x


def test_progress_prints_at_most_every_interval_and_at_the_end():
    lines: list[str] = []
    p = Progress("explode", 3, "tasks", lines.append, interval=3600)
    p.step(tokens=2_000_000)
    p.step(tokens=2_000_000)
    assert len(lines) == 1  # the first step prints; the next is inside the interval
    p.step(tokens=2_000_000)
    assert len(lines) == 2 and lines[-1].startswith("  explode: 3/3 tasks, ") and lines[-1].endswith("M tokens/s")
    rows: list[str] = []
    r = Progress("p_70m", 5_000, "rows", rows.append, interval=3600, show_rate=True)
    r.step(5_000)
    assert rows[-1].startswith("  p_70m: 5,000/5,000 rows, ") and rows[-1].endswith(" rows/s")


def test_map_tasks_gathers_every_result(local_cluster):
    with Client(local_cluster) as client:
        got = sorted(map_tasks(client, square, range(10), DiskFull("nowhere")))
    assert got == [x * x for x in range(10)]


def test_a_full_disk_becomes_one_line_naming_where(local_cluster):
    full = OSError(errno.ENOSPC, "No space left on device")
    disk = DiskFull("the work dir /data/work", advice="free space (or use a larger --work-dir)",
                    hint=lambda: " (free 0.0 MiB)")
    with Client(local_cluster) as client, pytest.raises(WorkDirError) as info:
        list(map_tasks(client, fail_on, range(4), disk, bad=2, error=full))
    assert str(info.value) == ("out of disk space in the work dir /data/work (free 0.0 MiB); free space "
                               "(or use a larger --work-dir) and rerun: finished work is kept")


def test_a_task_user_error_comes_back_as_itself_and_the_rest_are_cancelled(local_cluster):
    with Client(local_cluster) as client:
        futures = client.map(fail_on, range(20), bad=0, error=BadInputError("shard 0 is broken"), pure=False)
        with pytest.raises(BadInputError, match="shard 0 is broken"):
            for _ in as_finished(futures, DiskFull("nowhere")):
                pass
        time.sleep(0.5)
        assert all(f.status in ("cancelled", "finished", "error") for f in futures)
        assert any(f.status == "cancelled" for f in futures)
