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
import math
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOKENIZER = REPO / "ngram_dask" / "tokenizers" / "gpt-neox-20b"  # the bundled copy
SEQ_LEN = 2048
VOCAB = 50432  # Pythia's padded GPT-NeoX vocabulary: 16-bit ids
EOS = 0

# Where the real text comes from: sources and docs already on this machine, in a fixed order.
TEXT_ROOTS = [
    Path(sys.base_prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}",
    REPO / ".venv" / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages",
    Path("/usr/lib/python3"),
]
TEXT_SUFFIXES = {".py", ".pyi", ".rst", ".md", ".txt", ".c", ".h", ".cpp", ".hpp"}


# ----------------------------------------------------------------------------- corpus


def _text_files():
    for root in TEXT_ROOTS:
        if not root.exists():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                p = Path(dirpath) / name
                if p.suffix in TEXT_SUFFIXES and not p.is_symlink():
                    try:
                        if 0 < p.stat().st_size <= 4 << 20:
                            yield p
                    except OSError:
                        continue


def _real_token_stream(target: int):
    """Token arrays of real documents (each followed by EOS) until ``target`` tokens."""
    import numpy as np
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(TOKENIZER / "tokenizer.json"))
    produced, batch = 0, []

    def flush():
        nonlocal produced
        for enc in tok.encode_batch(batch, add_special_tokens=False):
            ids = np.asarray(enc.ids + [EOS], dtype=np.uint16)
            produced += len(ids)
            yield ids
        batch.clear()

    for path in _text_files():
        try:
            batch.append(path.read_bytes().decode("utf-8", errors="replace"))
        except OSError:
            continue
        if len(batch) == 512:
            yield from flush()
            if produced >= target:
                return
    yield from flush()
    if produced < target:
        raise SystemExit(f"only {produced:,} tokens of text found; use --synthetic or fewer --tokens")


def _zipf_token_stream(target: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    ranks = np.arange(1, 50277 + 1, dtype=np.float64)
    p = ranks ** -1.1
    p /= p.sum()
    made = 0
    while made < target:
        ids = rng.choice(50277, size=1 << 22, p=p).astype(np.uint16)
        made += len(ids)
        yield ids


def _real_tokens(cache: Path, target: int, log):
    """The first ``target`` tokens of real text as one uint16 array, cached (tokenizing is slow)."""
    import numpy as np

    path = cache / f"text-tokens-{target}.u16"
    for have in sorted(cache.glob("text-tokens-*.u16")):  # a longer cached prefix serves as well
        if have.stat().st_size >= 2 * target:
            return np.fromfile(have, dtype=np.uint16, count=target)
    log(f"corpus: tokenizing {target:,} tokens of real text (once; cached in {path})")
    t0 = time.perf_counter()
    parts, have = [], 0
    for ids in _real_token_stream(target):
        parts.append(ids)
        have += len(ids)
        if have >= target:
            break
    arr = np.concatenate(parts)[:target]
    tmp = path.with_suffix(".tmp")
    arr.tofile(tmp)
    tmp.rename(path)
    log(f"corpus: tokenized in {time.perf_counter() - t0:.0f} s")
    return arr


# Copies of the real text past the first have their less frequent tokens renamed: ids from
# RENAME_FROM up are permuted, with a permutation per copy. Frequent tokens (punctuation,
# keywords, common words) stay, so the copies share much of their n-gram mass the way
# more text of one kind does, while every n-gram touching a renamed id is new: distinct
# n-grams keep growing with size, as they do in a real corpus (a plain repeat would not).
RENAME_FROM = 4096
REAL_VOCAB = 50277


def _expanded_token_stream(real, target: int):
    import numpy as np

    copy = 0
    made = 0
    while made < target:
        if copy == 0:
            ids = real
        else:
            rng = np.random.default_rng(1000 + copy)
            table = np.arange(1 << 16, dtype=np.uint16)
            table[RENAME_FROM:REAL_VOCAB] = RENAME_FROM + rng.permutation(REAL_VOCAB - RENAME_FROM).astype(np.uint16)
            ids = table[real]
        take = min(len(ids), target - made)
        for lo in range(0, take, 1 << 24):
            yield ids[lo:min(lo + (1 << 24), take)]
        made += take
        copy += 1


def make_corpus(cache: Path, tokens: int, shard_bytes: int, synthetic: bool, log,
                real_tokens: int | None = None) -> tuple[Path, dict]:
    """The MDS corpus (cached): ``ceil(tokens / 2048)`` samples of 2048 tokens.

    Real text by default: up to ``real_tokens`` tokens are tokenized text; a larger
    corpus repeats that text with the rare tokens renamed per copy (see RENAME_FROM).
    """
    import numpy as np

    kind = "zipf" if synthetic else "text"
    n_samples = math.ceil(tokens / SEQ_LEN)
    real_cap = n_samples * SEQ_LEN if real_tokens is None else min(int(real_tokens), n_samples * SEQ_LEN)
    tag = "" if synthetic or real_cap >= n_samples * SEQ_LEN else f"-real{real_cap}"
    root = cache / f"corpus-{kind}-{tokens}-{shard_bytes >> 20}MiB{tag}"
    info_path = root / "bench-corpus.json"
    if info_path.exists():
        return root, json.loads(info_path.read_text())
    from streaming import MDSWriter

    if root.exists():
        shutil.rmtree(root)
    if synthetic:
        stream = _zipf_token_stream(n_samples * SEQ_LEN)
    else:
        stream = _expanded_token_stream(_real_tokens(cache, real_cap, log), n_samples * SEQ_LEN)
    log(f"corpus: writing {n_samples:,} samples of {SEQ_LEN} tokens ({kind}{tag}) to {root}")
    t0 = time.perf_counter()
    pending, have, written = [], 0, 0
    with MDSWriter(out=str(root), columns={"tokens": "bytes"}, compression="zstd",
                   size_limit=shard_bytes) as w:
        for ids in stream:
            pending.append(ids)
            have += len(ids)
            if have < SEQ_LEN:
                continue
            flat = np.concatenate(pending)
            whole = min(len(flat) // SEQ_LEN, n_samples - written)
            for row in flat[: whole * SEQ_LEN].reshape(whole, SEQ_LEN):
                w.write({"tokens": row.tobytes()})
            written += whole
            rest = flat[whole * SEQ_LEN:]
            pending, have = [rest], len(rest)
            if written == n_samples:
                break
    info = {"kind": kind, "samples": written, "tokens": written * SEQ_LEN,
            "real_text_tokens": None if synthetic else real_cap,
            "renamed_from_id": RENAME_FROM if tag else None,
            "shard_bytes": shard_bytes, "seconds_to_make": round(time.perf_counter() - t0, 1)}
    info.update(corpus_statistics(root))
    info_path.write_text(json.dumps(info, indent=1))
    return root, info


def corpus_statistics(root: Path) -> dict:
    """Distinct tokens, bigrams and trigrams, at a quarter, half and all of the corpus.

    Computed independently of both builds: ``np.unique`` of every shard's packed keys,
    merged with ``np.unique`` again at each checkpoint.
    """
    import numpy as np

    from ngram_dask.build import counting
    from ngram_dask.mds import list_shards, read_shard

    shards = list_shards(str(root))
    checkpoints = sorted({max(1, round(len(shards) * f)) for f in (0.25, 0.5, 1.0)})
    merged = {2: np.empty(0, np.uint64), 3: np.empty(0, np.uint64)}
    pending: dict[int, list] = {2: [], 3: []}
    toks = np.zeros(1 << 16, bool)
    growth, tokens_so_far = [], 0
    for i, ref in enumerate(shards):
        d = read_shard(ref, "uint16", VOCAB, verify_hashes=False)
        toks[d.tokens] = True
        tokens_so_far += int(d.offsets[-1])
        for n in (2, 3):
            pending[n].append(np.unique(counting.ngram_keys(d.tokens, d.offsets, n, 16)))
        if i + 1 in checkpoints:
            for n in (2, 3):
                merged[n] = np.unique(np.concatenate([merged[n], *pending[n]]))
                pending[n] = []
            growth.append([tokens_so_far, int(len(merged[2])), int(len(merged[3]))])
    return {
        "distinct_tokens": int(toks.sum()),
        "distinct_bigrams": int(len(merged[2])),
        "distinct_trigrams": int(len(merged[3])),
        # [tokens so far, distinct bigrams, distinct trigrams] at 1/4, 1/2 and all shards
        "distinct_growth": growth,
    }


# ----------------------------------------------------------------------------- baseline


def _baseline_explode_batch(args) -> dict:
    """Step 1 of the original for one batch: numpy n-grams -> pandas -> DuckDB COPY PARTITION_BY."""
    shard_index, start, stop, mds_root, work, chunks = args
    import duckdb
    import numpy as np
    import pandas as pd

    from ngram_dask.mds import list_shards, read_shard

    t0 = time.perf_counter()
    ref = list_shards(mds_root)[shard_index]
    data = read_shard(ref, "uint16", None, verify_hashes=False)
    ids = data.tokens[data.offsets[start]: data.offsets[stop]].reshape(stop - start, SEQ_LEN)
    db = duckdb.connect(config={"threads": 1})
    db.execute("SET enable_progress_bar=false")
    for ng in (2, 3):
        os.makedirs(os.path.join(work, "explode", str(ng)), exist_ok=True)
        id_arrs = [ids[:, k: (-(ng - 1 - k) if k < ng - 1 else None)] for k in range(ng)]
        ngrams_arr = np.stack(id_arrs, axis=2).reshape((-1, ng))
        ngram_df = pd.DataFrame(ngrams_arr, columns=[f"id{k}" for k in range(ng)])  # noqa: F841 (DuckDB scans it)
        id_str = ",".join(f"id{k}" for k in range(ng))
        db.execute(
            f"""COPY (SELECT {id_str}, count(*) AS count, id0 % {chunks} AS id0_chunk
                      FROM ngram_df GROUP BY {id_str})
                TO '{work}/explode/{ng}'
                (FORMAT PARQUET, PARTITION_BY (id0_chunk), OVERWRITE_OR_IGNORE,
                 FILENAME_PATTERN 'data_{{uuid}}')"""
        )
    db.close()
    return {"tokens": int(ids.size), "seconds": time.perf_counter() - t0}


def run_baseline(mds_root: str, work: str, db_path: str, procs: int, batch_samples: int,
                 chunks: int) -> dict:
    import multiprocessing as mp

    import duckdb

    from ngram_dask.mds import list_shards

    stages = {}
    t_start = time.perf_counter()
    batches = []
    for ref in list_shards(mds_root):
        for start in range(0, ref.samples, batch_samples):
            batches.append((ref.index, start, min(start + batch_samples, ref.samples), mds_root, work, chunks))
    with mp.get_context("spawn").Pool(procs) as pool:
        results = pool.map(_baseline_explode_batch, batches, chunksize=1)
    stages["explode"] = time.perf_counter() - t_start
    tokens = sum(r["tokens"] for r in results)
    scratch_explode = _du(Path(work) / "explode")

    t1 = time.perf_counter()
    db = duckdb.connect(db_path)
    db.execute("SET enable_progress_bar=false")
    db.execute(f"SET threads = {procs}")
    # Step 2: bigram chunks -> bigrams_raw; step 3: bigrams and bigram_prefixes.
    db.execute("CREATE OR REPLACE TABLE bigrams_raw (id0 USMALLINT, id1 USMALLINT, count UINTEGER)")
    for i in range(chunks):
        glob = f"{work}/explode/2/id0_chunk={i}/*.parquet"
        if not list(Path(f"{work}/explode/2/id0_chunk={i}").glob("*.parquet")):
            continue
        db.execute(f"""INSERT INTO bigrams_raw SELECT id0, id1, CAST(sum(count) AS UINTEGER) AS count
                       FROM read_parquet('{glob}') GROUP BY id0, id1""")
    db.execute("""CREATE OR REPLACE TABLE bigrams AS
                  SELECT id0, id1, CAST(sum(count) AS UINTEGER) AS count FROM bigrams_raw GROUP BY id0, id1""")
    # The original's ARG_MAX picks an arbitrary follower on ties; both builds here use
    # the smallest id so the databases can be compared. Same cost.
    db.execute("""CREATE OR REPLACE TABLE bigram_prefixes AS
                  SELECT id0, arg_max(id1, (count, -CAST(id1 AS BIGINT))) AS id1,
                         CAST(SUM(count) AS UBIGINT) AS sum_count, MAX(count) AS max_count,
                         CAST(MAX(count) AS DOUBLE) / CAST(SUM(count) AS DOUBLE) AS frac_max
                  FROM bigrams GROUP BY id0 ORDER BY frac_max DESC""")
    db.execute("DROP TABLE bigrams_raw")
    # Step 4: recombine each trigram chunk into one Parquet file.
    present = []
    for i in range(chunks):
        if not list(Path(f"{work}/explode/3/id0_chunk={i}").glob("*.parquet")):
            continue
        present.append(i)
        out = f"{work}/recombined/id0_chunk={i}/data.parquet"
        os.makedirs(os.path.dirname(out), exist_ok=True)
        db.execute(f"""COPY (SELECT id0, id1, id2, CAST(sum(count) AS UINTEGER) AS count
                              FROM read_parquet('{work}/explode/3/id0_chunk={i}/*.parquet')
                              GROUP BY id0, id1, id2) TO '{out}' (FORMAT PARQUET)""")
    scratch_recombined = _du(Path(work) / "recombined")
    # Step 5: trigrams_i tables, trigram_prefixes per chunk, then one trigrams table.
    for i in present:
        db.execute(f"""CREATE OR REPLACE TABLE trigrams_{i} AS SELECT id0, id1, id2, count
                       FROM read_parquet('{work}/recombined/id0_chunk={i}/data.parquet')""")
    db.execute("""CREATE OR REPLACE TABLE trigram_prefixes (id0 USMALLINT, id1 USMALLINT, id2 USMALLINT,
                  sum_count UBIGINT, max_count UINTEGER, frac_max DOUBLE)""")
    for i in present:
        db.execute(f"""INSERT INTO trigram_prefixes
                       SELECT id0, id1, arg_max(id2, (count, -CAST(id2 AS BIGINT))) AS id2,
                              CAST(SUM(count) AS UBIGINT) AS sum_count, MAX(count) AS max_count,
                              CAST(MAX(count) AS DOUBLE) / CAST(SUM(count) AS DOUBLE) AS frac_max
                       FROM read_parquet('{work}/recombined/id0_chunk={i}/data.parquet')
                       GROUP BY (id0, id1) ORDER BY frac_max DESC""")
    db.execute("CREATE OR REPLACE TABLE trigrams (id0 USMALLINT, id1 USMALLINT, id2 USMALLINT, count UINTEGER)")
    for i in present:
        db.execute(f"INSERT INTO trigrams SELECT * FROM trigrams_{i}")
    # The original kept the trigrams_i tables; they are dropped here so the file holds
    # the same tables as ours (this only costs the baseline time).
    for i in present:
        db.execute(f"DROP TABLE trigrams_{i}")
    db.execute("CHECKPOINT")
    db.close()
    stages["aggregate+load"] = time.perf_counter() - t1
    return {"tokens": tokens, "stages": stages, "seconds": time.perf_counter() - t_start,
            "scratch": {"explode": scratch_explode, "total": scratch_explode + scratch_recombined},
            "explode_task_seconds": sum(r["seconds"] for r in results)}


# ----------------------------------------------------------------------------- ours


def run_ours(mds_root: str, work: str, db_path: str, workers: int, chunks: int,
             steps_split: bool, memory_limit: str, method: str = "auto") -> dict:
    from ngram_dask.build.pipeline import run_build
    from ngram_dask.config import load_config

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
            "scratch": {"explode": _du(Path(work) / "explode"),
                        "total": _du(Path(work) / "explode") + _du(Path(work) / "aggregate")},
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
    from ngram_dask.build import counting
    from ngram_dask.mds import list_shards, read_shard

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
    import pyarrow.parquet as pq

    from ngram_dask.build import aggregate

    merge_s, rows_in, rows_out = 0.0, 0, 0
    for chunk_dir in sorted(Path(work, "explode").glob("n=*/id0_chunk=*")):
        n = int(chunk_dir.parent.name.split("=")[1])
        table = pq.read_table([str(p) for p in sorted(chunk_dir.glob("*.parquet"))]).combine_chunks() \
            if len(list(chunk_dir.glob("*.parquet"))) else None
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
    from ngram_dask.build import aggregate

    out = []
    dirs = sorted(Path(work, "explode").glob("n=*/id0_chunk=*"))
    step = max(1, len(dirs) // sample)
    # the first chunk twice: its first pass pays each engine's imports and is not kept
    for i, chunk_dir in enumerate([dirs[0]] + dirs[::step][:sample]):
        n = int(chunk_dir.parent.name.split("=")[1])
        chunk = int(chunk_dir.name.split("=")[1])
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


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


class RssSampler:
    """Peak RSS of a process and all its descendants, sampled every ``interval`` s."""

    def __init__(self, pid: int, interval: float = 0.05):
        import psutil

        self.root = psutil.Process(pid)
        self.peaks: dict[int, tuple[str, int]] = {}
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self):
        import psutil

        while not self._stop.is_set():
            try:
                procs = [self.root] + self.root.children(recursive=True)
            except psutil.Error:
                break
            for p in procs:
                try:
                    rss = p.memory_info().rss
                    name = "main" if p.pid == self.root.pid else _role(p)
                except psutil.Error:
                    continue
                old = self.peaks.get(p.pid, (name, 0))
                self.peaks[p.pid] = (name, max(old[1], rss))
            self._stop.wait(self.interval)

    def summary(self) -> dict:
        out: dict[str, int] = {}
        for name, rss in self.peaks.values():
            out[name] = max(out.get(name, 0), rss)
        return out


def _role(p) -> str:
    cmd = " ".join(p.cmdline())
    if "multiprocessing" in cmd and ("spawn_main" in cmd or "forkserver" in cmd):
        return "worker"  # Dask worker processes and the baseline's pool both start this way
    if "resource_tracker" in cmd:
        return "helper"
    return "other"


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
