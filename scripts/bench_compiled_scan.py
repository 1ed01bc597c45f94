#!/usr/bin/env python
"""What a compiled contexts kernel would give: the scan's hot loop (lookup, count,
priority, cut against each prompt's cutoff) as one numba loop per family, against
``kernel.scan`` as shipped.

    pip install numba     # not a dependency of ngram-dask: this measures whether it should be
    .venv/bin/python scripts/bench_compiled_scan.py groups --mds <corpus> --prompts <contexts dir>/prompts.parquet
    .venv/bin/python scripts/bench_compiled_scan.py stage --db <catalog with a build> [--rounds 1]

``groups``: both scans on the same piece groups in one process, alternately; they must
agree exactly (per-prompt counts, and the k smallest priorities per prompt: the compiled
side keeps every occurrence under its prompt's cutoff, then takes the k smallest and their
windows with the kernel's own numpy functions). Prints the best and median seconds.

``stage``: ``ngram-dask contexts`` twice per round on copies of the catalog, in fresh work
dirs, with one seed: as shipped, and with ``kernel.scan`` replaced in the client and every
worker by the compiled loop (a ``sitecustomize`` on ``PYTHONPATH``, which this script
writes into a temporary folder). Prints both stages' seconds and checks that the two
``contexts`` and ``context_counts`` tables are equal row for row.

Trigram prompts of ids wider than 16 bits, and builds that drop EOS, stay on the numpy
kernel (the loop packs two 16-bit ids and checks no excluded id). Nothing here is a test,
and nothing in the package imports numba.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

try:
    from numba import njit
except ImportError:
    sys.exit("bench_compiled_scan.py: error: numba is not installed (pip install numba): it is what this measures")

_MASK32, _F1, _F2 = np.uint64(0xFFFFFFFF), np.uint64(0x85EBCA6B), np.uint64(0xC2B2AE35)


@njit(inline="always")
def _fmix32(x):
    x = ((x ^ (x >> np.uint64(16))) * _F1) & _MASK32
    x = ((x ^ (x >> np.uint64(13))) * _F2) & _MASK32
    return x ^ (x >> np.uint64(16))


@njit(inline="always")
def _priority(h, offset):
    """``kernel.priority_int`` from the sample's hash, for offsets below 2**32."""
    return (_fmix32((h >> np.uint64(32)) ^ offset) << np.uint64(32)) | _fmix32((h & _MASK32) ^ offset)


# The two loops below repeat an occurrence's work (count, priority, cut, append) on purpose:
# as a shared @njit helper, inlined or not, the loops ran 1.7-2.8x slower (numba 0.68.1).
@njit(cache=True)
def _bigrams(tokens, offsets, hashes, first, bound, counts, out_prompt, out_prio, out_pos):
    k = 0
    for s in range(len(offsets) - 1):
        a, b, h = offsets[s], offsets[s + 1], hashes[s]
        for i in range(a, b - 1):
            j = first[tokens[i]]
            if j >= 0:
                counts[j] += 1
                q = _priority(h, np.uint64(i - a))
                if q <= bound[j]:
                    if k == len(out_prompt):
                        return -1
                    out_prompt[k], out_prio[k], out_pos[k] = j, q, i
                    k += 1
    return k


@njit(cache=True)
def _trigrams(tokens, offsets, hashes, filt, fshift, slots, shift, mult, keys, bound, counts,
              out_prompt, out_prio, out_pos):
    k = 0
    for s in range(len(offsets) - 1):
        a, b, h = offsets[s], offsets[s + 1], hashes[s]
        for i in range(a, b - 2):
            key = (np.uint32(tokens[i]) << np.uint32(16)) | np.uint32(tokens[i + 1])
            m = np.uint32(key * mult)  # (numba widens the product: the kernel's hash wraps at 32 bits)
            if not filt[m >> fshift]:
                continue
            j = slots[m >> shift]
            if j == -2:  # a shared slot: the exact search
                j = np.searchsorted(keys, key)
                if j >= len(keys):
                    continue
            if j < 0 or keys[j] != key:
                continue
            counts[j] += 1
            q = _priority(h, np.uint64(i - a))
            if q <= bound[j]:
                if k == len(out_prompt):
                    return -1
                out_prompt[k], out_prio[k], out_pos[k] = j, q, i
                k += 1
    return k


def compiled_scan(data, p, vocab: int, k: int, seed: int, before: int, after: int, pool: int,
                  positions: bool = False):
    from ngram_dask.contexts import kernel

    hashes = kernel.sample_hashes(seed, p.n, data.files, data.samples)
    counts = np.zeros(len(p), np.int64)
    bound = np.asarray(p.cutoff if p.cutoff is not None else np.full(len(p), kernel.MAX64), np.uint64)
    out = np.empty(pool, np.int64), np.empty(pool, np.uint64), np.empty(pool, np.int64)
    if p.n == 2:
        got = _bigrams(data.tokens, data.offsets, hashes, p.first_index(vocab).astype(np.int32), bound, counts, *out)
    else:
        fshift, filt = p.filter
        mult, shift, slots = p.levels[0]
        got = _trigrams(data.tokens, data.offsets, hashes, filt, np.uint32(fshift), slots, np.uint32(shift),
                        np.uint32(mult), p.sorted_keys, bound, counts, *out)
    if got < 0:  # more occurrences under their cutoffs than the pool holds
        return None
    prompt, prio, pos = (a[:got] for a in out)
    keep = kernel._first_k_sorted(prompt, prio, pos, k, len(p))
    prompt, prio, pos = prompt[keep], prio[keep], pos[keep]
    sample = np.searchsorted(data.offsets, pos, side="right") - 1
    if positions:  # (the caller makes the windows)
        return counts, prompt, prio, pos
    kernel.windows(data.tokens, data.offsets, pos, sample, p.n, before, after)
    return counts, prompt, prio


def install() -> None:
    """Replace ``kernel.scan`` by the compiled loop in this process (where it applies)."""
    from ngram_dask.contexts import kernel

    shipped = kernel.scan

    class Group:  # what compiled_scan reads of a GroupSamples
        def __init__(self, tokens, offsets, files, samples):
            self.tokens, self.offsets, self.files, self.samples = tokens, np.asarray(offsets, np.int64), files, samples

    def scan(tokens, offsets, files, samples, p, vocab, k, seed, before, after, exclude_id=None, workspace=None, **kw):
        if exclude_id is not None or p.bits > 16 or kw:
            return shipped(tokens, offsets, files, samples, p, vocab, k, seed, before, after, exclude_id, workspace,
                           **kw)
        g = Group(tokens, offsets, files, samples)
        got = compiled_scan(g, p, vocab, k, seed, before, after, 8 << 20, positions=True)
        if got is None:
            return shipped(tokens, offsets, files, samples, p, vocab, k, seed, before, after, exclude_id, workspace)
        counts, prompt, prio, pos = got
        sample = np.searchsorted(g.offsets, pos, side="right") - 1
        wo, wi, lo = kernel.windows(tokens, g.offsets, pos, sample, p.n, before, after)
        return kernel.Found(n=p.n, counts=counts, prompt=prompt.astype(np.int64),
                            actual=tokens[pos + p.n - 1].astype(np.int64), file=np.asarray(files, np.int64)[sample],
                            sample=np.asarray(samples, np.int64)[sample], offset=pos - g.offsets[sample],
                            priority=prio, window_offsets=wo, window_ids=wi, window_start=lo - g.offsets[sample])

    kernel.scan = scan


def stage(args) -> None:
    import os
    import shutil
    import subprocess
    import tempfile
    from pathlib import Path

    import duckdb

    tmp = Path(tempfile.mkdtemp(prefix="bench-compiled-"))
    (tmp / "site").mkdir()
    (tmp / "site" / "sitecustomize.py").write_text(
        "import os\nif os.environ.get('BENCH_COMPILED_SCAN') == '1':\n"
        f"    import sys\n    sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})\n"
        "    import bench_compiled_scan\n    bench_compiled_scan.install()\n")  # (a named module: numba caches it)
    exe = Path(sys.executable).with_name("ngram-dask")
    try:
        for r in range(args.rounds):
            for name in ("numpy", "compiled"):
                db = tmp / f"{name}.duckdb"
                shutil.copyfile(args.db, db)
                path = [str(tmp / "site")] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
                env = {**os.environ, "BENCH_COMPILED_SCAN": "1" if name == "compiled" else "0",
                       "PYTHONPATH": os.pathsep.join(path)}
                cmd = [str(exe), "contexts", "--db", str(db), "--work-dir", str(tmp / f"work-{name}-{r}"),
                       "--seed", str(args.seed), "--n-workers", str(args.n_workers), "--threads-per-worker", "1",
                       "--memory-limit", args.memory_limit]
                t0 = time.perf_counter()
                out = subprocess.run(cmd, env=env, capture_output=True, text=True)
                wall = time.perf_counter() - t0
                if out.returncode:
                    raise SystemExit(f"bench_compiled_scan.py: error: {' '.join(cmd)} exited {out.returncode}: "
                                     f"{out.stderr.strip().splitlines()[-1] if out.stderr.strip() else ''}")
                summary = out.stdout[out.stdout.rfind("summary:"):].splitlines()  # (runtime.StageReport.time_lines)
                timed = [" ".join(x.split()) for x in summary
                         if x.split()[:1] in (["contexts"], ["write"], ["total"]) and x.endswith(" s")]
                units = [x.strip().split(" (")[0] for x in summary if x.strip().startswith("units' time")]
                print(f"round {r} {name:<9} command {wall:6.2f} s | " + " | ".join(timed + units))
            con = duckdb.connect()
            con.execute(f"ATTACH '{tmp / 'numpy.duckdb'}' AS a (READ_ONLY)")
            con.execute(f"ATTACH '{tmp / 'compiled.duckdb'}' AS b (READ_ONLY)")
            for t in ("contexts", "context_counts"):
                diff = con.execute(f"SELECT (SELECT count(*) FROM (FROM a.{t} EXCEPT ALL FROM b.{t})) + "
                                   f"(SELECT count(*) FROM (FROM b.{t} EXCEPT ALL FROM a.{t}))").fetchone()[0]
                rows = con.execute(f"SELECT count(*) FROM a.{t}").fetchone()[0]
                if diff:
                    raise SystemExit(f"bench_compiled_scan.py: error: round {r}: {t} differs in {diff} rows")
                print(f"round {r}: {t} equal row for row ({rows:,} rows)")
            con.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode", required=True)
    g = sub.add_parser("groups", help="both scans on the same piece groups, in this process")
    g.add_argument("--mds", required=True, help="the corpus (an MDS dataset)")
    g.add_argument("--prompts", required=True, help="prompts.parquet of a contexts dir (with its cutoffs)")
    g.add_argument("--vocab-size", type=int, default=50432)
    g.add_argument("--unit-tokens", type=int, default=75_000_000, help="tokens per piece group")
    g.add_argument("--groups", default="0,3", help="which piece groups (indices)")
    g.add_argument("--rounds", type=int, default=4, help="alternating rounds per group (the first is warm-up)")
    g.add_argument("--pool", type=int, default=8 << 20, help="occurrences under their cutoffs one scan may keep")
    st = sub.add_parser("stage", help="ngram-dask contexts as shipped and compiled, on copies of a catalog")
    st.add_argument("--db", required=True, help="a catalog with a build (its input must be where the build read it)")
    st.add_argument("--rounds", type=int, default=1)
    st.add_argument("--seed", type=int, default=12)
    st.add_argument("--n-workers", type=int, default=2)
    st.add_argument("--memory-limit", default="4GiB")
    args = ap.parse_args()
    if args.mode == "stage":
        stage(args)
        return

    import pyarrow.parquet as pq

    from ngram_dask.contexts import kernel, task
    from ngram_dask.inputs import group_pieces, plan_input, read_group

    vocab, k, seed, before, after = args.vocab_size, 5, 7, 32, 8
    families = task.families_of(pq.read_table(args.prompts), int(vocab - 1).bit_length())
    if int(vocab - 1).bit_length() > 16:
        raise SystemExit("bench_compiled_scan.py: error: the compiled loop packs two 16-bit ids")
    groups = group_pieces(plan_input(args.mds).pieces, args.unit_tokens)
    workspace = np.empty(3 * kernel.STRETCH, np.uint64)
    times: dict[tuple[str, int], list[float]] = {}
    for gi in (int(g) for g in args.groups.split(",")):
        data = read_group(groups[gi], vocab, False)
        for r in range(args.rounds):
            for n, p in sorted(families.items()):
                t0 = time.perf_counter()
                f = kernel.scan(data.tokens, data.offsets, data.files, data.samples, p, vocab, k, seed, before, after,
                                None, workspace)
                t1 = time.perf_counter()
                got = compiled_scan(data, p, vocab, k, seed, before, after, args.pool)
                if got is None:
                    raise SystemExit("bench_compiled_scan.py: error: more occurrences under their cutoffs than --pool")
                counts, prompt, prio = got
                t2 = time.perf_counter()
                if not ((counts == f.counts).all() and (prompt == f.prompt).all() and (prio == f.priority).all()):
                    raise SystemExit(f"bench_compiled_scan.py: error: group {gi}, n = {n}: the two scans disagree")
                if r:
                    times.setdefault(("numpy", n), []).append(t1 - t0)
                    times.setdefault(("compiled", n), []).append(t2 - t1)
    print(f"{'scan':<9} {'n':>2} {'best s':>8} {'median s':>9}   "
          f"(groups {args.groups}, {args.rounds - 1} timed rounds each)")
    for (name, n), v in sorted(times.items(), key=lambda kv: (kv[0][1], kv[0][0] != "numpy")):
        v = sorted(v)
        print(f"{name:<9} {n:>2} {v[0]:8.3f} {v[len(v) // 2]:9.3f}")
    for n in sorted(families):
        a, b = sorted(times[("numpy", n)])[0], sorted(times[("compiled", n)])[0]
        print(f"n = {n}: compiled / numpy {b / a:.2f}x (best against best)")


if __name__ == "__main__":
    main()
