#!/usr/bin/env python
"""Is a change slower? The same build from two revisions of ngram-dask, alternating, on one corpus.

    .venv/bin/python scripts/bench_revisions.py --base lead-base --tokens 2e8 --runs 2
    .venv/bin/python scripts/bench_revisions.py --base v1 --this v2      # two commits

Each revision is checked out with ``git worktree`` into a temporary folder (without
``--this``, the working tree itself is the other side, with its uncommitted changes), and each build runs
``python -m ngram_dask.cli build`` in a fresh process with that tree first on
``PYTHONPATH``, so both use this virtualenv's packages. Builds alternate (base, this,
base, this, ...) so that a machine growing busier or quieter affects both alike. The
catalogs must be identical (every n-gram and prefix table, compared row for row by
DuckDB); the table prints the wall time of each run, the medians and their ratio.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchkit.corpus import REPO, VOCAB, make_corpus


def build(tree: Path, mds: Path, out: Path, workers: int, chunks: int) -> float:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1"}
    args = [sys.executable, "-m", "ngram_dask.cli", "build", "--input", str(mds), "--work-dir", str(out / "work"),
            "--db", str(out / "c.duckdb"), "--vocab-size", str(VOCAB), "--chunks", str(chunks),
            "--steps", "explode,aggregate,load", "--n-workers", str(workers), "--threads-per-worker", "1",
            "--dashboard-address", ":0", "-q"]
    t0 = time.perf_counter()
    subprocess.run(args, check=True, env=env, cwd=tree)
    return time.perf_counter() - t0


def same_tables(a: Path, b: Path) -> bool:
    import duckdb  # a benchmark, not the package: db.py's rule is for ngram_dask/

    con = duckdb.connect()
    con.execute(f"ATTACH '{a}' AS a (READ_ONLY); ATTACH '{b}' AS b (READ_ONLY)")
    tables = [r[0] for r in con.execute("SELECT table_name FROM duckdb_tables() WHERE database_name = 'a' "
                                        "AND table_name LIKE '%grams%'").fetchall()]
    for t in tables:
        diff = con.execute(f"SELECT count(*) FROM ((FROM a.{t} EXCEPT ALL FROM b.{t}) "
                           f"UNION ALL (FROM b.{t} EXCEPT ALL FROM a.{t}))").fetchall()[0][0]
        if diff:
            print(f"  {t}: {diff} rows differ")
            return False
    return bool(tables)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="the revision to compare against (a commit, branch or tag)")
    ap.add_argument("--this", help="the revision to measure (default: the working tree)")
    ap.add_argument("--tokens", type=float, default=2e8)
    ap.add_argument("--synthetic", action="store_true", help="Zipf tokens instead of real text")
    ap.add_argument("--real-tokens", type=float, default=1.28e8,
                    help="tokens of real text; a larger corpus repeats it with rare tokens renamed per copy")
    ap.add_argument("--shard-mib", type=int, default=32, help="MDS size_limit per shard (MiB)")
    ap.add_argument("--runs", type=int, default=2, help="alternating runs of each revision")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--chunks", type=int, default=64)
    ap.add_argument("--cache", default=str(REPO / "bench-data"))
    args = ap.parse_args()

    mds, _ = make_corpus(Path(args.cache), int(args.tokens), args.shard_mib << 20, args.synthetic, print,
                         real_tokens=int(args.real_tokens))
    scratch = Path(tempfile.mkdtemp(prefix="bench-revisions-"))
    trees = {"base": scratch / "base-tree", "this": scratch / "this-tree" if args.this else REPO}
    for side, rev in (("base", args.base), ("this", args.this)):
        if rev:
            subprocess.run(["git", "worktree", "add", "-q", "--detach", str(trees[side]), rev], check=True, cwd=REPO)
    times: dict[str, list[float]] = {"base": [], "this": []}
    try:
        for run in range(args.runs):
            for side, tree in trees.items():
                sec = build(tree, mds, scratch / side, args.workers, args.chunks)
                times[side].append(sec)
                print(f"run {run + 1} {side}: {sec:.1f} s", flush=True)
        identical = same_tables(scratch / "base" / "c.duckdb", scratch / "this" / "c.duckdb")
    finally:
        for side, rev in (("base", args.base), ("this", args.this)):
            if rev:
                subprocess.run(["git", "worktree", "remove", "--force", str(trees[side])], cwd=REPO)
        shutil.rmtree(scratch, ignore_errors=True)
    base, this = statistics.median(times["base"]), statistics.median(times["this"])
    print(f"\ncorpus: {int(args.tokens):,} tokens ({'zipf' if args.synthetic else 'text'}), "
          f"{args.workers} workers, K = {args.chunks}, explode+aggregate+load")
    print("| revision | runs (s) | median (s) | vs base |\n|---|---|---|---|")
    for side, name, median in (("base", args.base, base), ("this", args.this or "working tree", this)):
        runs = ", ".join(f"{t:.1f}" for t in times[side])
        print(f"| {name} | {runs} | {median:.1f} | {median / base:.2f}x |")
    print(f"tables identical: {identical}")
    return 0 if identical else 1


if __name__ == "__main__":
    raise SystemExit(main())
