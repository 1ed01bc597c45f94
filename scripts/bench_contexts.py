#!/usr/bin/env python
"""Benchmark ``ngram-dask contexts`` against the build's explode, per token, in one run.

    .venv/bin/python scripts/bench_contexts.py                      # 5e7 real tokens
    .venv/bin/python scripts/bench_contexts.py --tokens 1e9 --cores 64   # the big one
    .venv/bin/python scripts/bench_contexts.py --tokens 1e9 --top-min-frac 0.27   # prompts at half the positions

Makes (or reuses) the build benchmark's corpus (``benchkit.corpus``: real text tokenized
with the bundled GPT-NeoX tokenizer, 2048-token samples, MDS with zstd), builds it with
the top step (top tables), then runs ``contexts`` on the same LocalCluster settings.
It prints, per stage: wall seconds, the sum of the tasks' own seconds (from their
markers: what a task costs, whatever the cluster), and both per million tokens. The
target: contexts at most half the explode's time per token.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchkit.corpus import REPO, TOKENIZER, VOCAB, make_corpus  # noqa: E402


def task_seconds(pattern: Path) -> tuple[float, int]:
    secs, n = 0.0, 0
    for m in pattern.parent.glob(pattern.name):
        secs += json.loads(m.read_text()).get("seconds", 0.0)
        n += 1
    return secs, n


def phase_seconds(pattern: Path) -> dict[str, float]:
    """The contexts units' own phases (read, scan, write), summed over their markers."""
    out: dict[str, float] = {}
    for m in pattern.parent.glob(pattern.name):
        for name, secs in json.loads(m.read_text()).get("phases", {}).items():
            out[name] = out.get(name, 0.0) + secs
    return out


def warm_tasks(mds: Path, out: Path, ctx_dir: Path, per_task: int) -> dict:
    from ngram_dask.contexts import task as ctask
    from ngram_dask.inputs import group_pieces, plan_input
    from ngram_dask.ngrams.counting import derived_in_aggregate
    from ngram_dask.ngrams.explode import ExplodeSettings, explode_group

    group = group_pieces(plan_input(str(mds)).pieces, 34_000_000)[0]
    xs = ExplodeSettings(work_dir=str(out / "warm-explode"), ngrams=(2, 3), chunks=16, vocab_size=VOCAB,
                         token_dtype="uint16", derived=derived_in_aggregate([2, 3], False))
    cs = ctask.ContextsSettings(dir=str(ctx_dir), token_dtype="uint16", vocab_size=VOCAB, per_task=per_task,
                                seed=0, before=32, after=8)
    times: dict = {}
    for _ in range(3):  # alternately, the fastest of three: other jobs on the machine vary
        for name, run, done in (("explode", lambda: explode_group(group, xs), out / "warm-explode"),
                                ("contexts", lambda: ctask.contexts_group(group, cs), ctx_dir / "_done")):
            shutil.rmtree(done if name == "contexts" else done / "explode" / "_done", ignore_errors=True)
            t0, c0 = time.perf_counter(), time.process_time()
            run()
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            times[name] = min(times.get(name, wall), wall)
            times[name + "_cpu"] = min(times.get(name + "_cpu", cpu), cpu)
    times["tokens"] = sum(r.tokens for r in group.pieces)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=float, default=5e7, help="corpus size (rounded up to whole samples)")
    ap.add_argument("--real-tokens", type=float, default=1.28e8, help="at most this many tokens of real text")
    ap.add_argument("--synthetic", action="store_true", help="Zipf tokens instead of real text")
    ap.add_argument("--shard-mib", type=int, default=16, help="MDS size_limit per shard (MiB)")
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 2, help="LocalCluster workers")
    ap.add_argument("--chunks", type=int, default=16, help="K of the build")
    ap.add_argument("--memory-limit", default="4GiB")
    ap.add_argument("--cache", default=str(REPO / "bench-data"))
    ap.add_argument("--out", default=None, help="work folder (default: <cache>/contexts-bench-<tokens>)")
    ap.add_argument("--per-task", type=int, default=5)
    ap.add_argument("--top-min-frac", type=float, default=None,
                    help="both top tables' frac_max threshold (default: the config's 0.5); lower means more prompts")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    from ngram_dask.config import load_config
    from ngram_dask.contexts.run import run_contexts
    from ngram_dask.ngrams.pipeline import run_build

    tokens = int(args.tokens)
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    mds, _ = make_corpus(cache, tokens, args.shard_mib << 20, args.synthetic, print, args.real_tokens)
    out = Path(args.out or cache / f"contexts-bench-{tokens}")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    base = {"input": str(mds), "work_dir": str(out / "work"), "db": str(out / "catalog.duckdb"),
            "tokenizer": str(TOKENIZER), "vocab_size": VOCAB, "build.chunks": args.chunks,
            "cluster.n_workers": args.cores, "cluster.threads_per_worker": 1,
            "cluster.memory_limit": args.memory_limit, "cluster.dashboard_address": ":0",
            "contexts.per_task": args.per_task,
            **({"top.top_bigram_min_frac": args.top_min_frac, "top.top_trigram_min_frac": args.top_min_frac}
               if args.top_min_frac is not None else {})}
    quiet = lambda m: None  # noqa: E731
    t0 = time.perf_counter()
    build = run_build(load_config(None, base), announce=quiet)
    build_wall = time.perf_counter() - t0
    t0 = time.perf_counter()
    ctx = run_contexts(load_config(None, base), announce=quiet)
    ctx_wall = time.perf_counter() - t0
    ex_secs, ex_tasks = task_seconds(out / "work" / "explode" / "_done" / "*.json")
    cx_secs, cx_tasks = task_seconds(Path(ctx.dir) / "_done" / "*.json")
    phases = phase_seconds(Path(ctx.dir) / "_done" / "*.json")
    n = build.tokens
    rows = [
        ("explode", ex_tasks, build.seconds.get("explode", 0.0), ex_secs),
        ("contexts", cx_tasks, ctx.seconds.get("contexts", 0.0), cx_secs),
    ]
    print(f"\ncorpus {mds}: {n:,} tokens; {args.cores} worker(s); prompts: "
          + ", ".join(f"{t} {k:,}" for t, k in ctx.prompts.items())
          + f"; occurrences {sum(ctx.occurrences.values()):,} ({sum(ctx.occurrences.values()) / n:.1%} of "
          f"positions); examples {ctx.rows:,}")
    print(f"{'stage':<10} {'tasks':>6} {'wall s':>8} {'task s':>8} {'wall s/1e6 tok':>15} {'task s/1e6 tok':>15}")
    for name, k, wall, secs in rows:
        print(f"{name:<10} {k:>6} {wall:8.2f} {secs:8.2f} {wall / n * 1e6:15.4f} {secs / n * 1e6:15.4f}")
    ratio_wall = rows[1][2] / rows[0][2] if rows[0][2] else float("nan")
    ratio_task = rows[1][3] / rows[0][3] if rows[0][3] else float("nan")
    print(f"contexts / explode per token: wall {ratio_wall:.2f}x, task time {ratio_task:.2f}x (target <= 0.5x)")
    print("contexts units' time: " + ", ".join(f"{name} {secs:.2f} s" for name, secs in phases.items()))
    print(f"contexts write (merge + one transaction): {ctx.seconds.get('write', 0.0):.2f} s; "
          f"whole build {build_wall:.1f} s, whole contexts {ctx_wall:.1f} s")
    # One process, warm (each task run twice on the same piece, the second timed): what one
    # task costs without a worker's first-task imports and page faults, or a busy scheduler.
    warm = warm_tasks(mds, out, Path(ctx.dir), args.per_task)
    print(f"one process, warm, the same {warm['tokens']:,}-token piece: explode task {warm['explode']:.2f} s, "
          f"contexts task {warm['contexts']:.2f} s: {warm['contexts'] / warm['explode']:.2f}x; CPU seconds "
          f"(process_time, all threads) {warm['explode_cpu']:.2f} and {warm['contexts_cpu']:.2f}: "
          f"{warm['contexts_cpu'] / warm['explode_cpu']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"tokens": n, "rows": rows, "ratio_wall": ratio_wall,
                                               "ratio_task": ratio_task, "phases": phases, "warm": warm}, indent=1))


if __name__ == "__main__":
    main()
