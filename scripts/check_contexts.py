#!/usr/bin/env python
"""A catalog's contexts against brute force, at any size: for prompts sampled from the top
tables (the most frequent ones and random ones), scan the whole input directly and compare.

    .venv/bin/python scripts/check_contexts.py --db <catalog with contexts> [--prompts 24]

Per prompt: its occurrences are found by comparing every position's ids with the prompt's
(no hash tables, no stretches, no cutoffs), each gets its priority (``kernel.priorities``,
which the tests hold to the pure-Python ``kernel.priority_int``; the kept ones here are
recomputed with ``priority_int`` too), and the ``per_task`` smallest must be the
``contexts`` rows of the prompt (shard, sample, pos, actual, window), and the count its
``context_counts.occurrences``. Reads the input the database records (``--input`` to give
it where it moved). Prints one line per prompt and exits 1 on any difference. Not a test:
the corpus is whatever the catalog was built from (the 1e9 benchmark's, for one).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np


def main() -> int:
    from ngram_dask.contexts import kernel
    from ngram_dask.db import read_info, read_only
    from ngram_dask.inputs import group_pieces, plan_input, read_group
    from ngram_dask.schema import CONTEXTS_INFO, top_table

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", required=True)
    ap.add_argument("--input", help="the build's input, when not where the database records it")
    ap.add_argument("--prompts", type=int, default=24, help="prompts to check: half the most frequent, half random")
    ap.add_argument("--seed", type=int, default=0, help="of the random half")
    args = ap.parse_args()

    if not os.path.isfile(args.db):
        sys.exit(f"check_contexts.py: error: no database at {args.db}")
    with read_only(args.db) as con:
        info = read_info(con)
        if CONTEXTS_INFO not in info:
            sys.exit(f"check_contexts.py: error: database {args.db} holds no contexts: run `ngram-dask contexts` first")
        ctx = json.loads(info[CONTEXTS_INFO])
        tops = {n: con.execute(f"SELECT id0{', id1' if n == 3 else ''}, sum_count FROM {top_table(n)} "
                               "ORDER BY sum_count DESC").fetchall() for n in (2, 3)}
        rng = np.random.default_rng(args.seed)
        chosen = []
        for n, rows in tops.items():
            half = max(1, args.prompts // 4)
            picks = list(range(min(half, len(rows))))
            picks += sorted(set(rng.choice(len(rows), min(half, len(rows)), replace=False).tolist()) - set(picks))
            chosen += [(n, tuple(int(x) for x in rows[i][:-1]), int(rows[i][-1])) for i in picks]
        kept, counted = {}, {}
        for n, ids, _ in chosen:
            where = "id0 = ?" + (" AND id1 = ?" if n == 3 else " AND id1 IS NULL")
            kept[n, ids] = con.execute(f"SELECT shard, sample, pos, actual, window_start, window_ids, priority "
                                       f"FROM contexts WHERE n = {n} AND {where} ORDER BY rank", list(ids)).fetchall()
            counted[n, ids] = con.execute(f"SELECT occurrences FROM context_counts WHERE n = {n} AND {where}",
                                          list(ids)).fetchone()[0]
    source = args.input or info["input"]
    k, seed, before, after = int(ctx["per_task"]), int(ctx["seed"]), int(ctx["before"]), int(ctx["after"])
    eos = ctx.get("eos_id") if ctx.get("drop_eos") else None
    plan = plan_input(source, input_format=info.get("input_format", "auto"),
                      token_dtype=info.get("token_dtype") or "auto", seq_len=int(info.get("seq_len", 2048)),
                      samples=info.get("samples_mode", "seq-len"),
                      token_column=info.get("token_column") or None, unit_tokens=100_000_000)
    found = {key: [] for key in kept}  # (priority, file, sample, offset, actual, window start, window)
    total = dict.fromkeys(kept, 0)
    t0 = time.perf_counter()
    for group in group_pieces(plan.pieces, 100_000_000):
        data = read_group(group, int(info["vocab_size"]), False)
        tokens, offsets = data.tokens, np.asarray(data.offsets, np.int64)
        for (n, ids) in kept:
            hit = tokens[:len(tokens) - n + 1] == ids[0]
            if n == 3:
                hit &= tokens[1:len(tokens) - 1] == ids[1]
            pos = np.flatnonzero(hit)
            sample = np.searchsorted(offsets, pos, side="right") - 1
            inside = pos + n <= offsets[sample + 1]  # the n-gram lies in its sample
            pos, sample = pos[inside], sample[inside]
            if eos is not None:
                clean = (tokens[pos[:, None] + np.arange(n)] != eos).all(axis=1)
                pos, sample = pos[clean], sample[clean]
            prio = kernel.priorities(kernel.sample_hashes(seed, n, data.files[sample], data.samples[sample]),
                                     pos - offsets[sample])
            for j in np.argsort(prio, kind="stable")[:k]:  # (a group's k smallest hold the input's)
                p, s = int(pos[j]), int(sample[j])
                lo, hi = max(int(offsets[s]), p - before), min(int(offsets[s + 1]), p + n + after)
                found[n, ids].append((int(prio[j]), int(data.files[s]), int(data.samples[s]), p - int(offsets[s]),
                                      int(tokens[p + n - 1]), lo - int(offsets[s]), tokens[lo:hi].tolist()))
            total[n, ids] += len(pos)
    bad = 0
    for (n, ids), rows in kept.items():
        best = sorted(found[n, ids])[:k]
        for q, f, s, o, *_ in best:  # the reference, once more, per kept occurrence
            assert kernel.priority_int(seed, n, f, s, o) == q
        want = [(f, s, o, a, w0, w, q) for q, f, s, o, a, w0, w in best]
        have = [(r[0], r[1], r[2], r[3], r[4], list(r[5]), int(r[6])) for r in rows]
        ok = want == have and total[n, ids] == counted[n, ids]
        bad += not ok
        differ = "" if want == have else " differ from brute force"
        print(f"{'ok ' if ok else 'BAD'} n={n} prompt {list(ids)}: {total[n, ids]:,} occurrences "
              f"(catalog {counted[n, ids]:,}), {len(have)} examples{differ}")
    print(f"{len(kept)} prompts, {len(kept) - bad} agree with brute force ({time.perf_counter() - t0:.1f} s over "
          f"the input {source})")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
