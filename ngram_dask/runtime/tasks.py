"""Resumable tasks: completion markers handled once, here, never in the work itself.

A unit of work writes its outputs under deterministic names (a retried task overwrites
its own files), then ``resumable`` writes a small JSON marker with the unit's
statistics, last. A rerun finds the marker and returns those statistics without
redoing the work, so a build killed at any point resumes where it stopped and never
counts a unit twice. A torn marker reads as missing: the unit is redone.

Every marker returned carries ``skipped``: True when it came from an earlier run.
"""

from __future__ import annotations

import functools
import time
from typing import Any, Callable

from ngram_dask.storage import read_marker, write_marker

Stats = dict[str, Any]


def resumable(marker: Callable[..., str], accept: Callable[..., bool] | None = None):
    """Decorate ``work(*args) -> stats`` into a task that runs at most once per marker.

    ``marker(*args)`` is the URL of the unit's completion marker. ``accept(marker,
    *args)``, when given, may reject a marker left by other settings (the unit is then
    redone). The wrapper adds ``seconds`` (wall time of the work) unless the work set it.
    """

    def decorate(work: Callable[..., Stats]) -> Callable[..., Stats]:
        @functools.wraps(work)
        def run(*args, **kwargs) -> Stats:
            url = marker(*args, **kwargs)
            done = read_marker(url)
            if done is not None and (accept is None or accept(done, *args, **kwargs)):
                return {**done, "skipped": True}
            t0 = time.perf_counter()
            stats = work(*args, **kwargs)
            stats.setdefault("seconds", round(time.perf_counter() - t0, 4))
            write_marker(url, stats)  # last: from here on the unit counts as done
            return {**stats, "skipped": False}

        run.marker = marker
        return run

    return decorate
