"""Benchmark `ngram-dask serve` at real sizes: completions and filtered, sorted task pages.

Synthesizes a catalog shaped like a real build (it is not one: the counts follow a
Zipf-like generator), starts `ngram-dask serve` on it as a separate process and measures
request latency from a client over HTTP on 127.0.0.1:

* ``trigrams``: ``--trigrams`` rows (70M is about a 1e9-token build), laid out as `load`
  lays it out: one run per chunk (``id0 % chunks``), each sorted by (id0, id1, id2);
  ``bigrams`` a fifth of that; both prefix tables derived from them.
* ``top_trigrams``: at least ``--top-rows`` rows (the published Pile table has 1.54M),
  made by the top step's own SQL (``top_sql``) with the sum_count threshold that
  yields that many, plus eight ``p_pythia_*`` columns as `score` would add.

Measured, one request at a time (then 16 at once):

* completion: ``/api/next?ids=<id0>,<id1>`` for contexts drawn from the prefix table;
  each answers a trigram lookup and a bigram lookup (exact counts and shares);
* page: ``/api/rows`` on top_trigrams with random filters (frac_max, sum_count, p ranges,
  sometimes a text filter), a random sort key and a random page (up to 1,000 pages deep).

Targets from issue 13: page p95 <= 200 ms, completion p95 <= 50 ms.

    python scripts/bench_serve.py --out /tmp/bench-serve                  # ~20M trigrams, a few minutes
    python scripts/bench_serve.py --out /tmp/bench-serve-1e9 --trigrams 70000000
    python scripts/bench_serve.py --out /tmp/bench-real --db bench-data/runs/ours/ngrams.duckdb  # an existing
        catalog (a real build: completions only when its top tables carry no p_ columns to filter pages on)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

VOCAB = 50432
MODELS = ["70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b"]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _generate(con, n: int, rows: int, chunks: int, seed: int) -> None:
    """``ngram_table(n)`` with about ``rows`` distinct rows and its prefix table.

    Prefix k (popularity rank) gets ``f_k ~ C / (k+1)^0.9`` distinct followers and
    ``M_k ~ D / (k+1)^0.7`` occurrences of its top follower; follower j has count
    ``max(1, M_k / (j+1)^1.1)``. Prefix ids are a bijection of k, so rows are distinct.
    """
    from ngram_dask.schema import id_columns, ngram_table, prefix_table

    table, ptable = ngram_table(n), prefix_table(n)
    ids = id_columns(n)
    space = VOCAB ** (n - 1)
    prefixes = min(space - 1, max(1000, rows // 3))
    # C so the followers add up to ~rows: sum_k C/(k+1)^0.9 ~ C * 10 * P^0.1
    c = rows / (10 * prefixes ** 0.1)
    for _ in range(3):  # the estimate of C is rough: correct it on the actual sum
        con.execute(f"""CREATE OR REPLACE TEMP TABLE _pre AS
            SELECT k, ((k * 1000003 + {seed}) % {space})::UBIGINT AS p,
                   least({VOCAB - 1}, greatest(1, floor({c} / pow(k + 1, 0.9))))::BIGINT AS f,
                   greatest(2, floor(2e7 / pow(k + 1, 0.7)))::DOUBLE AS m
            FROM range({prefixes}) t(k)""")
        got = con.execute("SELECT sum(f) FROM _pre").fetchall()[0][0]
        if abs(got - rows) < 0.02 * rows:
            break
        c *= rows / got
    log(f"  {table}: {prefixes:,} prefixes, {int(got):,} rows to write")
    prefix_ids = [f"(p // {VOCAB ** (n - 2 - j)}) % {VOCAB}" for j in range(n - 1)]
    cols = ", ".join(f"({e})::USMALLINT AS {c}" for e, c in zip(prefix_ids, ids[:-1]))
    con.execute(f"""CREATE OR REPLACE TEMP TABLE _gen AS
        SELECT {cols}, ((hash(p) % {VOCAB} + j * 7919) % {VOCAB})::USMALLINT AS {ids[-1]},
               greatest(1, floor(m / pow(j + 1, 1.1)))::UBIGINT AS count
        FROM (SELECT p, m, unnest(range(f)) AS j FROM _pre)""")
    key = ", ".join(ids)
    for chunk in range(chunks):  # one sorted run per chunk, as `load` appends them
        con.execute(f"INSERT INTO {table} SELECT * FROM _gen WHERE id0 % {chunks} = {chunk} ORDER BY {key}")
    pkey = ", ".join(ids[:-1])
    last = ids[-1]
    for chunk in range(chunks):
        con.execute(f"""INSERT INTO {ptable}
            SELECT {pkey}, arg_max({last}, count::HUGEINT * {VOCAB} - {last}) AS {last},
                   sum(count)::UBIGINT AS sum_count, max(count)::UBIGINT AS max_count,
                   max(count) / sum(count) AS frac_max
            FROM _gen WHERE id0 % {chunks} = {chunk} GROUP BY {pkey} ORDER BY {pkey}""")
    con.execute("DROP TABLE _gen")
    con.execute("DROP TABLE _pre")


def synthesize(db: Path, trigrams: int, top_rows: int, chunks: int) -> dict:
    import duckdb

    from ngram_dask.config import TopConfig
    from ngram_dask.lm.models import column_name
    from ngram_dask.ngrams.top import build_top_tables
    from ngram_dask.schema import SCHEMA_VERSION, TOOL, create_sql, ngram_columns, prefix_columns, top_table
    from ngram_dask.tokenizer import BUNDLED_GPT_NEOX, load_tokenizer

    params = {"trigrams": trigrams, "top_rows": top_rows, "chunks": chunks, "generator": 1}
    if db.exists():
        con = duckdb.connect(str(db), read_only=True)
        try:
            have = dict(con.execute("SELECT key, value FROM catalog_info").fetchall())
        finally:
            con.close()
        if have.get("bench_params") == json.dumps(params, sort_keys=True):
            log(f"reusing {db}")
            return params
        db.unlink()
    db.parent.mkdir(parents=True, exist_ok=True)
    tmp = db.with_suffix(".tmp.duckdb")
    if tmp.exists():
        tmp.unlink()
    t0 = time.time()
    con = duckdb.connect(str(tmp))
    try:
        con.execute("SET preserve_insertion_order = true")
        con.execute("CREATE TABLE catalog_info (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL)")
        con.execute("CREATE TABLE load_ledger (n INTEGER NOT NULL, chunk INTEGER NOT NULL, rows UBIGINT NOT NULL, "
                    "prefix_rows UBIGINT NOT NULL, loaded_at TIMESTAMP NOT NULL, PRIMARY KEY (n, chunk))")
        for n in (2, 3):
            from ngram_dask.schema import ngram_table, prefix_table

            con.execute(create_sql(ngram_table(n), ngram_columns(n, VOCAB)))
            con.execute(create_sql(prefix_table(n), prefix_columns(n, VOCAB)))
        log(f"synthesizing trigrams ({trigrams:,} rows, {chunks} sorted runs)")
        _generate(con, 3, trigrams, chunks, seed=17)
        log("synthesizing bigrams")
        _generate(con, 2, max(1000, trigrams // 5), chunks, seed=29)
        info = {"tool": TOOL, "schema_version": str(SCHEMA_VERSION), "ngrams": "[2, 3]", "chunks": str(chunks),
                "vocab_size": str(VOCAB), "tokenizer": str(BUNDLED_GPT_NEOX), "input": "synthetic (bench_serve.py)",
                "drop_eos": "false", "bench_params": json.dumps(params, sort_keys=True)}
        con.executemany("INSERT INTO catalog_info VALUES (?, ?)", list(info.items()))
        con.executemany("INSERT INTO load_ledger VALUES (?, ?, 0, 0, now())",
                        [[n, c] for n in (2, 3) for c in range(chunks)])
        # The top step itself (tokens, top_bigrams), then top_trigrams with the
        # sum_count threshold that gives at least top_rows rows.
        tok = load_tokenizer(str(BUNDLED_GPT_NEOX))
        counts = con.execute("SELECT count(*) FROM trigram_prefixes WHERE frac_max > 0.5").fetchall()[0][0]
        q = max(0.0, 1 - top_rows / max(counts, 1))
        min_count = con.execute("SELECT quantile_disc(sum_count, ?) FROM trigram_prefixes WHERE frac_max > 0.5",
                                [q]).fetchall()[0][0]
        min_count = max(0, int(min_count) - 1)
        cfg = TopConfig(top_trigram_min_count=min_count)
        log(f"top step: tokens, top tables (top_trigrams: sum_count > {min_count})")
        build_top_tables(con, tok, VOCAB, [2, 3], cfg)
        scored = {}
        for m in MODELS:
            col = column_name(m)
            size = float(m[:-1]) * (1e6 if m.endswith("m") else 1e9)
            for t in (top_table(2), top_table(3)):
                con.execute(f"ALTER TABLE {t} ADD COLUMN {col} DOUBLE")
                # bigger models learn more of the tasks: p rises with log size, per-row noise
                con.execute(f"UPDATE {t} SET {col} = least(1.0, greatest(0.0, frac_max * "
                            f"(({round(__import__('math').log10(size) - 7.8, 3)} / 3.3) + "
                            f"(hash(id0, id1, '{col}') % 1000) / 2000.0)))")
            scored[col] = {"model": f"EleutherAI/pythia-{m}-deduped",
                           "tables": {t: 0 for t in (top_table(2), top_table(3))}}
        con.execute("INSERT OR REPLACE INTO catalog_info VALUES ('scored_models', ?)", [json.dumps(scored)])
        con.execute("CHECKPOINT")
        sizes = {t: con.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0]
                 for t in ("trigrams", "trigram_prefixes", "bigrams", "bigram_prefixes", "top_trigrams", "top_bigrams")}
    finally:
        con.close()
    os.replace(tmp, db)
    log(f"synthesized in {time.time() - t0:.0f} s: " + ", ".join(f"{t} {r:,}" for t, r in sizes.items()))
    return params


class Client:
    def __init__(self, url: str):
        self.url = url.rstrip("/")

    def get(self, path: str, params: dict) -> tuple[float, int, dict]:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        t0 = time.perf_counter()
        try:
            with urllib.request.urlopen(url, timeout=120) as r:
                body, status = r.read(), r.status
        except urllib.error.HTTPError as e:
            body, status = e.read(), e.code
        return time.perf_counter() - t0, status, json.loads(body)


def percentiles(xs: list[float]) -> dict:
    xs = sorted(xs)
    q = statistics.quantiles(xs, n=100, method="inclusive")
    return {"n": len(xs), "p50_ms": 1000 * statistics.median(xs), "p95_ms": 1000 * q[94], "max_ms": 1000 * xs[-1]}


def page_requests(rng: random.Random, k: int, top_rows: int) -> list[dict]:
    sorts = ["-sum_count", "-frac_max", "sum_count", "-p_pythia_12b_deduped", "p_pythia_70m_deduped", "seq",
             "-p_pythia_1_4b_deduped", "-max_count"]
    texts = [" the", " of", "ing", " and", "(", " in", "ation", "."]
    out = []
    for _ in range(k):
        p = {"table": "top_trigrams", "sort": rng.choice(sorts), "limit": 50}
        if rng.random() < 0.7:
            p["min_frac_max"] = round(rng.uniform(0.5, 0.95), 2)
        if rng.random() < 0.5:
            p["max_p_pythia_70m_deduped"] = round(rng.uniform(0.05, 0.5), 2)
        if rng.random() < 0.5:
            p["min_p_pythia_12b_deduped"] = round(rng.uniform(0.3, 0.9), 2)
        if rng.random() < 0.3:
            p["min_sum_count"] = rng.choice([10, 100, 1000])
        if rng.random() < 0.3:
            p["contains"] = rng.choice(texts)
        p["offset"] = rng.choice([0, 0, 50, 500, 5000, 50000])
        out.append(p)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/bench-serve", help="folder for the synthesized catalog")
    ap.add_argument("--trigrams", type=int, default=20_000_000, help="rows of the trigrams table (70M ~ 1e9 tokens)")
    ap.add_argument("--top-rows", type=int, default=1_600_000, help="at least this many top_trigrams rows")
    ap.add_argument("--chunks", type=int, default=64, help="sorted runs (the build's chunks)")
    ap.add_argument("--requests", type=int, default=300, help="requests per kind")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--db", help="measure completions on this existing catalog (e.g. a real build) instead")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.db:
        db = Path(args.db)
    else:
        db = out / "catalog.duckdb"
        synthesize(db, args.trigrams, args.top_rows, args.chunks)

    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    rng = random.Random(args.seed)
    sizes = {t: con.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0]
             for t in ("trigrams", "bigrams", "top_trigrams", "top_bigrams")}
    # contexts as users meet them: drawn by occurrence (frequent contexts have many followers)
    contexts = con.execute(f"SELECT id0, id1 FROM trigram_prefixes USING SAMPLE reservoir({args.requests} ROWS) "
                           f"REPEATABLE ({args.seed})").fetchall()
    frequent = con.execute("SELECT id0, id1 FROM trigram_prefixes ORDER BY sum_count DESC LIMIT 50").fetchall()
    scored = bool(con.execute("SELECT count(*) FROM information_schema.columns WHERE table_name = 'top_trigrams' "
                              "AND column_name = 'p_pythia_12b_deduped'").fetchall()[0][0])
    con.close()
    contexts = contexts[: args.requests - len(frequent) // 2] + frequent[: len(frequent) // 2]
    rng.shuffle(contexts)

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "ngram_dask.cli", "serve", "--db", str(db), "--port", "0"],
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        if not line.startswith("serving"):
            raise SystemExit(f"serve did not start: {line!r}")
        client = Client(line.split(" at ")[1].split()[0])
        log(line.strip())
        for ctx in contexts[:10]:  # warm-up: page cache and the tokens list
            client.get("/api/next", {"ids": f"{ctx[0]},{ctx[1]}"})
        client.get("/api/rows", {"table": "top_trigrams"})

        def run(kind: str, reqs: list[tuple[str, dict]]) -> dict:
            lat = []
            for path, params in reqs:
                dt, status, body = client.get(path, params)
                if status != 200:
                    raise SystemExit(f"{kind}: HTTP {status} {body}")
                lat.append(dt)
            return percentiles(lat)

        results = {"sizes": sizes, "trigram_runs": args.chunks}
        comp = [("/api/next", {"ids": f"{a},{b}", "top": 10}) for a, b in contexts]
        # pages filter and sort on p_ columns: only on a catalog that has them (a scored one)
        pages = [("/api/rows", p) for p in page_requests(rng, args.requests, sizes["top_trigrams"])] if scored else []
        log(f"completions: {len(comp)} requests, one at a time")
        results["completion"] = run("completion", comp)
        if pages:
            log(f"pages: {len(pages)} requests, one at a time")
            results["page"] = run("page", pages)
            first = [(path, {**p, "offset": 0}) for path, p in pages]
            results["page_first"] = run("page_first", first)

        log("16 at once (completions and pages mixed)")
        mixed = [r for pair in zip(comp, pages) for r in pair] if pages else comp
        t0 = time.perf_counter()
        with ThreadPoolExecutor(16) as pool:
            timed = list(pool.map(lambda r: client.get(*r), mixed))
        wall = time.perf_counter() - t0
        assert all(s == 200 for _, s, _ in timed), "a concurrent request failed"
        results["concurrent16"] = {**percentiles([t for t, _, _ in timed]), "requests_per_s": len(mixed) / wall}
    finally:
        proc.terminate()
        proc.wait(20)
    (out / "bench.json").write_text(json.dumps(results, indent=2))
    print()
    shown = ", ".join(f"{t} {r:,}" for t, r in sizes.items())
    print(f"catalog: {db}  ({shown}; trigrams in {args.chunks} sorted runs)")
    print(f"{'':22}{'n':>6}{'p50 ms':>10}{'p95 ms':>10}{'max ms':>10}   target")
    for key, label, target in (("completion", "completion /api/next", "p95 <= 50"),
                               ("page", "page /api/rows", "p95 <= 200"),
                               ("page_first", "  first pages only", ""),
                               ("concurrent16", "16 concurrent (mixed)", "")):
        if key not in results:
            continue
        r = results[key]
        print(f"{label:22}{r['n']:>6}{r['p50_ms']:>10.1f}{r['p95_ms']:>10.1f}{r['max_ms']:>10.1f}   {target}")
    print(f"16 concurrent: {results['concurrent16']['requests_per_s']:.0f} requests/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
