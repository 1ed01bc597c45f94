#!/usr/bin/env python
"""Where an explode task's time goes, kernel by kernel, and the fastest build the parts allow.

    .venv/bin/python scripts/bench_kernels.py --tokens 1006632960 --shard-mib 32 \\
        --results bench-data/results-1e9.json

Takes the corpus that ``bench_build.py`` makes (same flags, same cache), and times, in this
one process on ``--groups`` shard groups of the build's default size (two 32 MiB shards,
~33.5M tokens), every step of an explode task alone:

* read: read and decode the group's shards (``ngram_dask.mds``);
* keys: the tagged 64-bit trigram keys (chunk number above the three ids);
* count: the two engines of ``counting.count_by_chunk`` (DuckDB, the build's default, and
  the numpy sort), then hash kernels from the project's packages on the same keys, each
  giving unsorted distinct keys and counts: DuckDB on one packed column, Arrow's
  ``value_counts``, pandas ``factorize`` + ``bincount``, and ``torch.unique`` (sorted);
* sort: sorting the distinct keys (what a hash kernel leaves to do);
* write: the group's trigram part file (``partfile.write_part``: its blocks and index).

Every kernel's result is checked against the build's engine. Then it prints the fastest
build these parts allow on this machine: the explode with its best kernels, plus the
aggregate's and load's floors from ``--results`` (a ``bench_build.py --json`` file of the
same corpus), against that file's baseline. Nothing is a test; nothing asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from benchkit.corpus import REPO, VOCAB, make_corpus

from ngram_dask.inputs import group_pieces, plan_input, read_group
from ngram_dask.ngrams import counting, partfile
from ngram_dask.ngrams.explode import ExplodeSettings, chunk_tables

SENTINEL = np.iinfo(np.uint64).max


def timed(fn, reps: int):
    """(best seconds of ``reps`` calls, last result)."""
    best, out = float("inf"), None
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def sorted_counts(keys: np.ndarray, counts: np.ndarray) -> counting.Counts:
    order = np.argsort(keys)
    keys, counts = keys[order], np.asarray(counts)[order].astype(np.uint64)
    if len(keys) and keys[-1] == SENTINEL:  # positions where no trigram starts
        keys, counts = keys[:-1], counts[:-1]
    return counting.Counts(keys, counts)


def hash_kernels(keys: np.ndarray) -> dict:
    """Unsorted (distinct keys, counts) by each hash kernel, on the same prebuilt keys."""
    import duckdb
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc
    import torch

    def duckdb_packed():
        con = duckdb.connect(config={"threads": 1})
        try:
            con.register("k", pa.table({"k": keys}))
            r = con.sql("SELECT k, count(*) AS c FROM k GROUP BY k").to_arrow_table().combine_chunks()
        finally:
            con.close()
        return r.column("k").to_numpy(), r.column("c").to_numpy()

    def arrow_value_counts():
        vc = pc.value_counts(pa.array(keys, type=pa.uint64()))
        return vc.field(0).to_numpy(), vc.field(1).to_numpy()

    def pandas_factorize():
        codes, uniques = pd.factorize(keys, sort=False)
        return np.asarray(uniques), np.bincount(codes)

    torch.set_num_threads(1)  # one core, like every other kernel here

    def torch_unique():  # sorted output: no sort left to do
        u, c = torch.unique(torch.from_numpy(keys.view(np.int64)), sorted=True, return_counts=True)
        return u.numpy().view(np.uint64), c.numpy()

    return {"DuckDB GROUP BY, one packed column": duckdb_packed,
            "Arrow value_counts": arrow_value_counts,
            "pandas factorize + bincount": pandas_factorize,
            "torch.unique (sorted)": torch_unique}


def profile_group(group, s: ExplodeSettings, reps: int, out_dir: str) -> dict:
    bits, k = s.bits, s.chunks
    row: dict[str, float] = {}
    row["read"], data = timed(lambda: read_group(group, s.vocab_size, s.verify_hashes), reps)
    tokens, offsets = data.tokens, data.offsets
    workspace = np.empty(len(tokens), counting.KEY_DTYPE)
    row["keys"], (keys, invalid) = timed(lambda: counting._tagged_keys(tokens, offsets, 3, bits, k, workspace), reps)
    keys = keys.copy()  # the workspace is reused below
    row["count: DuckDB, 3 id columns, sorted (the build's engine)"], ref = timed(
        lambda: counting._tagged_counts_duckdb(tokens, offsets, 3, bits, k), reps)

    def numpy_engine():
        kk, bad = counting._tagged_keys(tokens, offsets, 3, bits, k, workspace)
        kk.sort()
        return counting._run_length(kk[: len(kk) - bad])

    row["count: numpy sort + run length (keys included)"], got = timed(numpy_engine, reps)
    assert np.array_equal(got.keys, ref.keys) and np.array_equal(got.counts, ref.counts)
    for name, fn in hash_kernels(keys).items():
        row[f"hash: {name}"], (distinct, counts) = timed(fn, reps)
        got = sorted_counts(distinct, counts)
        assert np.array_equal(got.keys, ref.keys) and np.array_equal(got.counts, ref.counts), name
    shuffled = ref.keys.copy()
    np.random.default_rng(0).shuffle(shuffled)
    row["sort the distinct keys"], _ = timed(lambda: np.sort(shuffled), reps)
    chunked = counting._untag(ref, 3, bits, k)

    def write():
        shutil.rmtree(out_dir, ignore_errors=True)
        partfile.write_part(out_dir, "bench", k, bits, chunk_tables(chunked, 3, s))

    row["write the trigram partial files"], _ = timed(write, reps)
    row["tokens"] = float(len(tokens))
    row["distinct"] = float(len(ref))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=float, default=1006632960)
    ap.add_argument("--shard-mib", type=int, default=32)
    ap.add_argument("--real-tokens", type=float, default=1.28e8)
    ap.add_argument("--cache", default=str(REPO / "bench-data"))
    ap.add_argument("--groups", type=int, default=3, help="shard groups to profile (spread over the corpus)")
    ap.add_argument("--reps", type=int, default=2, help="calls per kernel; the best is kept")
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--results", help="bench_build.py --json of the same corpus: baseline and floors")
    args = ap.parse_args()

    mds, info = make_corpus(Path(args.cache), int(args.tokens), args.shard_mib << 20, False, print, args.real_tokens)
    shards = plan_input(str(mds)).pieces
    s = ExplodeSettings(work_dir="", ngrams=(2, 3), chunks=64, vocab_size=VOCAB, token_dtype="uint16")
    groups = group_pieces(shards, s.unit_tokens)
    picks = [groups[i] for i in np.linspace(0, len(groups) - 1, min(args.groups, len(groups))).astype(int)]
    out_dir = tempfile.mkdtemp(prefix="bench-kernels-")
    try:
        rows = [profile_group(g, s, args.reps, out_dir) for g in picks]
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)

    tokens = statistics.median(r["tokens"] for r in rows)
    print(f"\nOne explode task's steps, alone, median of {len(rows)} groups of ~{tokens / 1e6:.1f}M tokens "
          f"(~{statistics.median(r['distinct'] for r in rows) / 1e6:.2f}M distinct trigrams), 1 core:\n")
    print("| step | s per group | ns per token |")
    print("|---|---|---|")
    med = {key: statistics.median(r[key] for r in rows) for key in rows[0] if key not in ("tokens", "distinct")}
    for key, sec in med.items():
        print(f"| {key} | {sec:.3f} | {sec / tokens * 1e9:.1f} |")

    best_hash = min(v for key, v in med.items() if key.startswith("hash: "))
    best_count = min(med["count: DuckDB, 3 id columns, sorted (the build's engine)"],
                     med["count: numpy sort + run length (keys included)"],
                     med["keys"] + best_hash + med["sort the distinct keys"],
                     med["keys"] + med["hash: torch.unique (sorted)"])
    per_group = med["read"] + best_count + med["write the trigram partial files"]
    n_groups = len(groups)
    explode = n_groups * per_group / args.cores
    print(f"\nexplode with the best kernels: {n_groups} groups x {per_group:.2f} s "
          f"(read {med['read']:.2f} + count {best_count:.2f} + write {med['write the trigram partial files']:.2f})"
          f" / {args.cores} cores = {explode:.1f} s")
    if not args.results:
        return
    r = json.loads(Path(args.results).read_text())
    baseline = statistics.median(x["seconds"] for x in r["runs"]["baseline"])
    aggregate = r["aggregate_floor"]["seconds"] / args.cores
    load = r["load_floor"][str(args.cores)]["seconds"] if str(args.cores) in r["load_floor"] else None
    if load is None:
        print(f"(no load floor at {args.cores} threads in {args.results})")
        return
    total = explode + aggregate + load
    print(f"aggregate floor (in-memory merge, {args.results}): {aggregate:.1f} s; load floor: {load:.1f} s")
    print(f"every stage at its floor, nothing else: {total:.1f} s against the baseline's {baseline:.1f} s "
          f"(median, same file): at most {baseline / total:.2f}x")


if __name__ == "__main__":
    main()
