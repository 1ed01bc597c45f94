#!/usr/bin/env python
"""Benchmark `ngram-dask build` against a faithful re-implementation of the original.

    .venv/bin/python scripts/bench_build.py                 # 50M real tokens, 3 runs each
    .venv/bin/python scripts/bench_build.py --tokens 5e6 --runs 1   # quick look
    .venv/bin/python scripts/bench_build.py --scale 4 --only-ours   # peak RSS at 4x

The corpus is real text (Python sources and docs found on this machine, in a fixed
order) tokenized with the GPT-NeoX tokenizer, cut into 2048-token samples and
written with ``streaming.MDSWriter`` (zstd) -- or, with ``--synthetic``, i.i.d.
Zipf tokens. It is cached under ``bench-data/`` and reused.

The baseline is the original ``build_ngrams.py`` algorithm: per batch of samples a
numpy n-gram array -> pandas DataFrame -> DuckDB ``group by`` with
``COPY ... (FORMAT parquet, PARTITION_BY (id0_chunk))``; then per chunk
``sum(count) group by`` into one DuckDB file (bigrams_raw -> bigrams, and the
trigram chunks recombined to one Parquet file each, then inserted), prefix tables
by SQL. It gets the same cores: step 1 runs on a ``multiprocessing`` pool of one
process per core (DuckDB 1 thread each); the per-chunk steps run in one process
with DuckDB on every core, as the original did. It reads shards with
``ngram_dask.mds`` rather than ``streaming.StreamingDataset``: the same bytes and
zstd frames, without the 7 s torch import per process, so the baseline only gains.

Every build runs in a fresh child process; a sampler thread here records the peak
RSS of every process of its tree (``psutil``) every 50 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchkit.baseline import run_baseline
from benchkit.corpus import REPO, VOCAB, make_corpus
from benchkit.memory import RssSampler, du

# ----------------------------------------------------------------------------- ours


def run_ours(mds_root: str, work: str, db_path: str, workers: int, chunks: int,
             steps_split: bool, memory_limit: str, method: str = "auto") -> dict:
    from ngram_dask.config import load_config
    from ngram_dask.ngrams.pipeline import run_build

    base = {"input": mds_root, "work_dir": work, "db": db_path, "vocab_size": VOCAB,
            "build.chunks": chunks, "cluster.n_workers": workers, "cluster.threads_per_worker": 1,
            "cluster.memory_limit": memory_limit, "cluster.dashboard_address": ":0",
            "build.aggregate_method": method}
    stages = {}
    t0 = time.perf_counter()
    if steps_split:  # one build in three invocations, to time load apart from aggregate
        for step in ("explode", "aggregate", "load"):
            ts = time.perf_counter()
            report = run_build(load_config(None, {**base, "build.steps": [step]}), announce=lambda m: None)
            stages[step] = time.perf_counter() - ts
    else:
        report = run_build(load_config(None, {**base, "build.steps": ["explode", "aggregate", "load"]}),
                           announce=lambda m: None)
        stages = dict(report.seconds)
    stages["load (inside aggregate+load)" if not steps_split else "load (transactions)"] = report.load_seconds
    seconds = time.perf_counter() - t0
    agg = _aggregate_markers(work)
    return {"tokens": report.tokens, "stages": stages, "seconds": seconds,
            "scratch": {"explode": du(Path(work) / "explode"),
                        "total": du(Path(work) / "explode") + du(Path(work) / "aggregate")},
            "aggregate_paths": agg}


def _aggregate_markers(work: str) -> dict:
    paths: dict[str, int] = {}
    secs = 0.0
    for m in Path(work, "aggregate").glob("n=*/_done/*.json"):
        d = json.loads(m.read_text())
        paths[d.get("path", "duckdb")] = paths.get(d.get("path", "duckdb"), 0) + 1
        secs += d.get("seconds", 0.0)
    return {"paths": paths, "task_seconds": round(secs, 2)}


# ----------------------------------------------------------------------------- floor


def run_floor(mds_root: str, chunks: int) -> dict:
    """Explode's floor, one core: read every shard, pack its keys and sort them (the
    counting core on each shard, no files written, no Dask)."""
    from ngram_dask.mds import list_shards, read_shard
    from ngram_dask.ngrams import counting

    t0 = time.perf_counter()
    tokens = 0
    for ref in list_shards(mds_root):
        d = read_shard(ref, "uint16", VOCAB)
        counting.count_by_chunk(d.tokens, d.offsets, (2, 3), 16, chunks)
        tokens += int(d.offsets[-1])
    return {"tokens": tokens, "seconds": time.perf_counter() - t0, "stages": {}, "scratch": {}}


def run_aggregate_floor(work: str) -> dict:
    """Aggregate's floor, one core: every chunk's partial rows already in memory, merged
    (sum per key) and turned into the prefix table; reading and writing files excluded."""
    import pyarrow as pa

    from ngram_dask.ngrams import aggregate, partfile

    merge_s, rows_in, rows_out = 0.0, 0, 0
    for n, chunk in _explode_chunks(work):
        tables = [t for b in aggregate.chunk_sources(work, n, chunk)
                  for t in partfile.read_blocks(b, slice(None), [f"id{j}" for j in range(n)] + ["count"])]
        table = pa.concat_tables(tables).combine_chunks() if tables else None
        if table is None or table.num_rows == 0:
            continue
        ids = [table.column(f"id{j}").to_numpy() for j in range(n)]
        counts = table.column("count").to_numpy()
        t0 = time.perf_counter()
        keys, sums = aggregate.merge_partials(n, ids, counts, 16)
        if n >= 2:
            aggregate.prefix_rows(n, keys, sums, 16)
        merge_s += time.perf_counter() - t0
        rows_in += table.num_rows
        rows_out += len(keys)
    return {"seconds": merge_s, "rows_in": rows_in, "rows_out": rows_out, "tokens": 0, "stages": {}, "scratch": {}}


def _explode_chunks(work: str) -> list[tuple[int, int]]:
    """Every (n, chunk) of a work dir's explode output (its manifest's K)."""
    chunks = int(json.loads(Path(work, "manifest.json").read_text())["chunks"])
    ns = sorted(int(p.name.split("=")[1]) for p in Path(work, "explode").glob("n=*"))
    return [(n, c) for n in ns for c in range(chunks)]


def run_load_floor(work: str, db_path: str, threads: int) -> dict:
    """Load's floor: one ``INSERT ... SELECT`` per table of the same final rows (the
    aggregate's chunk files) into an empty DuckDB file."""
    import duckdb

    from ngram_dask.schema import create_sql, ngram_columns, ngram_table, prefix_columns, prefix_table

    t0 = time.perf_counter()
    con = duckdb.connect(db_path)
    con.execute(f"SET threads = {threads}")
    con.execute("SET preserve_insertion_order = false")
    rows = 0
    for n in (2, 3):
        for table, cols, kind in ((ngram_table(n), ngram_columns(n, VOCAB), "ngrams"),
                                  (prefix_table(n), prefix_columns(n, VOCAB), "prefixes")):
            files = sorted(str(p) for p in Path(work, "aggregate", f"n={n}", kind).glob("*.parquet"))
            con.execute(create_sql(table, cols))
            con.execute(f"INSERT INTO {table} SELECT * FROM read_parquet(?, hive_partitioning = false)", [files])
            rows += con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    con.execute("CHECKPOINT")
    con.close()
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "rows": rows, "db_bytes": os.path.getsize(db_path), "tokens": 0,
            "stages": {}, "scratch": {}}


def compare_aggregate_engines(work: str, sample: int = 16) -> list[dict]:
    """The same chunks aggregated by the numpy merge and by DuckDB (1 thread each), timed."""
    from ngram_dask.ngrams import aggregate

    out = []
    dirs = _explode_chunks(work)
    step = max(1, len(dirs) // sample)
    # the first chunk twice: its first pass pays each engine's imports and is not kept
    for i, (n, chunk) in enumerate([dirs[0]] + dirs[::step][:sample]):
        row = {"n": n, "chunk": chunk}
        for method in ("numpy", "duckdb"):
            scratch = Path(work).parent / f"engine-{method}"
            shutil.rmtree(scratch, ignore_errors=True)
            (scratch / "explode").mkdir(parents=True)
            os.symlink(Path(work, "explode").resolve() / f"n={n}", scratch / "explode" / f"n={n}")
            s = aggregate.AggregateSettings(work_dir=str(scratch), method=method, threads=1,
                                            memory_limit_bytes=4 << 30)
            t0 = time.perf_counter()
            res = aggregate.aggregate_chunk(n, chunk, s)
            row[method] = time.perf_counter() - t0
            row["rows"] = res["rows"]
            shutil.rmtree(scratch, ignore_errors=True)
        if i:
            out.append(row)
    return out


def run_child(kind: str, args, extra: dict) -> dict:
    """Run one build in a fresh process tree; return its JSON result plus peak RSS."""
    spec = {"kind": kind, **extra}
    cmd = [sys.executable, str(Path(__file__).resolve()), "_child", json.dumps(spec)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    with RssSampler(proc.pid) as sampler:
        out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"{kind} run failed ({proc.returncode}):\n{err[-4000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    result["rss"] = sampler.summary()
    return result


def child_main(spec: dict) -> None:
    kind = spec["kind"]
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if kind == "baseline":
        res = run_baseline(spec["mds"], spec["work"], spec["db"], spec["procs"], spec["batch_samples"],
                           spec["chunks"])
    elif kind == "ours":
        res = run_ours(spec["mds"], spec["work"], spec["db"], spec["workers"], spec["chunks"],
                       spec.get("steps_split", False), spec["memory_limit"], spec.get("method", "auto"))
    elif kind == "floor":
        res = run_floor(spec["mds"], spec["chunks"])
    elif kind == "aggregate_floor":
        res = run_aggregate_floor(spec["work"])
    elif kind == "load_floor":
        res = run_load_floor(spec["work"], spec["db"], spec["threads"])
    else:
        raise SystemExit(f"unknown child kind {kind}")
    print(json.dumps(res))


def compare_databases(ours: str, baseline: str) -> dict[str, int]:
    """Rows that differ between the two databases, per table (0 everywhere = identical)."""
    import duckdb

    con = duckdb.connect()
    con.execute(f"ATTACH '{ours}' AS o (READ_ONLY)")
    con.execute(f"ATTACH '{baseline}' AS b (READ_ONLY)")
    tables = {
        "bigrams": "id0, id1, CAST(count AS UBIGINT)",
        "trigrams": "id0, id1, id2, CAST(count AS UBIGINT)",
        "bigram_prefixes": "id0, id1, sum_count, CAST(max_count AS UBIGINT), frac_max",
        "trigram_prefixes": "id0, id1, id2, sum_count, CAST(max_count AS UBIGINT), frac_max",
    }
    diff = {}
    for t, cols in tables.items():
        a = f"SELECT {cols} FROM o.{t}"
        b = f"SELECT {cols} FROM b.{t}"
        n = con.execute(f"SELECT (SELECT count(*) FROM ({a} EXCEPT ALL {b})) + "
                        f"(SELECT count(*) FROM ({b} EXCEPT ALL {a}))").fetchone()[0]
        rows = con.execute(f"SELECT count(*) FROM o.{t}").fetchone()[0]
        diff[t] = (int(n), int(rows))
    con.close()
    return diff


def fmt_bytes(b: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if b < 1024 or unit == "GiB":
            return f"{b:.1f} {unit}" if unit != "B" else f"{int(b)} B"
        b /= 1024
    return str(b)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "_child":
        child_main(json.loads(sys.argv[2]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=float, default=50e6, help="corpus size (rounded up to whole samples)")
    ap.add_argument("--scale", type=int, default=1, help="multiply the corpus (run once, ours only)")
    ap.add_argument("--synthetic", action="store_true", help="Zipf tokens instead of real text")
    ap.add_argument("--real-tokens", type=float, default=1.28e8,
                    help="tokenize at most this much real text; a larger corpus repeats it with its "
                         "rare tokens renamed per copy (distinct n-grams keep growing)")
    ap.add_argument("--shard-mib", type=int, default=16, help="MDS size_limit per shard (MiB)")
    ap.add_argument("--runs", type=int, default=3, help="alternating runs of each build")
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 2, help="workers / pool processes")
    ap.add_argument("--chunks", type=int, default=64, help="K: id0 %% K chunks")
    ap.add_argument("--baseline-batch-samples", type=int, default=4096,
                    help="samples per baseline step-1 batch (the original: 2**17 on a 512 GB box)")
    ap.add_argument("--memory-limit", default="4GiB", help="Dask worker memory limit for ours")
    ap.add_argument("--cache", default=str(REPO / "bench-data"))
    ap.add_argument("--only-ours", action="store_true", help="skip the baseline (e.g. with --scale 4)")
    ap.add_argument("--no-extras", action="store_true", help="skip floor, stage split and 1-worker run")
    ap.add_argument("--json", help="also write all results here")
    ap.add_argument("--corpus-only", action="store_true", help="make (or check) the corpus and stop")
    ap.add_argument("--no-engine-compare", action="store_true", help="skip timing numpy vs DuckDB per chunk")
    args = ap.parse_args()
    log = lambda m: print(m, flush=True)  # noqa: E731

    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    tokens = int(args.tokens) * args.scale
    mds, info = make_corpus(cache, tokens, args.shard_mib << 20, args.synthetic, log, args.real_tokens)
    from ngram_dask.mds import list_shards

    shards = list_shards(str(mds))
    log(f"corpus {mds}: {info['tokens']:,} tokens in {len(shards)} shards, "
        f"{info['distinct_tokens']:,} distinct tokens, {info['distinct_trigrams']:,} distinct trigrams")
    log("  distinct bigrams, trigrams as the corpus grows: " + "; ".join(
        f"{t / 1e6:,.0f}M tokens -> {b / 1e6:.2f}M, {d / 1e6:.2f}M" for t, b, d in info["distinct_growth"]))
    if args.corpus_only:
        return
    runs_dir = cache / "runs"
    common = {"mds": str(mds), "chunks": args.chunks}

    def fresh(name):
        d = runs_dir / name
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        return d

    def one(kind, **extra):
        d = fresh(kind)
        spec = {**common, "work": str(d / "work"), "db": str(d / "ngrams.duckdb"), **extra}
        if kind == "baseline":
            spec.update(procs=args.cores, batch_samples=args.baseline_batch_samples)
        else:
            spec.update(workers=extra.get("workers", args.cores), memory_limit=args.memory_limit)
        res = run_child(kind, args, spec)
        res["db_bytes"] = os.path.getsize(spec["db"]) if os.path.exists(spec["db"]) else 0
        res["db"] = spec["db"]
        log(f"  {kind:<8} {res['seconds']:7.2f} s  {res['tokens'] / res['seconds'] / 1e6:6.2f}M tok/s  "
            f"stages {json.dumps({k: round(v, 2) for k, v in res['stages'].items()})}  "
            f"peak RSS {json.dumps({k: fmt_bytes(v) for k, v in res['rss'].items()})}")
        return res

    results: dict = {"corpus": info, "shards": len(shards), "cores": args.cores, "runs": {}}
    if args.only_ours:
        res = one("ours")
        results["runs"]["ours"] = [res]
    else:
        base_runs, our_runs = [], []
        for i in range(args.runs):
            log(f"run {i + 1}/{args.runs}")
            # Alternate which goes first, so background load hits both alike.
            order = ("baseline", "ours") if i % 2 == 0 else ("ours", "baseline")
            for kind in order:
                r = one(kind)
                (base_runs if kind == "baseline" else our_runs).append(r)
                if kind == "ours":
                    r_ours_db = r["db"]
                if kind == "baseline":
                    r_base_db = r["db"]
            if i == 0:
                diff = compare_databases(r_ours_db, r_base_db)
                results["identical"] = diff
                log("  databases: " + ", ".join(f"{t} {rows:,} rows, {n} differ" for t, (n, rows) in diff.items()))
                if any(n for n, _ in diff.values()):
                    raise SystemExit("the two databases differ")
        results["runs"] = {"baseline": base_runs, "ours": our_runs}
        if not args.no_extras:
            run_extras(results, args, common, runs_dir, one, log)
    print_report(results, args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))


def run_extras(results: dict, args, common: dict, runs_dir: Path, one, log) -> None:
    """Floors measured in the same run, on the last build's own work dir where they need it."""
    log("extras")
    work = runs_dir / "ours" / "work"
    results["floor"] = run_child("floor", args, {**common})
    log(f"  floor explode (1 core) {results['floor']['seconds']:7.2f} s")
    results["aggregate_floor"] = run_child("aggregate_floor", args, {**common, "work": str(work)})
    log(f"  floor aggregate (1 core) {results['aggregate_floor']['seconds']:7.2f} s")
    results["load_floor"] = {}
    for threads in (1, 2):
        db = runs_dir / f"load-floor-{threads}.duckdb"
        db.unlink(missing_ok=True)
        results["load_floor"][threads] = run_child("load_floor", args, {**common, "work": str(work), "db": str(db),
                                                                        "threads": threads})
        db.unlink(missing_ok=True)
        log(f"  floor load, {threads} DuckDB thread(s) {results['load_floor'][threads]['seconds']:7.2f} s")
    if not args.no_engine_compare:
        results["engines"] = compare_aggregate_engines(str(work))
        log("  aggregate engines (s): " + ", ".join(f"n={e['n']} c={e['chunk']} {e['rows']:,} rows numpy "
                                                     f"{e['numpy']:.2f} duckdb {e['duckdb']:.2f}"
                                                     for e in results["engines"][:6]))
    results["split"] = one("ours", steps_split=True)
    results["one_worker"] = one("ours", workers=1)


def print_report(r: dict, args) -> None:
    info = r["corpus"]
    tokens = info["tokens"]
    print()
    print(f"corpus: {info['kind']}, {tokens:,} tokens, {r['shards']} MDS shards of <= {args.shard_mib} MiB "
          f"(zstd), {info['distinct_tokens']:,} distinct tokens, {info['distinct_trigrams']:,} distinct trigrams")
    print(f"machine: {os.cpu_count()} cores, {_mem_gib():.0f} GiB; {r['cores']} workers / pool processes")
    print()

    def med(xs):
        return statistics.median(xs)

    rows = []
    for kind in ("baseline", "ours"):
        runs = r["runs"].get(kind) or []
        if not runs:
            continue
        secs = [x["seconds"] for x in runs]
        # Pool / worker processes: every child but the resource tracker (the role guess
        # from the command line can miss while a process is still starting).
        workers = max(max([v for k, v in x["rss"].items() if k not in ("main", "helper")] or [0])
                      for x in runs)
        main_rss = max(x["rss"].get("main", 0) for x in runs)
        rows.append((kind, secs, workers, main_rss, runs[0]))
    print("| build | wall s (median, min-max) | M tokens/s | peak RSS worker | peak RSS main | "
          "scratch B/token (explode, total) | database |")
    print("|---|---|---|---|---|---|---|")
    for kind, secs, w, m, first in rows:
        sc = first["scratch"]
        print(f"| {kind} | {med(secs):.1f} ({min(secs):.1f}-{max(secs):.1f}) | {tokens / med(secs) / 1e6:.2f} | "
              f"{fmt_bytes(w)} | {fmt_bytes(m)} | {sc['explode'] / tokens:.2f}, {sc['total'] / tokens:.2f} | "
              f"{fmt_bytes(first['db_bytes'])} |")
    if len(rows) == 2:
        b, o = rows[0][1], rows[1][1]
        ratios = [x / y for x in b for y in o]
        print(f"\nspeed-up ours vs baseline: median {med(b) / med(o):.2f}x "
              f"(min {min(ratios):.2f}x, max {max(ratios):.2f}x over all run pairs)")
        bs, os_ = rows[0][4]["scratch"], rows[1][4]["scratch"]
        print(f"scratch ours / baseline: explode {os_['explode'] / bs['explode']:.2f}x, "
              f"total {os_['total'] / bs['total']:.2f}x")
        bexp = med([x["stages"]["explode"] for x in r["runs"]["baseline"]])
        oexp = med([x["stages"]["explode"] for x in r["runs"]["ours"]])
        print(f"explode: baseline step 1 {bexp:.1f} s, ours {oexp:.1f} s -> {bexp / oexp:.2f}x "
              f"(same {r['cores']} cores: per core the same ratio)")
        for kind in ("baseline", "ours"):
            st = r["runs"][kind][0]
            if "aggregate_paths" in st:
                print(f"aggregate paths ({kind}): {st['aggregate_paths']}")
    cores = r["cores"]
    if "floor" in r and "split" in r and r["runs"].get("ours"):
        split = r["split"]["stages"]
        ours_explode = med([x["stages"]["explode"] for x in r["runs"]["ours"]])
        f_exp = r["floor"]["seconds"] / cores
        f_agg = r["aggregate_floor"]["seconds"] / cores
        lf = r["load_floor"]
        best_threads = min(lf, key=lambda t: lf[t]["seconds"])
        f_load = lf[best_threads]["seconds"]
        load = split.get("load (transactions)", 0.0)
        print("\neach stage against its floor (same run, same corpus; floors of 1-core work are divided "
              f"by the {cores} cores):")
        print("| stage | ours s | floor s | ours / floor | the floor |")
        print("|---|---|---|---|---|")
        print(f"| explode | {ours_explode:.1f} | {f_exp:.1f} | {ours_explode / f_exp:.2f} | read, pack and sort "
              f"every shard in one process ({r['floor']['seconds']:.1f} s on 1 core) |")
        print(f"| aggregate | {split['aggregate']:.1f} | {f_agg:.1f} | {split['aggregate'] / f_agg:.2f} | merge "
              f"the same {r['aggregate_floor']['rows_in']:,} partial rows in memory "
              f"({r['aggregate_floor']['seconds']:.1f} s on 1 core; our stage includes cluster start) |")
        print(f"| load | {load:.1f} | {f_load:.1f} | {load / f_load:.2f} | one INSERT ... SELECT per table of the "
              f"same {lf[best_threads]['rows']:,} final rows into an empty file ({best_threads} DuckDB threads) |")
        ours_db = r["runs"]["ours"][0]["db_bytes"]
        print(f"| catalog file | {fmt_bytes(ours_db)} | {fmt_bytes(lf[best_threads]['db_bytes'])} | "
              f"{ours_db / lf[best_threads]['db_bytes']:.2f} | the floor's file |")
        print("load floor by DuckDB threads: " + ", ".join(f"{t}: {v['seconds']:.1f} s" for t, v in lf.items()))
        print("stage split (one build in three invocations, each incl. cluster start): "
              + ", ".join(f"{k} {v:.1f} s" for k, v in split.items()))
    if r.get("engines"):
        e = r["engines"]
        print("aggregate engines on the same chunks (1 thread, incl. reading and writing): numpy "
              f"{sum(x['numpy'] for x in e):.2f} s, DuckDB {sum(x['duckdb'] for x in e):.2f} s over {len(e)} chunks "
              f"({sum(x['rows'] for x in e):,} final rows)")
    if "one_worker" in r and r["runs"].get("ours"):
        one_s = r["one_worker"]["seconds"]
        two_s = med([x["seconds"] for x in r["runs"]["ours"]])
        print(f"scaling: 1 worker {one_s:.1f} s, {cores} workers {two_s:.1f} s (median) -> "
              f"{one_s / two_s:.2f}x speed-up")
    growth = info.get("distinct_growth")
    if growth:
        print("distinct n-grams as the corpus grows: " + "; ".join(
            f"{t:,} tokens: {b:,} bigrams, {d:,} trigrams" for t, b, d in growth))


def _mem_gib() -> float:
    import psutil

    return psutil.virtual_memory().total / 2**30


if __name__ == "__main__":
    main()
