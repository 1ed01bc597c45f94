"""Resumable units: completion markers handled once, here, never in the work itself.

A unit of work (run as one Dask task) writes its outputs under deterministic names (a
retried unit overwrites its own files), then ``resumable`` writes a small JSON marker
with the unit's statistics, last. A rerun finds the marker and returns those statistics without
redoing the work, so a build killed at any point resumes where it stopped and never
counts a unit twice. A torn marker reads as missing: the unit is redone.

A unit may complete other units on the way (the aggregate of the trigrams of a chunk
writes the chunk's bigrams too): it returns their statistics under ``"also"``
(``{marker URL: stats}``); their markers are written before its own, so a unit whose
marker exists has all of them, and a skipped unit returns them again under ``"also"``.

Every marker returned carries ``skipped``: True when it came from an earlier run.
"""

from __future__ import annotations

import functools
import threading
import time
from typing import Any, Callable

import numpy as np

from ngram_dask.errors import WorkDirError
from ngram_dask.storage import read_marker, write_marker

Stats = dict[str, Any]
ALSO = "also"


def resumable(marker: Callable[..., str], accept: Callable[..., bool] | None = None):
    """Decorate ``work(*args) -> stats`` into a unit's task that runs at most once per marker.

    ``marker(*args)`` is the URL of the unit's completion marker. ``accept(marker,
    *args)``, when given, may reject a marker left by other settings (the unit is then
    redone). The wrapper adds ``seconds`` (wall time of the work) unless the work set it.
    """

    def decorate(work: Callable[..., Stats]) -> Callable[..., Stats]:
        @functools.wraps(work)
        def run(*args, **kwargs) -> Stats:
            done = completed(run, *args, **kwargs)
            if done is not None:
                return done
            t0 = time.perf_counter()
            stats = work(*args, **kwargs)
            stats.setdefault("seconds", round(time.perf_counter() - t0, 4))
            also = stats.pop(ALSO, {})
            for url, extra in also.items():
                write_marker(url, extra)
            if also:
                stats[ALSO] = list(also)  # in the order the work gave them
            write_marker(marker(*args, **kwargs), stats)  # last: from here on the unit counts as done
            if also:
                stats[ALSO] = {u: {**s, "skipped": False} for u, s in also.items()}
            return {**stats, "skipped": False}

        run.marker = marker
        run.accept = accept
        return run

    return decorate


def completed(task: Callable[..., Stats], *args, **kwargs) -> Stats | None:
    """The recorded statistics of ``task(*args)`` if an earlier run finished it, else None."""
    url = task.marker(*args, **kwargs)
    done = read_marker(url)
    if done is None or (task.accept is not None and not task.accept(done, *args, **kwargs)):
        return None
    if ALSO not in done:
        return {**done, "skipped": True}
    also = {}
    for extra in done[ALSO]:
        got = read_marker(extra)
        if got is None:  # deleted by hand: the unit must be redone to write it again
            raise WorkDirError(f"{extra} is missing although {url} says it was written; delete {url} and rerun")
        also[extra] = {**got, "skipped": True}
    return {**done, ALSO: also, "skipped": True}


# Buffers kept per worker thread between the tasks of one step: a fresh 270 MB array per
# task cost ~0.5 s of page faults (as long as filling it), more under Dask's
# MALLOC_TRIM_THRESHOLD_, which hands freed memory straight back to the kernel. The step's
# end releases them (``release_thread_buffers``): the explode's keys buffer (8 B a token
# of a unit, 640 MB at 80M tokens) held on into the aggregate put a 4 GiB worker at 3.0 GiB.
_buffers: dict[tuple[int, str], np.ndarray] = {}
_buffers_lock = threading.Lock()


def thread_buffer(name: str, size: int, dtype) -> np.ndarray:
    """A buffer of at least ``size`` items, this thread's, reused by the tasks of a step that
    run on it (released at the step's end)."""
    key = (threading.get_ident(), name)
    buf = _buffers.get(key)
    if buf is None or len(buf) < size or buf.dtype != np.dtype(dtype):
        with _buffers_lock:
            _buffers.pop(key, None)  # the old one goes before the new one is made
        del buf
        buf = np.empty(size, dtype)
        with _buffers_lock:
            _buffers[key] = buf
    return buf


def release_thread_buffers() -> int:
    """Drop every thread's buffers in this process; returns how many bytes they held."""
    with _buffers_lock:
        held = sum(b.nbytes for b in _buffers.values())
        _buffers.clear()
    return held
