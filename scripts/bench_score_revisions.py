#!/usr/bin/env python
"""Throughput of `score --revisions` against a final-checkpoint `score`, on one small catalog.

    python scripts/bench_score_revisions.py                      # CPU, tiny random GPT-NeoX (vocab 50432)
    python scripts/bench_score_revisions.py --device cuda --hidden 512 --layers 6

Makes the catalog of scripts/gpu_check_score.py (top tables of phrases the model
sampled), a model folder whose subfolders step0 ... are R copies of one tiny model, then
scores it through a one-worker LocalCluster twice on copies of the database: once plainly
(the p_<model> column, one checkpoint), once with --revisions over the R subfolders
(the scores table). Prints prompts/s of each (prompts scored / wall time of the scoring
step, as the stages report them) and their ratio. Wall times include the cluster's start
and, for --revisions, one checkpoint load per revision.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_check_score import corpus, ngram_rows, tiny_model, write_catalog  # noqa: E402


def run(db: Path, overrides: dict) -> tuple[object, float]:
    from ngram_dask.config import load_config
    from ngram_dask.lm.score import run_score

    cfg = load_config(overrides={"db": str(db), "cluster.n_workers": 1,
                                 "cluster.dashboard_address": "127.0.0.1:0", **overrides})
    t0 = time.perf_counter()
    report = run_score(cfg, lambda m: None)
    return report, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--revisions", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--rows-per-task", type=int, default=4096)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-revisions-"))
    try:
        vocab = 50432
        model = tiny_model(tmp / "model", vocab, args.hidden, args.layers, 0.2, seed=0)
        ckpts = tmp / "ckpts"
        names = [f"step{1000 * k}" for k in range(args.revisions)]
        for name in names:
            shutil.copytree(model, ckpts / name)
        rows = ngram_rows(corpus(model, 20000, 3000, "cpu", seed=0))
        src = tmp / "catalog.duckdb"
        write_catalog(src, rows, vocab)
        prompts = sum(len(r) for r in rows.values())
        common = {"score.models": [str(ckpts / names[-1])], "score.device": args.device,
                  "score.batch_size": args.batch, "score.rows_per_unit": args.rows_per_task}
        shutil.copy(src, tmp / "plain.duckdb")
        plain, plain_wall = run(tmp / "plain.duckdb", common)
        (run_,) = plain.runs.values()
        plain_rate = run_.rows / run_.seconds
        shutil.copy(src, tmp / "revs.duckdb")
        revs, revs_wall = run(tmp / "revs.duckdb", {**common, "score.models": [str(ckpts)],
                                                   "score.revisions": names, "score.final_revision": "none"})
        (label,) = revs.seconds
        revs_rate = revs.rows[label] / revs.seconds[label]
        out = {"device": args.device, "prompts": prompts, "revisions": args.revisions,
               "model": f"GPT-NeoX hidden {args.hidden}, {args.layers} layers, vocab {vocab}",
               "plain_prompts_per_s": round(plain_rate, 1), "plain_wall_s": round(plain_wall, 2),
               "revisions_prompts_per_s": round(revs_rate, 1), "revisions_wall_s": round(revs_wall, 2),
               "ratio": round(revs_rate / plain_rate, 3)}
        print(json.dumps(out, indent=2))
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
