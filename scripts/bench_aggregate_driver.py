#!/usr/bin/env python
"""The aggregate as a Dask DataFrame (``from_map`` + ``map_partitions``, what the build
runs) against ``client.map`` over the same chunks, on a LocalCluster, alternating.

    .venv/bin/python scripts/bench_aggregate_driver.py bench-data/runs/ours/work [--runs 2]

The work dir must hold an explode (e.g. the last ``bench_build.py`` run's); its aggregate
folder is deleted before every run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path


def main() -> None:
    from distributed import Client, LocalCluster

    from ngram_dask.ngrams.aggregate import AggregateSettings, aggregate_chunk, aggregate_frame

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("work_dir")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    manifest = json.loads(Path(args.work_dir, "manifest.json").read_text())
    todo = [(n, c) for n in json.loads(manifest["ngrams"]) for c in range(int(manifest["chunks"]))]
    ags = AggregateSettings(work_dir=args.work_dir)
    times: dict[str, list[float]] = {"dataframe": [], "client.map": []}
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, memory_limit="4GiB",
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        client.run(lambda: __import__("ngram_dask.ngrams.aggregate"))
        for _ in range(args.runs):
            for driver in times:
                shutil.rmtree(Path(args.work_dir, "aggregate"), ignore_errors=True)
                t0 = time.perf_counter()
                if driver == "dataframe":
                    futures = client.compute(aggregate_frame(todo, ags).to_delayed())
                else:
                    futures = client.map(aggregate_chunk, [n for n, _ in todo], [c for _, c in todo],
                                         s=ags, pure=False)
                client.gather(futures)
                times[driver].append(time.perf_counter() - t0)
    print(f"{len(todo)} chunks, {args.workers} workers")
    for driver, secs in times.items():
        print(f"{driver:12s} " + ", ".join(f"{s:.2f} s" for s in secs))


if __name__ == "__main__":
    main()
