"""The client side of every stage: submit tasks, gather them as they finish, report progress.

One loop for all stages, so each one gets the same guarantees:

* a task's ``UserError`` reaches the user as the same one line (Dask re-raises it here);
* a full disk on a worker (``ENOSPC``) becomes one ``WorkDirError`` saying where, and
  that finished work is kept;
* when one task fails, the others are cancelled instead of running on unobserved.
"""

from __future__ import annotations

import errno
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator

from ngram_dask.errors import WorkDirError

Announce = Callable[[str], None]


class Progress:
    """Console progress of one stage: a line at most every ``interval`` seconds, and at the end.

    ``step(done, tokens)``: ``done`` units finished (units, chunks, rows), carrying
    ``tokens`` tokens; the line shows tokens/s when tokens are counted.
    """

    def __init__(self, stage: str, total: int, unit: str, announce: Announce, interval: float = 2.0):
        self.stage, self.total, self.unit, self.announce = stage, total, unit, announce
        self.interval = interval
        # last = -inf: the first step prints, however recent perf_counter's epoch (on Linux: the boot)
        self.done, self.tokens, self.t0, self.last = 0, 0, time.perf_counter(), float("-inf")

    def step(self, done: int = 1, tokens: int = 0) -> None:
        self.done += done
        self.tokens += tokens
        now = time.perf_counter()
        if self.done >= self.total or now - self.last >= self.interval:
            self.last = now
            elapsed = max(now - self.t0, 1e-9)
            rate = f", {self.tokens / elapsed / 1e6:.2f}M tokens/s" if self.tokens else ""
            self.announce(f"  {self.stage}: {self.done:,}/{self.total:,} {self.unit}{rate}")

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.t0


@dataclass(frozen=True)
class DiskFull:
    """What to say when a task finds its disk full: where it writes, and what to do."""

    writes_to: str  # "the work dir /data/work"
    advice: str = "free space"
    # (units done, units of the step) -> " (free 1.2 MiB, ...)", computed only then
    hint: Callable[[int, int], str] | None = None
    progress: Progress | None = None  # the step's, given by the runtime (``at``)

    def at(self, progress: Progress) -> "DiskFull":
        """This message, its hint told how far the step has come."""
        return replace(self, progress=progress)

    def error(self) -> WorkDirError:
        done, total = (self.progress.done, self.progress.total) if self.progress else (0, 0)
        hint = self.hint(done, total) if self.hint else ""
        return WorkDirError(f"out of disk space in {self.writes_to}{hint}; {self.advice} and rerun: "
                            "finished work is kept")


def result_of(future, disk: DiskFull) -> Any:
    """A finished task's result; a full disk where it writes becomes a one-line user error."""
    try:
        return future.result()
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise disk.error() from None
        raise


def as_finished(futures: list, disk: DiskFull, release: bool = False) -> Iterator[tuple[Any, Any]]:
    """``(future, result)`` for each task as it finishes; on any error the rest are cancelled.

    ``release`` drops each result from the cluster once read (large results, read once).
    """
    from distributed import as_completed

    try:
        for fut in as_completed(futures):
            res = result_of(fut, disk)
            yield fut, res
            if release:
                fut.release()
    except BaseException:
        for fut in futures:
            fut.cancel()
        raise


def gpu_resources(client) -> dict | None:
    """``{"GPU": 1}`` when some worker advertises a GPU resource (``dask worker --resources
    GPU=1``): tasks then run only there, one per GPU at a time. None: run anywhere."""
    workers = scheduler_workers(client)
    if any((w.get("resources") or {}).get("GPU", 0) >= 1 for w in workers.values()):
        return {"GPU": 1}
    return None


def scheduler_workers(client) -> dict[str, dict]:
    """Every worker the scheduler knows, by address (not the first few only): the one call of
    ``scheduler_info``. Some distributed releases pyproject allows list five workers unless
    asked for all; those before 2025.1 take no ``n_workers``."""
    try:
        info = client.scheduler_info(n_workers=-1)
    except TypeError:  # distributed before 2025.1 takes no n_workers and lists them all anyway
        info = client.scheduler_info()
    return info.get("workers", {})
