"""Plain DuckDB: the build's second baseline, the one a user would write instead of ngram-dask.

One process, one DuckDB, no Dask: per n, every sample's n-grams packed into one ``UBIGINT``
key (16 bits per id) and fed as Arrow batches to one streaming ``GROUP BY key``, then the
prefix table by SQL over the packed keys, then the tables unpacked into the catalog's
columns. DuckDB gets every core, a ``memory_limit`` and a temp directory to spill to, so
at equal memory it is the out-of-core hash aggregate at its best. The database holds the
same four tables as ``ngram-dask build --steps explode,aggregate,load`` (ties of the prefix
tables to the smallest id, as the catalog has them)::

    <db>    bigrams, trigrams, bigram_prefixes, trigram_prefixes
    <temp>  DuckDB's spill files while it runs (removed by DuckDB)
"""

from __future__ import annotations

import time

from benchkit.corpus import SEQ_LEN

BATCH_SAMPLES = 512  # ~1M n-grams an Arrow batch


def _batches(mds_root: str, n: int):
    """The packed n-grams of every sample (n-grams stay inside a sample), as Arrow batches."""
    import numpy as np
    import pyarrow as pa

    from ngram_dask.mds import list_shards, read_shard

    for ref in list_shards(mds_root):
        data = read_shard(ref, "uint16", None, verify_hashes=False)
        samples = data.tokens[: data.offsets[-1]].reshape(-1, SEQ_LEN)
        for start in range(0, len(samples), BATCH_SAMPLES):
            ids = samples[start:start + BATCH_SAMPLES].astype(np.uint64)
            key = ids[:, : SEQ_LEN - n + 1].copy()
            for k in range(1, n):
                key <<= np.uint64(16)
                key |= ids[:, k: SEQ_LEN - n + 1 + k]
            yield pa.record_batch([pa.array(key.ravel())], names=["k"])


def run_plain_duckdb(mds_root: str, db_path: str, memory_limit: str, threads: int, temp_dir: str) -> dict:
    """Build the four tables; ``{"seconds", "stages": {n: seconds}, "rows": {table: rows}}``."""
    import duckdb
    import pyarrow as pa

    t0 = time.perf_counter()
    con = duckdb.connect(db_path, config={"memory_limit": memory_limit, "threads": threads,
                                          "temp_directory": temp_dir, "preserve_insertion_order": False})
    con.execute("SET enable_progress_bar = false")
    stages = {}
    for n, name in ((2, "bigram"), (3, "trigram")):
        ts = time.perf_counter()
        reader = pa.RecordBatchReader.from_batches(pa.schema([("k", pa.uint64())]), _batches(mds_root, n))
        con.register("grams", reader)
        con.execute("CREATE TABLE counted AS SELECT k, count(*)::UBIGINT AS count FROM grams GROUP BY k")
        con.unregister("grams")
        ids = ", ".join(f"((k >> {16 * (n - 1 - i)}) & 65535)::USMALLINT AS id{i}" for i in range(n))
        con.execute(f"CREATE TABLE {name}s AS SELECT {ids}, count FROM counted")
        heads = ", ".join(f"((p >> {16 * (n - 2 - i)}) & 65535)::USMALLINT AS id{i}" for i in range(n - 1))
        con.execute(f"""CREATE TABLE {name}_prefixes AS
            SELECT {heads}, last::USMALLINT AS id{n - 1}, sum_count, max_count,
                   max_count::DOUBLE / sum_count::DOUBLE AS frac_max
            FROM (SELECT k >> 16 AS p, arg_max(k & 65535, (count, -(k & 65535)::BIGINT)) AS last,
                         sum(count)::UBIGINT AS sum_count, max(count)::UBIGINT AS max_count
                  FROM counted GROUP BY p)""")
        con.execute("DROP TABLE counted")
        stages[n] = time.perf_counter() - ts
    con.execute("CHECKPOINT")
    rows = {t: con.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0]
            for t in ("bigrams", "trigrams", "bigram_prefixes", "trigram_prefixes")}
    sums = {t: int(con.execute(f"SELECT sum(count) FROM {t}").fetchall()[0][0]) for t in ("bigrams", "trigrams")}
    con.close()
    return {"seconds": time.perf_counter() - t0, "stages": stages, "rows": rows, "sums": sums}
