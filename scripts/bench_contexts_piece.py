#!/usr/bin/env python
"""One piece, warm, in one process: the explode task against the contexts task, at a
density of occurrences like the 1e9-token corpus's (half of all positions), without
building anything.

    .venv/bin/python scripts/bench_contexts_piece.py                 # this checkout
    PYTHONPATH=/path/to/older/checkout .venv/bin/python scripts/bench_contexts_piece.py --tag before

(An older checkout must have this vocabulary: ``inputs.group_pieces``, ``contexts_group``;
the figures in docs/performance.md were taken with the same script before the renames.)

Makes (once, under ``--cache``) a 34M-token MDS piece of Zipf ids (2048-token samples,
zstd, 16 MiB shards) and prompts chosen from its frequent ids and pairs so that their
occurrences are ~40% of the positions (``scripts/bench_contexts.py`` measures the real
text corpus, but needs a build first). Then runs ``explode_group`` and ``contexts_group``
on that piece group alternately, ``--rounds`` times, and prints the fastest wall and CPU
(``process_time``: what a loaded machine inflates least) seconds of each and their
ratio. The examples are saved (``examples-<tag>.npy``) so two checkouts can be compared
row for row. Nothing here is a test.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

VOCAB = 50432
TOKENS = 34_000_000 // 2048 * 2048


def make(root: Path) -> None:
    from streaming import MDSWriter

    rng = np.random.default_rng(0)
    ranks = np.arange(1, 50277 + 1, dtype=np.float64) ** -1.1
    toks = rng.permutation(50277)[rng.choice(50277, size=TOKENS, p=ranks / ranks.sum())].astype(np.uint16)
    with MDSWriter(out=str(root / "mds"), columns={"tokens": "bytes"}, compression="zstd", size_limit=16 << 20) as w:
        for row in toks.reshape(-1, 2048):
            w.write({"tokens": row.tobytes()})
    rank = np.argsort(np.bincount(toks, minlength=1 << 16))[::-1]
    ids2 = np.sort(rank[300:12000])  # not the very top ids: about half of all positions, as at 1e9
    key = (toks[:-1].astype(np.uint64) << np.uint64(16)) | toks[1:]
    u, c = np.unique(key[:5_000_000], return_counts=True)
    top = u[np.argsort(c)[::-1][:60000]]
    top = np.sort(top[~np.isin(top >> np.uint64(16), rank[:40])][:34000])
    np.savez(root / "prompts.npz", ids2=ids2, a=(top >> np.uint64(16)).astype(np.int64),
             b=(top & np.uint64(0xFFFF)).astype(np.int64))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", default="/tmp/contexts-piece-bench")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tag", default="this")
    ap.add_argument("--per-task", type=int, default=5)
    ap.add_argument("--mds", help="a real MDS corpus instead (its first piece) ...")
    ap.add_argument("--prompts", help="... with these prompts (a contexts dir's prompts.parquet)")
    args = ap.parse_args()

    import pyarrow.parquet as pq

    from ngram_dask.contexts import kernel
    from ngram_dask.contexts import task as ctask
    from ngram_dask.inputs import group_pieces, plan_input
    from ngram_dask.ngrams.counting import derived_in_aggregate
    from ngram_dask.ngrams.explode import ExplodeSettings, explode_group
    from ngram_dask.storage import atomic_write_parquet

    root = Path(args.cache)
    if args.mds:
        mds = args.mds
        families = ctask.families_of(pq.read_table(args.prompts), 16)
    else:
        mds = str(root / "mds")
        if not (root / "prompts.npz").exists():
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True)
            make(root)
        z = np.load(root / "prompts.npz")
        families = {2: kernel.Prompts.make(2, [z["ids2"]], np.zeros(len(z["ids2"])), 16),
                    3: kernel.Prompts.make(3, [z["a"], z["b"]], np.zeros(len(z["a"])), 16)}
    out = root / f"run-{args.tag}"
    shutil.rmtree(out, ignore_errors=True)
    ctx_dir = out / "contexts"
    atomic_write_parquet(str(ctx_dir / "prompts.parquet"), ctask.prompts_table(families), compression="zstd")
    group = group_pieces(plan_input(mds).pieces, 34_000_000)[0]
    xs = ExplodeSettings(work_dir=str(out / "explode"), ngrams=(2, 3), chunks=16, vocab_size=VOCAB,
                         token_dtype="uint16", derived=derived_in_aggregate([2, 3], False))
    cs = ctask.ContextsSettings(dir=str(ctx_dir), token_dtype="uint16", vocab_size=VOCAB, per_task=args.per_task,
                                seed=0, before=32, after=8)
    runs = {"explode": (lambda: explode_group(group, xs), out / "explode" / "explode" / "_done"),
            "contexts": (lambda: ctask.contexts_group(group, cs), ctx_dir / "_done")}
    times: dict[str, list] = {name: [] for name in runs}
    stats = {}
    for _ in range(args.rounds):
        for name, (run, done) in runs.items():
            shutil.rmtree(done, ignore_errors=True)
            t0, c0 = time.perf_counter(), time.process_time()
            stats[name] = run()
            times[name].append((time.perf_counter() - t0, time.process_time() - c0))
    best = {name: (min(w for w, _ in v), min(c for _, c in v)) for name, v in times.items()}
    occ = stats["contexts"]["occurrences"]
    print(json.dumps({
        "tag": args.tag, "tokens": stats["contexts"]["tokens"], "occurrences": occ, "kept": stats["contexts"]["kept"],
        "occurrences_per_position": round(sum(occ.values()) / stats["contexts"]["tokens"], 3),
        **{f"{name}_{kind}": round(best[name][i], 2) for name in runs for i, kind in enumerate(("wall", "cpu"))},
        "ratio_wall": round(best["contexts"][0] / best["explode"][0], 3),
        "ratio_cpu": round(best["contexts"][1] / best["explode"][1], 3)}))
    ex = pq.read_table(next((ctx_dir / "examples").glob("*.parquet")))
    np.save(root / f"examples-{args.tag}.npy", np.stack(
        [ex.column(c).to_numpy().astype(np.int64) for c in ("prompt", "shard", "sample", "pos", "window_start")]
        + [ex.column("priority").to_numpy().view(np.int64)]))


if __name__ == "__main__":
    main()
