"""Build the same corpus from MDS and from a Megatron .bin/.idx in one run, alternating, and
print both (issue: a Megatron build takes no more time than the MDS one).

    .venv/bin/python scripts/bench_inputs.py --tokens 1e9 --runs 2

The corpus is bench_build's (benchkit.corpus: samples of 2048 tokens, real text expanded);
the Megatron copy is its samples back to back as one stream, written with the project's
independent MMIDIDX writer, so ``--seq-len 2048`` gives the same samples and the tables
must be identical (checked).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from benchkit.corpus import REPO, SEQ_LEN, VOCAB, make_corpus  # noqa: E402


def megatron_copy(mds: Path, out: Path, log) -> Path:
    """The MDS samples concatenated as one Megatron file (one document per MDS shard)."""
    from helpers_formats import write_megatron

    from ngram_dask.inputs import plan_input, read_piece

    prefix = out / "corpus"
    if Path(f"{prefix}.idx").exists():
        return Path(f"{prefix}.bin")
    out.mkdir(parents=True, exist_ok=True)
    docs = [[read_piece(p, VOCAB, False).tokens] for p in plan_input(str(mds)).pieces]
    write_megatron(prefix, docs)
    log(f"megatron copy: {sum(len(d[0]) for d in docs):,} tokens -> {prefix}.bin")
    return Path(f"{prefix}.bin")


def build(url: str, work: Path, db: Path, workers: int) -> dict:
    from ngram_dask.config import load_config
    from ngram_dask.ngrams.pipeline import run_build

    shutil.rmtree(work, ignore_errors=True)
    db.unlink(missing_ok=True)
    cfg = load_config(None, {"input": url, "work_dir": str(work), "db": str(db), "vocab_size": VOCAB,
                             "build.chunks": 64, "build.seq_len": SEQ_LEN, "cluster.n_workers": workers,
                             "cluster.threads_per_worker": 1, "cluster.dashboard_address": ":0",
                             "build.steps": ["explode", "aggregate", "load"]})
    t0 = time.perf_counter()
    report = run_build(cfg, announce=lambda m: None)
    return {"seconds": time.perf_counter() - t0, "tokens": report.tokens, "pieces": report.pieces,
            **{k: v for k, v in report.seconds.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=float, default=1e8)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--shard-mib", type=int, default=32)
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--cache", default=str(REPO / "bench-data"))
    ap.add_argument("--synthetic", action="store_true", help="Zipf tokens instead of real text (no tokenizing)")
    args = ap.parse_args()
    cache = Path(args.cache)
    mds, info = make_corpus(cache, int(args.tokens), args.shard_mib << 20, args.synthetic, print)
    meg = megatron_copy(mds, cache / f"megatron-{info['tokens']}", print)
    tmp = cache / "bench-inputs"
    results: dict[str, list[dict]] = {"mds": [], "megatron": []}
    dumps = {}
    for run in range(args.runs):
        for name, url in (("mds", str(mds)), ("megatron", str(meg))) if run % 2 == 0 else \
                (("megatron", str(meg)), ("mds", str(mds))):
            res = build(url, tmp / f"work-{name}", tmp / f"{name}.duckdb", args.cores)
            print(f"  run {run + 1} {name}: {res['seconds']:.1f} s ({res['pieces']} pieces)")
            results[name].append(res)
            if run == 0:
                import duckdb

                con = duckdb.connect(str(tmp / f"{name}.duckdb"), read_only=True)
                dumps[name] = [con.execute("SELECT count(*), sum(count), bit_xor(hash(id0, id1, id2, count)) "
                                           "FROM trigrams").fetchone(),
                               con.execute("SELECT count(*), sum(count), bit_xor(hash(id0, id1, count)) "
                                           "FROM bigrams").fetchone()]
                con.close()
    same = dumps["mds"] == dumps["megatron"]
    tokens = results["mds"][0]["tokens"]
    print(f"\n{tokens:,} tokens, {args.cores} workers, {args.runs} alternating runs each; tables identical: {same}\n")
    print("| input | pieces | explode s | aggregate+load s | total s (median) | tokens/s | vs MDS |")
    print("|---|---|---|---|---|---|---|")
    base = statistics.median(r["seconds"] for r in results["mds"])
    for name, rs in results.items():
        med = statistics.median(r["seconds"] for r in rs)
        print(f"| {name} | {rs[0]['pieces']} | {statistics.median(r['explode'] for r in rs):.1f} | "
              f"{statistics.median(r['aggregate+load'] for r in rs):.1f} | {med:.1f} | {tokens / med / 1e6:.2f}M | "
              f"{med / base:.2f}x |")
    if not same:
        sys.exit("the two builds differ")


if __name__ == "__main__":
    main()
