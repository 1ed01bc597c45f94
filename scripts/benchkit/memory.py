"""What a benchmark run holds: the peak RSS of a process and its descendants, sampled on a
thread, and the bytes a folder takes on disk. Writes nothing."""

from __future__ import annotations

import threading
from pathlib import Path


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


class RssSampler:
    """Peak RSS of a process and all its descendants, sampled every ``interval`` s."""

    def __init__(self, pid: int, interval: float = 0.05):
        import psutil

        self.root = psutil.Process(pid)
        self.peaks: dict[int, tuple[str, int]] = {}
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self):
        import psutil

        while not self._stop.is_set():
            try:
                procs = [self.root] + self.root.children(recursive=True)
            except psutil.Error:
                break
            for p in procs:
                try:
                    rss = p.memory_info().rss
                    name = "main" if p.pid == self.root.pid else _role(p)
                except psutil.Error:
                    continue
                old = self.peaks.get(p.pid, (name, 0))
                self.peaks[p.pid] = (name, max(old[1], rss))
            self._stop.wait(self.interval)

    def summary(self) -> dict:
        out: dict[str, int] = {}
        for name, rss in self.peaks.values():
            out[name] = max(out.get(name, 0), rss)
        return out


def _role(p) -> str:
    cmd = " ".join(p.cmdline())
    if "multiprocessing" in cmd and ("spawn_main" in cmd or "forkserver" in cmd):
        return "worker"  # Dask worker processes and the baseline's pool both start this way
    if "resource_tracker" in cmd:
        return "helper"
    return "other"
