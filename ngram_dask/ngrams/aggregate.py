"""Stage 2, aggregate: one ``id0_chunk`` -> its final n-gram counts and prefix table.

Every n-gram with a given ``id0`` lands in one chunk, so a chunk's sums are final
and its prefix table (which only groups by ``id0..id{n-2}``) needs no other chunk.
Two ways to do it, chosen per chunk and recorded in its marker (``path``):

* ``numpy`` (the fast path): when the chunk's partial counts fit a memory budget,
  read them, pack each row into one integer key and merge the already-sorted
  partial files with a stable sort (timsort merges sorted runs in near-linear time),
  sum equal keys and compute the prefix table from the sorted runs. No hashing.
* ``duckdb``: otherwise DuckDB does it out of core inside the worker, with a memory
  limit below the worker's and a temp directory to spill to.

Either writes two sorted Parquet files with exactly the final tables' columns::

    <work>/aggregate/n=<n>/ngrams/chunk=<c>.parquet
    <work>/aggregate/n=<n>/prefixes/chunk=<c>.parquet

then a ``_done`` marker with row counts (``runtime.resumable``). A chunk with a
marker is skipped.

A derived n (``AggregateSettings.derived``, e.g. the bigrams of a 2,3 build) has no
task of its own: the task of chunk c of n + 1 sums its final (n+1)-gram counts over the
last id, adds the samples' last n-grams (all the explode wrote for n), and writes n's
files and marker for chunk c before its own marker.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass

import numpy as np

from ngram_dask.errors import WorkDirError
from ngram_dask.ngrams.counting import KEY_DTYPE, Counts, add_sorted, sum_runs, unpack_keys
from ngram_dask.ngrams.explode import explode_dir
from ngram_dask.runtime import resumable
from ngram_dask.schema import id_columns
from ngram_dask.storage import get_fs, glob, is_local, join, local_path, sql_string

log = logging.getLogger(__name__)

# Bytes of memory the numpy path needs per partial-count row: packed key, count,
# sort order, the sorted copies and the output columns (measured with tracemalloc
# on a trigram chunk: ~60 B/row; rounded up).
NUMPY_BYTES_PER_ROW = 80
# The final per-chunk files are written once and read once, whole (by the load, or by
# `counts`). zstd at level 1 takes half the bytes of LZ4 (0.38 against 0.74 B/token at 1e9
# tokens, which keeps the work dir under half the original's scratch) for ~+1 s of
# aggregate and ~+0.7 s of load there; column statistics would cost a third of the write
# for no reader.
FINAL_PARQUET = {"compression": "zstd", "compression_level": 1, "use_dictionary": False,
                 "write_statistics": False}
# The numpy path's budget when no Dask worker memory limit is known.
DEFAULT_NUMPY_BUDGET = 1 << 30


@dataclass(frozen=True)
class AggregateSettings:
    work_dir: str
    memory_fraction: float = 0.5
    threads: int | None = None
    memory_limit_bytes: int | None = None  # overrides the worker-derived limit (tests, no worker)
    # "auto": numpy when the chunk's estimated footprint fits the budget, else DuckDB;
    # "numpy" / "duckdb" force one path (tests, benchmarks).
    method: str = "auto"
    # Memory budget of the numpy path; None = memory_fraction of the worker's limit
    # (the same share DuckDB would get), or DEFAULT_NUMPY_BUDGET without a worker.
    numpy_budget_bytes: int | None = None
    # Where DuckDB spills; None = the worker's local directory (Dask's scratch space).
    spill_dir: str | None = None
    # n derived from the (n+1)-grams of the same chunk (counting.derived_in_aggregate);
    # their partial files hold only the samples' last n-grams.
    derived: tuple[int, ...] = ()

    def top(self, n: int) -> int:
        """The n whose task writes n's files: n itself, or the first larger n not derived."""
        while n in self.derived:
            n += 1
        return n

    def chain(self, n: int) -> list[int]:
        """``[n, n-1, ...]``: n, then each smaller n derived from the one before it."""
        out = [n]
        while out[-1] - 1 in self.derived:
            out.append(out[-1] - 1)
        return out


def aggregate_dir(work_dir: str, n: int) -> str:
    return join(work_dir, "aggregate", f"n={n}")


def output_urls(work_dir: str, n: int, chunk: int) -> dict[str, str]:
    base = aggregate_dir(work_dir, n)
    return {
        "ngrams": join(base, "ngrams", f"chunk={chunk}.parquet"),
        "prefixes": join(base, "prefixes", f"chunk={chunk}.parquet"),
    }


def marker_url(work_dir: str, n: int, chunk: int) -> str:
    return join(aggregate_dir(work_dir, n), "_done", f"chunk={chunk}.json")


def _worker_resources() -> tuple[int | None, int | None, str | None]:
    """Memory limit, threads and local scratch dir of the Dask worker running us, if any."""
    try:
        from distributed import get_worker

        w = get_worker()
    except (ImportError, ValueError):
        return None, None, None
    limit = getattr(getattr(w, "memory_manager", None), "memory_limit", None)
    return limit, w.state.nthreads, w.local_directory


def chunk_sql(n: int, table: str = "g") -> tuple[str, str]:
    """``(ngrams_select, prefixes_select)`` over a temp table of summed counts."""
    ids = id_columns(n)
    ngrams = f"SELECT {', '.join(ids)}, count FROM {table} ORDER BY {', '.join(ids)}"
    if n < 2:
        return ngrams, ""
    head, last = ids[:-1], ids[-1]
    # Ties for the most frequent follower go to the smallest id: (count, -id) is maximal there.
    prefixes = (
        f"SELECT {', '.join(head)}, "
        f"arg_max({last}, (count, -CAST({last} AS BIGINT))) AS {last}, "
        f"CAST(SUM(count) AS UBIGINT) AS sum_count, "
        f"MAX(count) AS max_count, "
        f"CAST(MAX(count) AS DOUBLE) / CAST(SUM(count) AS DOUBLE) AS frac_max "
        f"FROM {table} GROUP BY {', '.join(head)} ORDER BY {', '.join(head)}"
    )
    return ngrams, prefixes


def partial_files(work_dir: str, n: int, chunk: int) -> list[str]:
    return glob(join(explode_dir(work_dir), f"n={n}", f"id0_chunk={chunk}", "*.parquet"))


@resumable(lambda n, chunk, s: marker_url(s.work_dir, n, chunk))
def aggregate_chunk(n: int, chunk: int, s: AggregateSettings) -> dict:
    """Sum the partial counts of one chunk and write its final rows (a resumable task).

    With derived smaller n (``s.chain(n)``), their final rows are written too, each with
    its own marker, before this chunk's marker: a chunk whose marker exists has them all.
    """
    chain = s.chain(n)
    parts = {m: partial_files(s.work_dir, m, chunk) for m in chain}
    outs = {m: output_urls(s.work_dir, m, chunk) for m in chain}
    stats = {m: {"n": m, "chunk": chunk, "inputs": len(parts[m]), "rows": 0, "prefix_rows": 0,
                 "files": {}, "path": None} for m in chain}
    # A chunk may hold tails of a derived n and no (n+1)-gram at all (samples of n tokens).
    if any(parts.values()):
        limit, threads, scratch = _worker_resources()
        limit = s.memory_limit_bytes or limit
        path, estimate, budget = choose_path(n, [u for m in chain for u in parts[m]], s, limit)
        done = None
        if path == "numpy":
            done = _aggregate_numpy(chain, parts, outs)
            if done is None:  # ids too wide for one 64-bit key
                path = "duckdb"
        reason = _reason(s.method, path, estimate, budget)
        log.info("aggregate n=%d chunk=%d: %s path (%s)", n, chunk, path, reason)
        if done is None:
            done = _aggregate_duckdb(chain, chunk, parts, outs, s, limit, threads, scratch)
        for m in chain:
            stats[m].update(done[m], path=path, reason=reason, estimated_bytes=estimate, budget_bytes=budget)
    # The derived n's markers are written by the runtime, before this chunk's own.
    also = {marker_url(s.work_dir, m, chunk): {**stats[m], "derived_from": m + 1} for m in chain[1:]}
    return {**stats[n], "also": also}


def chunk_results(top: dict) -> list[dict]:
    """A chunk task's statistics, then those of the n derived in it (the same ``skipped``)."""
    also = top.get("also", {})
    return [{k: v for k, v in top.items() if k != "also"}] + list(also.values())


def _aggregate_duckdb(chain: list[int], chunk: int, parts: dict[int, list[str]], outs: dict[int, dict[str, str]],
                      s: AggregateSettings, limit: int | None, threads: int | None, scratch: str | None) -> dict:
    """Out of core: DuckDB's hash aggregate under a memory limit, spilling to local disk."""
    import duckdb

    try:
        return _duckdb_chunk(chain, chunk, parts, outs, s, limit, threads, scratch)
    except duckdb.OutOfMemoryException as exc:
        raise WorkDirError(
            f"aggregating chunk {chunk} of n={chain[0]} ran out of memory under DuckDB's limit "
            f"({str(exc).splitlines()[0].split('(')[-1].rstrip(')')}); raise --memory-limit or "
            "build.duckdb_memory_fraction, or use more --chunks"
        ) from None


def _duckdb_chunk(chain: list[int], chunk: int, parts: dict[int, list[str]], outs: dict[int, dict[str, str]],
                  s: AggregateSettings, limit: int | None, threads: int | None, scratch: str | None) -> dict:
    from ngram_dask.db import memory

    results = {}
    if s.spill_dir:
        os.makedirs(s.spill_dir, exist_ok=True)
    tmp_root = tempfile.mkdtemp(prefix=f"agg-n{chain[0]}-c{chunk}-", dir=s.spill_dir or scratch)
    try:
        con = memory(**{
            "threads": s.threads or threads or 1,
            "temp_directory": os.path.join(tmp_root, "spill"),
            "preserve_insertion_order": False,
            **({"memory_limit": f"{max(32 << 20, int(limit * s.memory_fraction))}B"} if limit else {}),
        })
        if not is_local(s.work_dir):
            con.register_filesystem(get_fs(s.work_dir)[0])
        spilled = 0
        previous = None  # the temp table of the n before (n + 1), if it had rows
        for n in chain:
            ids = ", ".join(id_columns(n))
            table = f"g{n}"
            sources = [f"SELECT {ids}, count FROM {previous}"] if previous else []  # derived: by prefix
            if parts[n]:
                sources.append(f"SELECT {ids}, count FROM read_parquet(?, hive_partitioning = false)")
            if not sources:  # no (n+1)-gram in this chunk, only tails of a smaller n
                results[n] = {"rows": 0, "prefix_rows": 0, "files": {}, "spilled_bytes": spilled}
                continue
            con.execute(
                f"CREATE TEMP TABLE {table} AS SELECT {ids}, CAST(SUM(count) AS UBIGINT) AS count "
                f"FROM ({' UNION ALL '.join(sources)}) GROUP BY {ids}",
                [parts[n]] if parts[n] else [],
            )
            if previous:
                con.execute(f"DROP TABLE {previous}")
            previous = table
            res = {"rows": con.execute(f"SELECT count(*) FROM {table}").fetchone()[0], "prefix_rows": 0, "files": {}}
            spilled = max(spilled, _spilled_bytes(con))
            ngrams_sql, prefixes_sql = chunk_sql(n, table)
            queries = {"ngrams": ngrams_sql}
            if prefixes_sql:
                queries["prefixes"] = prefixes_sql
            for kind, sql in queries.items():
                staged = _staging_path(outs[n][kind], tmp_root)
                con.execute(f"COPY ({sql}) TO {sql_string(staged)} (FORMAT parquet, COMPRESSION zstd, "
                            "COMPRESSION_LEVEL 1)")
                spilled = max(spilled, _spilled_bytes(con))
                _publish(staged, outs[n][kind])
                res["files"][kind] = outs[n][kind]
            if prefixes_sql:
                head = ", ".join(id_columns(n)[:-1])
                res["prefix_rows"] = con.execute(
                    f"SELECT count(*) FROM (SELECT DISTINCT {head} FROM {table})"
                ).fetchone()[0]
            res["spilled_bytes"] = spilled
            results[n] = res
        con.close()
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    return results


def _spilled_bytes(con) -> int:
    """Bytes DuckDB holds in its temp directory now (evicted blocks of the temp table)."""
    return int(con.execute("SELECT coalesce(sum(size), 0) FROM duckdb_temporary_files()").fetchone()[0])


def _reason(method: str, path: str, estimate: int, budget: int) -> str:
    if method != "auto":
        return f"build.aggregate_method = {method}"
    if path == "numpy":
        return f"fits the numpy budget ({estimate:,} <= {budget:,} B): the sorted merge is faster"
    return f"over the numpy budget ({estimate:,} > {budget:,} B): DuckDB streams and spills"


def choose_path(n: int, parts: list[str], s: AggregateSettings, worker_limit: int | None) -> tuple[str, int, int]:
    """``(path, estimated_bytes, budget_bytes)`` for a chunk: the explicit choice of engine.

    The estimate comes from the Parquet footers (row counts), not from reading data.
    """
    if s.method not in ("auto", "numpy", "duckdb"):
        raise ValueError(f"AggregateSettings.method must be auto, numpy or duckdb, got {s.method!r}")
    if s.numpy_budget_bytes is not None:
        budget = s.numpy_budget_bytes
    elif worker_limit:
        budget = int(worker_limit * s.memory_fraction)
    else:
        budget = DEFAULT_NUMPY_BUDGET
    if s.method == "duckdb":
        return "duckdb", 0, budget
    import pyarrow.parquet as pq

    rows = 0
    for url in parts:
        fs, p = get_fs(url)
        with fs.open(p, "rb") as f:
            rows += pq.read_metadata(f).num_rows
    estimate = rows * (NUMPY_BYTES_PER_ROW + 2 * n)
    if s.method == "numpy":
        return "numpy", estimate, budget
    return ("numpy" if estimate <= budget else "duckdb"), estimate, budget


def _read_partials(n: int, parts: list[str]):
    """The id columns and counts of every partial file, concatenated in file order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = []
    for url in parts:
        fs, p = get_fs(url)
        with fs.open(p, "rb") as f:
            tables.append(pq.read_table(f, columns=id_columns(n) + ["count"], use_threads=False))
    table = pa.concat_tables(tables).combine_chunks()
    return [table.column(c).to_numpy() for c in id_columns(n)], table.column("count").to_numpy()


def merge_partials(n: int, ids: list, counts, bits: int):
    """Sum partial counts: ``(keys, counts)`` with keys ascending and distinct.

    Every partial file is sorted, so the concatenation is a few sorted runs and a
    stable sort merges them in near-linear time.
    """
    keys = np.zeros(len(counts), KEY_DTYPE)
    for col in ids:
        keys <<= KEY_DTYPE(bits)
        keys |= col
    order = np.argsort(keys, kind="stable")
    merged = sum_runs(keys[order], counts.astype(np.uint64)[order])
    return merged.keys, merged.counts


def prefix_rows(n: int, keys, counts, bits: int):
    """The prefix table of sorted distinct n-gram keys: per (id0..id{n-2}), the sum of
    counts, the most frequent last id (smallest id on ties), its count and share."""
    prefixes = keys >> KEY_DTYPE(bits)
    starts = np.flatnonzero(np.concatenate(([True], prefixes[1:] != prefixes[:-1])))
    sizes = np.diff(np.append(starts, len(keys)))
    sums = np.add.reduceat(counts, starts)
    maxes = np.maximum.reduceat(counts, starts)
    # Within a prefix the last ids ascend, so the first row reaching the maximum holds
    # the smallest id among the ties.
    hits = np.flatnonzero(counts == np.repeat(maxes, sizes))
    group = np.searchsorted(starts, hits, side="right") - 1
    first_hit = hits[np.concatenate(([True], group[1:] != group[:-1]))]
    last_ids = keys[first_hit] & KEY_DTYPE((1 << bits) - 1)
    frac = maxes.astype(np.float64) / sums.astype(np.float64)
    return prefixes[starts], last_ids, sums.astype(np.uint64), maxes.astype(np.uint64), frac


def _aggregate_numpy(chain: list[int], parts: dict[int, list[str]], outs: dict[int, dict[str, str]]) -> dict | None:
    """The in-memory path; None when the ids are too wide to pack ``chain[0]`` of them in 64 bits."""

    read = {m: _read_partials(m, parts[m]) for m in chain if parts[m]}
    n = chain[0]
    out_dtype = next(iter(read.values()))[0][0].dtype  # the explode wrote the final id type
    # Key width from the largest id present: wide vocabularies still pack when they can.
    bits = max(1, max(int(c.max()) if len(c) else 0 for ids, _ in read.values() for c in ids).bit_length())
    if n * bits > 64:
        return None
    if n in read:
        keys, sums = merge_partials(n, *read.pop(n), bits)
        results = {n: _write_final(n, keys, sums, bits, out_dtype, outs[n])}
    else:
        keys, sums = np.empty(0, KEY_DTYPE), np.empty(0, np.uint64)
        results = {n: {"rows": 0, "prefix_rows": 0, "files": {}}}
    for m in chain[1:]:
        # Derived: the (m+1)-grams summed over their last id (still sorted), plus the tails.
        counts = sum_runs(keys >> KEY_DTYPE(bits), sums)
        if m in read:
            counts = add_sorted(counts, Counts(*merge_partials(m, *read.pop(m), bits)))
        keys, sums = counts.keys, counts.counts
        results[m] = _write_final(m, keys, sums, bits, out_dtype, outs[m])
    return results


def _final_parquet(columns, n: int) -> dict:
    """Parquet options of a final file. The columns that are not ids (counts, mostly small
    numbers in 8 bytes, and shares) are byte-stream split: zstd then meets their high bytes
    as runs of zeros, which took ~25% off writing a trigram file, and ~1.5 s off the
    aggregate+load at 1e9 tokens (docs/performance.md)."""
    ids = set(id_columns(n))
    return {**FINAL_PARQUET, "column_encoding": {c: "BYTE_STREAM_SPLIT" for c in columns if c not in ids}}


def _write_final(n: int, keys, sums, bits: int, out_dtype, outs: dict[str, str]) -> dict:
    """The final n-gram and prefix files of one chunk, from its sorted distinct keys."""
    import pyarrow as pa

    from ngram_dask.storage import atomic_write_parquet

    cols = dict(zip(id_columns(n), unpack_keys(keys, n, bits, out_dtype)))
    cols["count"] = sums
    atomic_write_parquet(outs["ngrams"], pa.table(cols), **_final_parquet(cols, n))
    res = {"rows": len(keys), "prefix_rows": 0, "files": {"ngrams": outs["ngrams"]}}
    if n >= 2:
        heads, last, psum, pmax, frac = prefix_rows(n, keys, sums, bits)
        pcols = dict(zip(id_columns(n)[:-1], unpack_keys(heads, n - 1, bits, out_dtype)))
        pcols[id_columns(n)[-1]] = last.astype(out_dtype)
        pcols.update(sum_count=psum, max_count=pmax, frac_max=frac)
        atomic_write_parquet(outs["prefixes"], pa.table(pcols), **_final_parquet(pcols, n))
        res["prefix_rows"] = len(heads)
        res["files"]["prefixes"] = outs["prefixes"]
    return res


def _staging_path(url: str, tmp_root: str) -> str:
    """Where DuckDB writes first: beside the final file when local (so the publish is a
    rename), else in the worker's scratch dir (then uploaded in one PUT)."""
    if is_local(url):
        dst = local_path(url)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        return os.path.join(os.path.dirname(dst), f".{os.path.basename(dst)}.tmp-{os.getpid()}")
    return os.path.join(tmp_root, os.path.basename(url))


def _publish(staged: str, url: str) -> None:
    if is_local(url):
        os.replace(staged, local_path(url))
    else:
        fs, path = get_fs(url)
        fs.put_file(staged, path)


# ----------------------------------------------------------------------------- as a Dask DataFrame
#
# The aggregate step is a Dask DataFrame of id0 chunks: ``dd.from_map`` makes exactly one
# partition per (n, chunk) (``read_parquet`` could fuse or split files into other
# partitions), each partition one row describing the chunk's partial files, and
# ``map_partitions`` aggregates each chunk where its partition lives. DuckDB (or the
# numpy merge) reads the partial files itself, so a chunk larger than memory still
# streams from disk; what comes back per partition is one row of statistics.

CHUNK_COLUMNS = {"n": "int64", "id0_chunk": "int64", "partial_dir": "object"}
# One row per (n, chunk) unit written: its statistics as typed columns (the client reads
# them back with ``unit_stats``). Strings and None stay Python objects.
RESULT_COLUMNS = {"n": "int64", "id0_chunk": "int64", "inputs": "int64", "rows": "int64",
                  "prefix_rows": "int64", "ngrams_file": "object", "prefixes_file": "object",
                  "path": "object", "reason": "object", "estimated_bytes": "float64", "budget_bytes": "float64",
                  "spilled_bytes": "float64", "derived_from": "float64", "seconds": "float64", "skipped": "bool"}


def _empty_frame(columns: dict):
    import pandas as pd

    return pd.DataFrame({name: pd.Series(dtype=dtype) for name, dtype in columns.items()})


def chunk_row(ref: tuple[int, int], work_dir: str):
    """The partition of one (n, chunk): a one-row frame naming its partial files' folder."""
    import pandas as pd

    n, chunk = ref
    return pd.DataFrame({"n": [n], "id0_chunk": [chunk],
                         "partial_dir": [join(explode_dir(work_dir), f"n={n}", f"id0_chunk={chunk}")]})


def aggregate_partition(part, s: AggregateSettings):
    """``map_partitions`` body: aggregate the chunk(s) of this partition; one stats row per
    (n, chunk) written, derived n included."""
    import pandas as pd

    rows = []
    for n, chunk in zip(part["n"].tolist(), part["id0_chunk"].tolist()):
        for res in chunk_results(aggregate_chunk(int(n), int(chunk), s)):
            rows.append(_result_row(res))
    return pd.DataFrame(rows, columns=list(RESULT_COLUMNS)).astype(
        {k: v for k, v in RESULT_COLUMNS.items() if v != "object"})


def _result_row(res: dict) -> dict:
    files = res.get("files") or {}

    def number(key):
        value = res.get(key)
        return float("nan") if value is None else float(value)

    return {"n": int(res["n"]), "id0_chunk": int(res["chunk"]), "inputs": int(res.get("inputs", 0)),
            "rows": int(res.get("rows", 0)), "prefix_rows": int(res.get("prefix_rows", 0)),
            "ngrams_file": files.get("ngrams"), "prefixes_file": files.get("prefixes"),
            "path": res.get("path"), "reason": res.get("reason"),
            **{k: number(k) for k in ("estimated_bytes", "budget_bytes", "spilled_bytes", "derived_from")},
            "seconds": float(res.get("seconds", 0.0)), "skipped": bool(res.get("skipped"))}


def unit_stats(frame) -> list[dict]:
    """The statistics of every (n, chunk) unit in a computed partition, as the task returned them."""
    import math

    def text(value) -> str | None:  # an object column's missing value may come back as NaN
        return value if isinstance(value, str) else None

    out = []
    for row in frame.to_dict("records"):
        res = {"n": int(row["n"]), "chunk": int(row["id0_chunk"]), "inputs": int(row["inputs"]),
               "rows": int(row["rows"]), "prefix_rows": int(row["prefix_rows"]),
               "files": {k: row[f"{k}_file"] for k in ("ngrams", "prefixes") if text(row[f"{k}_file"])},
               "path": text(row["path"]), "reason": text(row["reason"]), "seconds": float(row["seconds"]),
               "skipped": bool(row["skipped"])}
        for k in ("estimated_bytes", "budget_bytes", "spilled_bytes", "derived_from"):
            if not math.isnan(row[k]):
                res[k] = int(row[k])
        out.append(res)
    return out


def aggregate_frame(todo: list[tuple[int, int]], s: AggregateSettings):
    """The aggregate step as a Dask DataFrame: one partition per (n, chunk) in ``todo``.

    Partition ``i`` is ``todo[i]``. Computing a partition aggregates that chunk
    (idempotently: a chunk with a marker returns its recorded statistics).
    """
    import dask
    import dask.dataframe as dd

    # Object columns stay objects: a conversion to Arrow strings would add a step per partition.
    with dask.config.set({"dataframe.convert-string": False}):
        chunks = dd.from_map(chunk_row, todo, args=[s.work_dir], meta=_empty_frame(CHUNK_COLUMNS),
                             label="id0_chunks", enforce_metadata=False)
        return chunks.map_partitions(aggregate_partition, s, meta=_empty_frame(RESULT_COLUMNS))
