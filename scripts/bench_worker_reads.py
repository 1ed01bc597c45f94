#!/usr/bin/env python
"""A unit's read of its piece group inside Dask workers, with and without reused buffers.

    .venv/bin/python scripts/bench_worker_reads.py --input /tmp/pile-bench/corpus-text-1000000000-16MiB-real32000000

A worker starts with distributed's ``MALLOC_TRIM_THRESHOLD_``, so every fresh array a read
makes (the group's tokens, each shard's file bytes and zstd output) is faulted in again;
``read_group(..., buffers=runtime.thread_buffer)`` keeps them between units. This reads
every piece group of ``--input`` on a LocalCluster, both ways, alternating rounds, and
prints per way the median and range of a group's seconds and minor page faults (each
worker's first group apart: it also imports and sizes its buffers). Nothing here is a test.
"""

from __future__ import annotations

import argparse
import statistics


def read_one(group, vocab_size: int, reuse: bool) -> tuple[float, int]:
    import resource
    import time

    from ngram_dask.inputs import read_group
    from ngram_dask.runtime import thread_buffer

    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t0 = time.perf_counter()
    read_group(group, vocab_size, True, thread_buffer if reuse else None)
    return time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", required=True, help="an MDS corpus (the benchmarks' cache)")
    ap.add_argument("--unit-tokens", type=int, default=75_500_000)
    ap.add_argument("--vocab-size", type=int, default=50432)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    from dask.distributed import Client, LocalCluster

    from ngram_dask.inputs import even_groups, plan_input
    from ngram_dask.runtime.units import release_thread_buffers

    groups = even_groups(plan_input(args.input).pieces, args.unit_tokens, args.workers)
    got: dict[bool, list[tuple[float, int]]] = {True: [], False: []}
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        for _ in range(args.rounds):
            for reuse in (False, True):
                client.run(release_thread_buffers)
                futures = [client.submit(read_one, g, args.vocab_size, reuse, pure=False) for g in groups]
                got[reuse] += [f.result() for f in futures][args.workers:]  # a worker's first group apart
    tokens = statistics.median(g.tokens for g in groups)
    print(f"{len(groups)} piece groups of ~{tokens / 1e6:.1f}M tokens, {args.workers} workers, {args.rounds} rounds")
    print(f"{'buffers':<10} {'median s':>9} {'range s':>13} {'median faults':>14}")
    for reuse in (False, True):
        secs = [s for s, _ in got[reuse]]
        faults = [f for _, f in got[reuse]]
        print(f"{'reused' if reuse else 'fresh':<10} {statistics.median(secs):9.3f} "
              f"{min(secs):6.3f}-{max(secs):.3f} {statistics.median(faults):14,.0f}")


if __name__ == "__main__":
    main()
