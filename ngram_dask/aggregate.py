"""Stage 2, aggregate: one ``id0_chunk`` -> its final n-gram counts and prefix table.

Every n-gram with a given ``id0`` lands in one chunk, so a chunk's sums are final
and its prefix table (which only groups by ``id0..id{n-2}``) needs no other chunk.
DuckDB does the work out of core inside the worker, with a memory limit below the
worker's and a temp directory to spill to, and writes two sorted Parquet files::

    <work>/aggregate/n=<n>/ngrams/chunk=<c>.parquet
    <work>/aggregate/n=<n>/prefixes/chunk=<c>.parquet

then a ``_done`` marker with row counts. A chunk with a marker is skipped.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass

from .schema import id_columns
from .storage import (
    get_fs,
    glob,
    is_local,
    join,
    local_path,
    read_marker,
    sql_string,
    write_marker,
)
from .explode import explode_dir


@dataclass(frozen=True)
class AggregateSettings:
    work_dir: str
    memory_fraction: float = 0.5
    threads: int | None = None
    memory_limit_bytes: int | None = None  # overrides the worker-derived limit (tests, no worker)


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


def chunk_sql(n: int) -> tuple[str, str]:
    """``(ngrams_select, prefixes_select)`` over a temp table ``g`` of summed counts."""
    ids = id_columns(n)
    ngrams = f"SELECT {', '.join(ids)}, count FROM g ORDER BY {', '.join(ids)}"
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
        f"FROM g GROUP BY {', '.join(head)} ORDER BY {', '.join(head)}"
    )
    return ngrams, prefixes


def aggregate_chunk(n: int, chunk: int, s: AggregateSettings) -> dict:
    """Sum the partial counts of one chunk and write its final rows (idempotent)."""
    done = read_marker(marker_url(s.work_dir, n, chunk))
    if done is not None:
        return {**done, "skipped": True}
    import duckdb

    t0 = time.perf_counter()
    parts = glob(join(explode_dir(s.work_dir), f"n={n}", f"id0_chunk={chunk}", "*.parquet"))
    outs = output_urls(s.work_dir, n, chunk)
    stats = {"n": n, "chunk": chunk, "inputs": len(parts), "rows": 0, "prefix_rows": 0,
             "files": {}}
    if parts:
        limit, threads, scratch = _worker_resources()
        limit = s.memory_limit_bytes or limit
        tmp_root = tempfile.mkdtemp(prefix=f"agg-n{n}-c{chunk}-", dir=scratch)
        try:
            con = duckdb.connect(config={
                "threads": s.threads or threads or 1,
                "temp_directory": os.path.join(tmp_root, "spill"),
                "preserve_insertion_order": False,
                **({"memory_limit": f"{max(64 << 20, int(limit * s.memory_fraction))}B"} if limit else {}),
            })
            if not is_local(s.work_dir):
                con.register_filesystem(get_fs(s.work_dir)[0])
            ids = ", ".join(id_columns(n))
            con.execute(
                f"CREATE TEMP TABLE g AS SELECT {ids}, CAST(SUM(count) AS UBIGINT) AS count "
                f"FROM read_parquet(?, hive_partitioning = false) GROUP BY {ids}",
                [parts],
            )
            stats["rows"] = con.execute("SELECT count(*) FROM g").fetchone()[0]
            ngrams_sql, prefixes_sql = chunk_sql(n)
            queries = {"ngrams": ngrams_sql}
            if prefixes_sql:
                queries["prefixes"] = prefixes_sql
            for kind, sql in queries.items():
                staged = _staging_path(outs[kind], tmp_root)
                con.execute(f"COPY ({sql}) TO {sql_string(staged)} (FORMAT parquet, COMPRESSION zstd)")
                _publish(staged, outs[kind])
                stats["files"][kind] = outs[kind]
            if prefixes_sql:
                head = ", ".join(id_columns(n)[:-1])
                stats["prefix_rows"] = con.execute(
                    f"SELECT count(*) FROM (SELECT DISTINCT {head} FROM g)"
                ).fetchone()[0]
            con.close()
        finally:
            shutil.rmtree(tmp_root, ignore_errors=True)
    stats["seconds"] = round(time.perf_counter() - t0, 4)
    write_marker(marker_url(s.work_dir, n, chunk), stats)
    return {**stats, "skipped": False}


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
