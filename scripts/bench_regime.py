#!/usr/bin/env python
"""`build --plan` against real builds, the per-core rates it ships, and the regime benchmark.

    .venv/bin/python scripts/bench_regime.py rates   --tokens 2e7          # -> ngram_dask/ngrams/rates.json
    .venv/bin/python scripts/bench_regime.py compare --tokens 2e8          # plan vs build, two clusters
    .venv/bin/python scripts/bench_regime.py regime  --tokens 2e8          # chunks in many key ranges
    .venv/bin/python scripts/bench_regime.py duckdb  --tokens 1e9 --clusters 2x1GiB,2x4GiB  # against plain DuckDB
    .venv/bin/python scripts/bench_regime.py big     --tokens 1e10 --clusters 2x4GiB   # issue 28, item 4

The corpus is the build benchmark's (``benchkit.corpus``: real text, then copies with rare
tokens renamed so distinct n-grams keep growing), cached under ``--cache``. Each build
runs in a fresh child process; a sampler thread records the peak RSS of every process of
its tree. Nothing here is a test: the machine may be shared, so say so beside the figures.

* ``rates``: three builds (2 workers of 4 GiB and of 1 GiB at K = 64, of 4 GiB at K = 8):
  an explode unit's core-seconds against its tokens (a power law), a chunk unit's against
  its partial rows, its key ranges' size and the explode units it reads, loaded rows per
  core-second, bytes per catalog row, peak explode bytes per token: the JSON ``--write``
  stores as the package's ``rates.json``.
* ``compare``: ``plan_build`` then the build, for each cluster of ``--clusters``
  (``workers x memory``); every figure the plan predicts beside what happened, and the ratio.
* ``regime``: the aggregate + load of one explode output (``--reuse-work``, or exploded
  here), alternating: with memory plentiful (one key range per chunk), and with a budget that
  cuts each chunk into about ``--ranges`` ranges (``build --plan`` for the deduplicated Pile
  on a 64-core / 512 GB box at K = 64 says 10: a chunk's ~481M partial rows, ~38.5 GiB, over
  a 4 GiB budget); the ratio of the two times (target <= 1.25x).
* ``duckdb``: the whole build (explode, aggregate, load) against plain DuckDB
  (``benchkit.plain_duckdb``: one streaming ``GROUP BY`` over packed keys, spilling to
  disk) at equal memory: for each cluster of ``--clusters``, DuckDB's ``memory_limit`` is
  the workers' memory plus the single writer's DuckDB limit. Ours runs twice a round: as
  it plans itself, and in the Pile's regime (an aggregate budget of a chunk's partial rows
  over ``--ranges``). Alternating, ``--runs`` rounds; the tables' row counts and sums are
  compared, so a faster wrong build shows.
* ``big``: the largest build (1e10 tokens is hours of this machine alone, and ~25 GB of
  MDS plus the work dir on disk): ``compare`` for the first cluster of ``--clusters``, then
  ``verify`` and a brute-force check of ``--verify-samples`` trigrams (half drawn from the
  catalog, half from random positions of the token stream) counted over every shard.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchkit.corpus import REPO, VOCAB, make_corpus
from benchkit.memory import RssSampler, du


def child_main(spec: dict) -> None:
    """One build in this process (its LocalCluster's workers are our children): JSON out."""
    from ngram_dask.config import load_config
    from ngram_dask.ngrams.pipeline import run_build

    t0 = time.perf_counter()
    report = run_build(load_config(None, spec["overrides"]), announce=lambda m: None)
    print(json.dumps({"seconds": dict(report.seconds), "load_seconds": report.load_seconds,
                      "tokens": report.tokens, "wall": time.perf_counter() - t0}))


def plain_main(spec: dict) -> None:
    """Plain DuckDB in this process: JSON out."""
    from benchkit.plain_duckdb import run_plain_duckdb

    print(json.dumps(run_plain_duckdb(**spec)))


def _run_sampled(mode: str, spec: dict) -> tuple[int, dict | str]:
    """This script's ``mode`` in a child process, its tree's peak RSS sampled: ``(returncode,
    its JSON result with "rss" added, or its stderr)``."""
    cmd = [sys.executable, str(Path(__file__).resolve()), mode, json.dumps(spec)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    with RssSampler(proc.pid) as sampler:
        out, err = proc.communicate()
    if proc.returncode != 0:
        return proc.returncode, err
    return 0, {**json.loads(out.strip().splitlines()[-1]), "rss": sampler.summary()}


def run_plain(spec: dict) -> dict:
    """Plain DuckDB in a child; a failure (out of memory) is a result: ``{"failed": its last line}``."""
    code, result = _run_sampled("_plain", spec)
    if code:
        return {"failed": ((result.strip().splitlines() or ["?"])[-1])[:200], "rss": {}}
    return result


def run_child(overrides: dict) -> dict:
    code, result = _run_sampled("_child", {"overrides": overrides})
    if code:
        raise SystemExit(f"build failed ({code}):\n{result[-4000:]}")
    return result


def overrides_for(mds: str, root: Path, workers: int, memory: str, chunks: int, **extra) -> dict:
    return {"input": mds, "work_dir": str(root / "work"), "db": str(root / "catalog.duckdb"),
            "vocab_size": VOCAB, "build.chunks": chunks, "build.steps": ["explode", "aggregate", "load"],
            "cluster.n_workers": workers, "cluster.threads_per_worker": 1, "cluster.memory_limit": memory,
            "cluster.dashboard_address": ":0", **extra}


def measured(root: Path, result: dict) -> dict:
    """What a finished build did, from its markers, its files and its timings."""
    work = root / "work"
    explode = [json.loads(p.read_text()) for p in (work / "explode" / "_done").glob("*.json")]
    aggregate = [json.loads(p.read_text()) for p in (work / "aggregate").glob("n=*/_done/*.json")]
    partial = sum(sum(e.get("distinct", {}).values()) + sum(e.get("tails", {}).values()) for e in explode)
    final = sum(a["rows"] + a["prefix_rows"] for a in aggregate)
    files = sum(1 for p in work.rglob("*") if p.is_file() and p.name != "manifest.json")
    secs = result["seconds"]
    return {
        "units": len(explode), "partial_rows": partial, "final_rows": final, "files": files,
        "scratch_bytes": du(work), "catalog_bytes": (root / "catalog.duckdb").stat().st_size,
        "ranges_max": max((a.get("ranges", 1) for a in aggregate), default=0),
        "seconds": {"explode": secs.get("explode", 0.0),
                    "aggregate": secs.get("aggregate+load", 0.0) - result["load_seconds"],
                    "load": result["load_seconds"]},
        "peak_worker_rss": result["rss"].get("worker", 0), "peak_client_rss": result["rss"].get("main", 0),
    }


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "CPU unknown"


def _markers(root: Path, step: str) -> list[dict]:
    pattern = "explode/_done/*.json" if step == "explode" else "aggregate/n=*/_done/*.json"
    return [json.loads(p.read_text()) for p in (root / "work").glob(pattern)]


def cmd_rates(args, mds: str, info: dict) -> None:
    """Three builds: 4 GiB workers (units of ~75M tokens), 1 GiB workers (~10M) and 4 GiB
    workers at K = 8 (chunk units of 8x the rows): a sort's cost per key grows with its
    size, and an aggregate reads one file per explode unit, so one size cannot tell the
    costs apart (the explode of a 1e9 build of
    10M-token units ran at 22.5M tokens a core-second, of 71M-token units at 16.8M)."""
    import numpy as np

    from ngram_dask.ngrams.plan import makespan

    load = os.getloadavg()[0]  # rates measured on a busy machine predict slow builds
    builds = {}
    # K = 8 makes chunk units of ~8x the rows: a sort's cost per row at a larger size.
    for memory, chunks in (("4GiB", args.chunks), ("1GiB", args.chunks), ("4GiB", 8)):
        root = Path(args.cache) / "runs" / f"rates-{memory}-K{chunks}"
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        result = run_child(overrides_for(mds, root, args.workers, memory, chunks))
        builds[f"{memory}, K = {chunks}"] = (root, measured(root, result))
    # Explode: core-seconds of a unit = S * (U / U0) ** p, least squares in log-log over the
    # units' own seconds (the step's wall time also holds the cluster's start).
    explode = [e for root, _ in builds.values() for e in _markers(root, "explode")]
    tokens = np.array([e["tokens"] for e in explode], float)
    secs = np.array([e["seconds"] for e in explode], float)
    u0 = float(2 ** 26)
    p, log_s = np.polyfit(np.log(tokens / u0), np.log(secs), 1)
    # The step's start (its graph, the workers' first imports, the count engine's timing):
    # its wall time less the units' own seconds run in order on the cores.
    start = [m["seconds"]["explode"] - makespan([e["seconds"] for e in sorted(_markers(root, "explode"),
                                                                              key=lambda e: e["group"])],
                                                args.workers)
             for root, m in builds.values()]
    # Aggregate: a chunk unit's seconds = fixed + per explode unit read + partial rows x a cost
    # per row growing as (rows per key range / R0) ** d: least squares for each d of a grid,
    # in errors relative to each unit's seconds (one slow unit must not decide the exponent).
    units = [a for root, _ in builds.values() for a in _markers(root, "aggregate")
             if "derived_from" not in a and a.get("partial_rows")]
    rows = np.array([a["partial_rows"] for a in units], float)
    range_rows = rows / np.array([a.get("ranges", 1) for a in units], float)
    r0 = float(2 ** 21)
    y = np.array([a["seconds"] for a in units])
    fits = []
    for d in np.arange(0.0, 1.001, 0.02):
        x = np.c_[np.ones_like(rows), [a["inputs"] for a in units], rows * (range_rows / r0) ** d] / y[:, None]
        coef, *_ = np.linalg.lstsq(x, np.ones_like(y), rcond=None)
        fits.append((float(np.sum((1 - x @ coef) ** 2)), float(d), coef))
    _, d, (fixed, per_read, per_row) = min(fits, key=lambda f: f[0])
    root4, m4 = builds[f"4GiB, K = {args.chunks}"]
    unit_tokens = max(e["tokens"] for e in _markers(root4, "explode"))
    cores = args.workers
    load_rates = [m["final_rows"] / (max(m["seconds"]["load"], 1e-3) * cores) for _, m in builds.values()]
    print(f"aggregate fit: relative residuals' sum of squares by exponent "
          f"{', '.join(f'{e:.2f}: {rss:.2f}' for rss, e, _ in fits[::5])}")
    rates = {
        "measured_on": f"{time.strftime('%Y-%m-%d')}, {cores} workers x 1 thread (of 4 GiB and 1 GiB at "
                       f"K = {args.chunks}, of 4 GiB at K = 8), "
                       f"a 2-core / 24 GiB machine ({_cpu_model()}; load average {load:.1f} before the builds), "
                       f"{info['tokens']:,} tokens of the build benchmark's corpus (scripts/bench_regime.py rates)",
        "explode_unit_seconds": {"tokens": int(u0), "seconds": round(float(np.exp(log_s)), 3),
                                 "exponent": round(float(p), 3)},
        "explode_step_seconds": round(max(sum(start) / len(start), 0.0), 2),
        "explode_bytes_per_token": round(max(m4["peak_worker_rss"] - (320 << 20), 1) / unit_tokens, 1),
        "aggregate_unit_seconds": {"fixed": round(max(float(fixed), 0.0), 4),
                                   "per_read": round(max(float(per_read), 0.0), 5),
                                   "seconds_per_row": float(f"{max(float(per_row), 1e-12):.4g}"),
                                   "range_rows": int(r0), "exponent": round(d, 2)},
        "load_rows_per_core_second": round(sum(load_rates) / len(load_rates)),
        "catalog_bytes_per_row": round(m4["catalog_bytes"] / max(m4["final_rows"], 1), 2),
        "catalog_bytes_per_prefix_row": round(m4["catalog_bytes"] / max(m4["final_rows"], 1), 2),
    }
    print(json.dumps({"measured": {k: m for k, (_, m) in builds.items()}, "rates": rates}, indent=1))
    if args.write:
        Path(args.write).write_text(json.dumps(rates, indent=2) + "\n")
        print(f"wrote {args.write}")


def cmd_compare(args, mds: str, info: dict) -> None:
    from ngram_dask.config import load_config
    from ngram_dask.ngrams.plan import plan_build, plan_lines

    for spec in args.clusters.split(","):
        workers, memory = spec.split("x")
        root = Path(args.cache) / "runs" / f"compare-{workers}x{memory}"
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        over = overrides_for(mds, root, int(workers), memory, args.chunks)
        t0 = time.perf_counter()
        plan = plan_build(load_config(None, over))
        plan_seconds = time.perf_counter() - t0
        print("\n".join(plan_lines(plan)))
        m = measured(root, run_child(over))
        predicted = {
            "units": plan["explode"]["units"],
            "partial_rows": sum(v["partial_rows"] for v in plan["ngrams"].values()),
            "final_rows": sum(v["final_rows"] + v["prefix_rows"] for v in plan["ngrams"].values()),
            "files": plan["files"], "scratch_bytes": plan["scratch_bytes"], "catalog_bytes": plan["catalog_bytes"],
            "ranges_max": max(a["ranges"] for a in plan["aggregate"].values()),
            # The aggregate alone is not measured: the writer loads while the workers aggregate.
            "explode s": plan["seconds"]["explode"], "load s": plan["seconds"]["load"],
            "aggregate+load s": plan["seconds"]["aggregate"] + plan["seconds"]["load"],
            "total s": sum(plan["seconds"].values()),
            "peak_worker_rss": plan["peak_worker_bytes"],
        }
        actual = {**{k: m[k] for k in predicted if k in m}, "explode s": m["seconds"]["explode"],
                  "load s": m["seconds"]["load"],
                  "aggregate+load s": m["seconds"]["aggregate"] + m["seconds"]["load"],
                  "total s": sum(m["seconds"].values())}
        print(f"\n{workers} workers x {memory}, K = {args.chunks}, {info['tokens']:,} tokens "
              f"(plan took {plan_seconds:.1f} s)")
        print(f"  {'figure':<16} {'predicted':>16} {'actual':>16} {'pred/actual':>12}")
        for k, v in predicted.items():
            a = actual[k]
            print(f"  {k:<16} {v:>16,.1f} {a:>16,.1f} {v / a if a else float('nan'):>12.2f}")
        print(f"  peak client RSS {m['peak_client_rss'] / 2**20:,.0f} MiB")


def brute_force_check(mds: str, db: str, samples: int, seed: int = 0) -> dict:
    """Trigram counts of the catalog against a pass over every shard, for sampled trigrams."""
    import numpy as np

    from ngram_dask.db import read_only
    from ngram_dask.inputs import plan_input, read_piece

    rng = np.random.default_rng(seed)
    pieces = plan_input(mds).pieces
    with read_only(db) as con:
        drawn = con.execute(f"SELECT id0, id1, id2 FROM trigrams USING SAMPLE {samples // 2} ROWS").fetchall()
    keys = [(a << 32) | (b << 16) | c for a, b, c in drawn]
    picked, times = np.unique(rng.choice(len(pieces), size=samples - len(keys)), return_counts=True)
    for i, t in zip(picked, times):  # each piece read once
        d = read_piece(pieces[int(i)], VOCAB)
        for s in rng.integers(0, len(d.offsets) - 1, size=t):
            lo, hi = int(d.offsets[s]), int(d.offsets[s + 1])
            if hi - lo >= 3:
                at = int(rng.integers(lo, hi - 2))
                keys.append((int(d.tokens[at]) << 32) | (int(d.tokens[at + 1]) << 16) | int(d.tokens[at + 2]))
    want = np.unique(np.array(keys, np.uint64))
    # Every trigram of the corpus, once, over all cores: 1e10 keys do not fit np.isin's sort.
    import multiprocessing as mp
    import os

    batches = [pieces[i::os.cpu_count() or 1] for i in range(os.cpu_count() or 1)]
    with mp.get_context("fork").Pool(len(batches)) as pool:
        brute = sum(pool.starmap(_count_wanted, [(b, want) for b in batches]))
    with read_only(db) as con:
        con.execute("CREATE TEMP TABLE want AS SELECT unnest(?::UBIGINT[]) AS k", [want.tolist()])
        got = dict(con.execute("SELECT k, count FROM want JOIN trigrams ON k = (id0::UBIGINT << 32) | "
                               "(id1::UBIGINT << 16) | id2").fetchall())
    catalog = np.array([got.get(int(k), 0) for k in want], np.int64)
    bad = int((catalog != brute).sum())
    return {"trigrams_checked": len(want), "mismatches": bad}


def _count_wanted(pieces: list, want):
    """How often each key of ``want`` (sorted uint64 trigram keys) occurs in ``pieces``."""
    import numpy as np

    from ngram_dask.inputs import read_piece
    from ngram_dask.ngrams import counting

    # A 16M-entry hash filter passes ~all but the wanted keys' share on, so the exact
    # searchsorted sees few keys; frequent wanted trigrams still pass every time.
    mult, shift = np.uint64(0x9E3779B97F4A7C15), np.uint64(40)
    table = np.zeros(1 << 24, bool)
    table[(want * mult) >> shift] = True
    brute = np.zeros(len(want), np.int64)
    for piece in pieces:
        d = read_piece(piece, VOCAB)
        k = counting.ngram_keys(d.tokens, d.offsets, 3, 16)
        k = k[table[(k * mult) >> shift]]
        at = np.minimum(np.searchsorted(want, k), len(want) - 1)
        brute += np.bincount(at[want[at] == k], minlength=len(want))
    return brute


def _catalog_rows(db: Path) -> tuple[dict, dict]:
    from ngram_dask.db import read_only

    with read_only(str(db)) as con:
        rows = {t: con.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0]
                for t in ("bigrams", "trigrams", "bigram_prefixes", "trigram_prefixes")}
        sums = {t: int(con.execute(f"SELECT sum(count) FROM {t}").fetchall()[0][0]) for t in ("bigrams", "trigrams")}
    return rows, sums


def cmd_duckdb(args, mds: str, info: dict) -> None:
    """Ours (as planned, and in the Pile's regime) against plain DuckDB at equal memory."""
    from dask.utils import parse_bytes

    from ngram_dask.ngrams.load import WRITER_SETTINGS

    writer = parse_bytes(WRITER_SETTINGS["memory_limit"])
    table, want = [], None
    for spec in args.clusters.split(","):
        workers, memory = spec.split("x")
        total = int(workers) * parse_bytes(memory) + writer
        root = Path(args.cache) / "runs" / f"duckdb-{workers}x{memory}"
        times: dict[str, list] = {}
        peaks: dict[str, int] = {}
        budget = None
        for rnd in range(args.runs):
            for name in ("ours", f"ours, ~{args.ranges} ranges", "plain DuckDB"):
                # The regime's budget comes from the first build's partial rows per chunk.
                extra = {"ours": {}, "plain DuckDB": None}.get(name, {"build.aggregate_budget_bytes": budget})
                shutil.rmtree(root, ignore_errors=True)
                root.mkdir(parents=True)
                if extra is None:
                    res = run_plain({"mds_root": mds, "db_path": str(root / "plain.duckdb"),
                                     "memory_limit": f"{total >> 20}MiB", "threads": int(workers),
                                     "temp_dir": str(root / "spill")})
                    peak = res["rss"].get("main", 0)
                    if "failed" in res:
                        print(f"round {rnd}: {spec}: plain DuckDB ({total >> 20} MiB) failed: {res['failed']}",
                              flush=True)
                        times.setdefault(name, []).append(None)
                        continue
                    secs, check = res["seconds"], (res["rows"], res["sums"])
                else:
                    over = overrides_for(mds, root, int(workers), memory, args.chunks, **extra)
                    m = measured(root, run_child(over))
                    secs = sum(m["seconds"].values())
                    peak = max(m["peak_worker_rss"], m["peak_client_rss"])
                    check = _catalog_rows(root / "catalog.duckdb")
                    if budget is None:
                        done = (root / "work" / "explode" / "_done").glob("*.json")
                        explode = [json.loads(p.read_text()) for p in done]
                        per_chunk = sum(sum(e["distinct"].values()) + sum(e["tails"].values())
                                        for e in explode) / args.chunks
                        budget = int(per_chunk * 86 / args.ranges)
                    if extra:
                        print(f"  max ranges per chunk: {m['ranges_max']}", flush=True)
                times.setdefault(name, []).append(secs)
                peaks[name] = max(peaks.get(name, 0), peak)
                if want is None:
                    want = check
                elif check != want:
                    raise SystemExit(f"{name} built other tables: {check} != {want}")
                print(f"round {rnd}: {spec}: {name}: {secs:.1f} s, peak RSS {peak / 2**20:,.0f} MiB", flush=True)
        table.append((spec, total, times, peaks))
    print(f"\n{info['tokens']:,} tokens, K = {args.chunks}; plain DuckDB's memory_limit = workers' memory + "
          f"the writer's {writer >> 20} MiB; tables checked equal (rows and sums)")
    print("| cluster | equal memory | build | runs (s) | mean (s) | plain DuckDB / this | peak RSS (process) |")
    print("|---|---:|---|---|---:|---:|---:|")
    for spec, total, times, peaks in table:
        plain = [t for t in times.get("plain DuckDB", []) if t is not None]
        plain_mean = sum(plain) / len(plain) if plain else None
        for name, ts in times.items():
            ok = [t for t in ts if t is not None]
            mean = sum(ok) / len(ok) if ok else None
            runs = ", ".join("failed" if t is None else f"{t:.1f}" for t in ts)
            ratio = f"{plain_mean / mean:.2f}x" if plain_mean and mean else "-"
            print(f"| {spec} | {total / 2**30:.2f} GiB | {name} | {runs} | "
                  f"{'-' if mean is None else f'{mean:.1f}'} | {ratio} | {peaks.get(name, 0) / 2**20:,.0f} MiB |")


def cmd_big(args, mds: str, info: dict) -> None:
    from ngram_dask.catalog.verify import verify

    args.clusters = args.clusters.split(",")[0]
    cmd_compare(args, mds, info)
    workers, memory = args.clusters.split("x")
    db = str(Path(args.cache) / "runs" / f"compare-{workers}x{memory}" / "catalog.duckdb")
    t0 = time.perf_counter()
    verify(db, announce=print)
    print(f"verify: passed in {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    res = brute_force_check(mds, db, args.verify_samples)
    print(f"brute force: {res['trigrams_checked']:,} trigrams, {res['mismatches']} mismatch(es) "
          f"({time.perf_counter() - t0:.1f} s)")


def cmd_regime(args, mds: str, info: dict) -> None:
    """One explode output, then its aggregate + load in the two regimes, alternating."""
    root = Path(args.cache) / "runs" / f"regime-{info['tokens']}"
    work = root / "work"
    if args.reuse_work:  # a finished build's explode output (its manifest and units)
        shutil.rmtree(root, ignore_errors=True)
        work.mkdir(parents=True)
        shutil.copy(Path(args.reuse_work, "manifest.json"), work / "manifest.json")
        (work / "explode").symlink_to(Path(args.reuse_work, "explode").resolve())
    elif not (work / "explode" / "_done").exists():
        root.mkdir(parents=True, exist_ok=True)
        run_child(overrides_for(mds, root, args.workers, args.memory_limit, args.chunks,
                                **{"build.steps": ["explode"]}))
    manifest = json.loads((work / "manifest.json").read_text())
    chunks = int(manifest["chunks"])
    explode = [json.loads(p.read_text()) for p in (work / "explode" / "_done").glob("*.json")]
    per_chunk = sum(sum(e["distinct"].values()) + sum(e["tails"].values()) for e in explode) / chunks
    budget = int(per_chunk * 86 / args.ranges)
    rows = []
    for rnd in range(args.runs):
        for name, extra in (("one range per chunk", {}),
                            (f"~{args.ranges} ranges per chunk", {"build.aggregate_budget_bytes": budget})):
            shutil.rmtree(work / "aggregate", ignore_errors=True)
            (root / "catalog.duckdb").unlink(missing_ok=True)
            over = overrides_for(mds, root, args.workers, args.memory_limit, chunks,
                                 **{"build.steps": ["aggregate", "load"],
                                    "build.explode_unit_tokens": manifest["explode_unit_tokens"], **extra})
            m = measured(root, run_child(over))
            rows.append((name, m["seconds"]["aggregate"] + m["seconds"]["load"]))
            print(f"round {rnd}: {name}: aggregate+load {rows[-1][1]:.1f} s, max ranges {m['ranges_max']}, "
                  f"peak worker RSS {m['peak_worker_rss'] / 2**20:,.0f} MiB", flush=True)
    one = [t for n, t in rows if n.startswith("one")]
    many = [t for n, t in rows if not n.startswith("one")]
    print(f"\n~{args.ranges} ranges / one range: {sum(many) / len(many) / (sum(one) / len(one)):.2f}x "
          f"(target <= 1.25x; {len(one)} round(s) each; K = {chunks}, {per_chunk:,.0f} partial rows per chunk, "
          f"budget {budget:,} B)")


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "_child":
        child_main(json.loads(sys.argv[2]))
        return
    if len(sys.argv) > 2 and sys.argv[1] == "_plain":
        plain_main(json.loads(sys.argv[2]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=("rates", "compare", "regime", "duckdb", "big"))
    ap.add_argument("--tokens", type=float, default=2e8)
    ap.add_argument("--real-tokens", type=float, default=3.2e7, help="tokenized real text; the rest renamed copies")
    ap.add_argument("--shard-mib", type=int, default=16)
    ap.add_argument("--cache", default=str(REPO / "bench-data"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--memory-limit", default="4GiB")
    ap.add_argument("--chunks", type=int, default=64)
    ap.add_argument("--clusters", default="2x4GiB,2x1GiB", help="compare: workers x memory, comma-separated")
    ap.add_argument("--ranges", type=int, default=10, help="regime: key ranges per chunk")
    ap.add_argument("--runs", type=int, default=2, help="regime: alternating rounds")
    ap.add_argument("--reuse-work", help="regime: the work dir of a finished build to take the explode output from")
    ap.add_argument("--verify-samples", type=int, default=3000, help="big: trigrams counted by brute force")
    ap.add_argument("--write", help="rates: write the rates JSON here (ngram_dask/ngrams/rates.json)")
    args = ap.parse_args()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    mds, info = make_corpus(cache, int(args.tokens), args.shard_mib << 20, False, print, int(args.real_tokens))
    distinct = info["distinct_trigrams"]
    print(f"corpus {mds}: {info['tokens']:,} tokens, "
          f"{'(not counted)' if distinct is None else f'{distinct:,}'} distinct trigrams", flush=True)
    modes = {"rates": cmd_rates, "compare": cmd_compare, "regime": cmd_regime, "duckdb": cmd_duckdb, "big": cmd_big}
    modes[args.mode](args, str(mds), info)


if __name__ == "__main__":
    main()
