"""Stage 2, aggregate: one ``id0_chunk`` -> its final n-gram counts and prefix table.

Every n-gram with a given ``id0`` lands in one chunk, so a chunk's sums are final
and its prefix table (which only groups by ``id0..id{n-2}``) needs no other chunk.
A chunk's partial counts are its blocks in every unit's part file of n
(``ngrams.partfile``: a few ranged reads per file, whatever K). Two ways to sum them,
chosen per chunk and recorded in its marker (``path``):

* ``numpy`` (the fast path, at any size): the chunk's sorted key space is cut into
  *key ranges* whose partial rows fit the memory budget (``counting.key_ranges``, from
  the marks in the indexes, a key every 8,192 rows: nothing is read to plan). One
  range: the blocks are read, their rows packed into one integer key each and merged
  with a stable sort (the blocks are sorted runs). Several: one pass reads every block
  once and appends each row, packed, to its range's spill file in local scratch (16 B a
  row); then range by range its spill is read back and sorted. (Reading the blocks
  overlapping each range instead decoded a chunk ~10x at 10 ranges when a unit held a
  few blocks of the chunk: 3.1x the one-range time.) Equal keys are summed, the prefix
  rows computed from the sorted runs. Each range is appended to
  the chunk's final files as a row group; a prefix cut by a range bound is merged with
  its continuation (sums add, the larger max wins, the earlier range's id on ties), so
  the files are those of one pass. No hashing, and no range needs more than the budget
  (bounds fall on n-gram prefixes: a range holds whole n-grams of every derived n).
* ``duckdb`` (the fallback: ``build.aggregate_method = duckdb``, or a chunk that would
  need more than ``MAX_RANGES`` ranges): DuckDB's hash aggregate out of core inside the
  worker, with a memory limit below the worker's and a temp directory to spill to.

Either writes two sorted Parquet files with exactly the final tables' columns::

    <work>/aggregate/n=<n>/ngrams/chunk=<c>.parquet
    <work>/aggregate/n=<n>/prefixes/chunk=<c>.parquet

(staged under a temporary name and published when the chunk is done), then a ``_done``
marker with row counts (``runtime.resumable``). A chunk with a marker is skipped; a
worker lost in the middle of a chunk leaves no final file and no marker, and the
chunk is done again from its partial counts.

A derived n (``AggregateSettings.derived``, e.g. the bigrams of a 2,3 build) has no
unit of its own: the unit of chunk c of n + 1 sums its final (n+1)-gram counts over the
last id, adds the samples' last n-grams (all the explode wrote for n), and writes n's
files and marker for chunk c before its own marker.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass

import numpy as np

from ngram_dask import faults
from ngram_dask.db import scalar
from ngram_dask.errors import WorkDirError
from ngram_dask.inputs import UNIT_MEMORY_SHARE, WORKER_BASELINE_BYTES
from ngram_dask.ngrams import partfile
from ngram_dask.ngrams.counting import (
    KEY_DTYPE,
    Counts,
    add_sorted,
    key_ranges,
    pack_columns,
    sum_runs,
    unpack_keys,
)
from ngram_dask.ngrams.explode import n_dir
from ngram_dask.runtime import resumable
from ngram_dask.schema import id_columns
from ngram_dask.storage import atomic_write_path, glob, join, sql_string

log = logging.getLogger(__name__)

# Bytes of memory the numpy path needs per partial-count row: packed key, count,
# sort order, the sorted copies and the output columns (measured with tracemalloc
# on a trigram chunk: ~60 B/row; rounded up).
NUMPY_BYTES_PER_ROW = 80
# A chunk needing more key ranges than this goes to DuckDB: each range reads the
# blocks overlapping it, so very many ranges read the chunk's blocks many times.
MAX_RANGES = 256
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
    # "auto": numpy in key ranges that fit the budget (DuckDB past MAX_RANGES);
    # "numpy" / "duckdb" force one path (tests, benchmarks).
    method: str = "auto"
    # Memory budget of the numpy path per range; None = memory_fraction of the worker's
    # limit (the same share DuckDB would get), or DEFAULT_NUMPY_BUDGET without a worker.
    numpy_budget_bytes: int | None = None
    # Where DuckDB spills; None = the worker's local directory (Dask's scratch space).
    spill_dir: str | None = None
    # n derived from the (n+1)-grams of the same chunk (counting.derived_in_aggregate);
    # their partial files hold only the samples' last n-grams.
    derived: tuple[int, ...] = ()

    def top(self, n: int) -> int:
        """The n whose unit writes n's files: n itself, or the first larger n not derived."""
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


def chunk_sources(work_dir: str, n: int, chunk: int) -> list[partfile.ChunkBlocks]:
    """The blocks of ``chunk`` in every unit's part file of n (those holding any)."""
    found = (partfile.chunk_blocks(url, chunk) for url in glob(join(n_dir(work_dir, n), "*.index")))
    return [b for b in found if len(b)]


@resumable(lambda n, chunk, s: marker_url(s.work_dir, n, chunk))
def aggregate_chunk(n: int, chunk: int, s: AggregateSettings) -> dict:
    """Sum the partial counts of one chunk and write its final rows (a resumable unit).

    With derived smaller n (``s.chain(n)``), their final rows are written too, each with
    its own marker, before this chunk's marker: a chunk whose marker exists has them all.
    """
    chain = s.chain(n)
    sources = {m: chunk_sources(s.work_dir, m, chunk) for m in chain}
    outs = {m: output_urls(s.work_dir, m, chunk) for m in chain}
    stats = {m: {"n": m, "chunk": chunk, "inputs": len(sources[m]), "rows": 0, "prefix_rows": 0,
                 "files": {}, "path": None} for m in chain}
    # A chunk may hold tails of a derived n and no (n+1)-gram at all (samples of n tokens).
    if any(sources.values()):
        limit, threads, scratch = _worker_resources()
        limit = s.memory_limit_bytes or limit
        rows = sum(int(b.rows.sum()) for m in chain for b in sources[m])
        path, estimate, budget, n_ranges = choose_path(n, rows, s, limit)
        reason = _reason(s.method, path, estimate, budget, n_ranges)
        log.info("aggregate n=%d chunk=%d: %s path (%s)", n, chunk, path, reason)
        if path == "numpy":
            done = _aggregate_numpy(chain, chunk, sources, outs, n_ranges, scratch, s)
        else:
            done = _aggregate_duckdb(chain, chunk, sources, outs, s, limit, threads, scratch)
        for m in chain:
            stats[m].update(done[m], path=path, reason=reason, estimated_bytes=estimate, budget_bytes=budget,
                            partial_rows=sum(int(b.rows.sum()) for b in sources[m]))
    # Arrow's pool keeps what it freed for reuse: handed back, so the worker's memory
    # between tasks is its baseline (Dask pauses a worker on the memory it holds).
    import pyarrow as pa

    pa.default_memory_pool().release_unused()
    # The derived n's markers are written by the runtime, before this chunk's own.
    also = {marker_url(s.work_dir, m, chunk): {**stats[m], "derived_from": m + 1} for m in chain[1:]}
    return {**stats[n], "also": also}


def chunk_results(top: dict) -> list[dict]:
    """A chunk unit's statistics, then those of the n derived in it (the same ``skipped``)."""
    also = top.get("also", {})
    return [{k: v for k, v in top.items() if k != "also"}] + list(also.values())


def _reason(method: str, path: str, estimate: int, budget: int, n_ranges: int) -> str:
    if method != "auto":
        return f"build.aggregate_method = {method}"
    if path == "numpy":
        return (f"{n_ranges} key range(s) of the numpy budget ({estimate:,} B over {budget:,} B each): "
                "the sorted merge is faster")
    return f"over {MAX_RANGES} ranges of the numpy budget ({estimate:,} B over {budget:,} B): DuckDB streams and spills"


def worker_budget(worker_limit: int, fraction: float) -> int:
    """The memory one key range may use on a worker of ``worker_limit``: ``fraction`` of it,
    and no more than leaves the worker's baseline under the share its explode units keep to
    (``inputs.UNIT_MEMORY_SHARE``, below Dask's pause at 80%). A 1 GiB worker summing half its
    limit sat at 854 MiB after the task, paused, and the build waited on it forever."""
    room = worker_limit * UNIT_MEMORY_SHARE - WORKER_BASELINE_BYTES
    return max(32 << 20, int(min(worker_limit * fraction, room)))


def choose_path(n: int, rows: int, s: AggregateSettings, worker_limit: int | None) -> tuple[str, int, int, int]:
    """``(path, estimated_bytes, budget_bytes, ranges)`` for a chunk of ``rows`` partial rows:
    the explicit choice of engine, and how many key ranges the numpy path cuts it into."""
    if s.method not in ("auto", "numpy", "duckdb"):
        raise ValueError(f"AggregateSettings.method must be auto, numpy or duckdb, got {s.method!r}")
    if s.numpy_budget_bytes is not None:
        budget = s.numpy_budget_bytes
    elif worker_limit:
        budget = worker_budget(worker_limit, s.memory_fraction)
    else:
        budget = DEFAULT_NUMPY_BUDGET
    estimate = rows * (NUMPY_BYTES_PER_ROW + 2 * n)
    n_ranges = max(1, math.ceil(estimate / max(budget, 1)))
    if s.method == "duckdb" or (s.method == "auto" and n_ranges > MAX_RANGES):
        return "duckdb", estimate, budget, 1
    return "numpy", estimate, budget, min(n_ranges, MAX_RANGES)


def merge_partials(n: int, ids: list, counts, bits: int):
    """Sum partial counts: ``(keys, counts)`` with keys ascending and distinct.

    Every partial block is sorted, so the concatenation is a few sorted runs and a
    stable sort merges them in near-linear time.
    """
    keys = pack_columns(ids, bits)
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


def merge_prefix_runs(held: tuple | None, rows: tuple) -> tuple[tuple | None, tuple]:
    """Join prefix rows cut by a range bound: ``held`` (the previous range's last row, kept
    back) and this range's ``rows`` (prefixes, last ids, sums, maxes; ascending) ->
    ``(new held row, rows ready to write)``. A prefix on both sides gets the summed count
    and the larger max; on a tie the held row's id, which is smaller (its range is earlier)."""
    heads, last, sums, maxes = (np.array(a, copy=True) for a in rows)
    if held is not None:
        if len(heads) and heads[0] == held[0][0]:
            sums[0] += held[2][0]
            if held[3][0] >= maxes[0]:
                last[0], maxes[0] = held[1][0], held[3][0]
        else:
            heads, last, sums, maxes = (np.concatenate([h, a]) for h, a in zip(held, (heads, last, sums, maxes)))
    if not len(heads):
        return None, (heads, last, sums, maxes)
    return (tuple(a[-1:] for a in (heads, last, sums, maxes)),
            tuple(a[:-1] for a in (heads, last, sums, maxes)))


def _packed_blocks(m: int, blocks: list[partfile.ChunkBlocks], bits: int):
    """Each block of m's partial rows as ``(keys, counts as uint64, id type)``, keys packed."""
    for b in blocks:
        for table in partfile.read_blocks(b, slice(None), id_columns(m) + ["count"]):
            ids = [table.column(c).to_numpy() for c in id_columns(m)]
            yield pack_columns(ids, bits), table.column("count").to_numpy().astype(np.uint64), ids[0].dtype


def _summed(keys: list[np.ndarray], counts: list[np.ndarray]) -> Counts:
    """Runs of sorted rows merged with a stable sort, equal keys summed."""
    if not keys:
        return Counts(np.empty(0, KEY_DTYPE), np.empty(0, np.uint64))
    k, c = np.concatenate(keys), np.concatenate(counts)
    order = np.argsort(k, kind="stable")
    return sum_runs(k[order], c[order])


def _read_all(m: int, blocks: list[partfile.ChunkBlocks], bits: int):
    """Summed counts of all m's partial rows of the chunk (one key range), keys ascending;
    the id type of the blocks; how many blocks were read."""
    keys, counts, dtype = [], [], None
    for k, c, dtype in _packed_blocks(m, blocks, bits):  # noqa: B007 (the last block's id type is kept)
        keys.append(k)
        counts.append(c)
    return _summed(keys, counts), dtype, len(keys)


def _spill_ranges(m: int, blocks: list[partfile.ChunkBlocks], bounds: list[int], bits: int,
                  spill_dir: str) -> tuple[list[str], object, int]:
    """Every block of m read once, each row appended to the spill file of its range
    (``bounds``: the ranges' lower bounds past the first, in m's keys); the files, the
    blocks' id type, how many blocks were read.

    A spill file is segments of uint64 words: ``rows``, then that many packed keys, then
    as many counts (one segment per block that has rows in the range; one open file per
    range, so 256 ranges stay far below the open-file limit)."""
    paths = [os.path.join(spill_dir, f"n{m}-range{r}.spill") for r in range(len(bounds) + 1)]
    edges = np.asarray(bounds, KEY_DTYPE)
    outs = [open(path, "wb") for path in paths]
    dtype, read = None, 0
    try:
        for k, c, id_type in _packed_blocks(m, blocks, bits):
            read, dtype = read + 1, id_type
            where = np.searchsorted(edges, k, side="right")  # the range of each row
            if len(where) > 1 and np.any(where[1:] < where[:-1]):
                order = np.argsort(where, kind="stable")  # a block is sorted; stay exact if not
                k, c, where = k[order], c[order], where[order]
            cuts = np.searchsorted(where, np.arange(len(paths) + 1))
            for r in np.flatnonzero(cuts[1:] > cuts[:-1]):
                a, z = cuts[r], cuts[r + 1]
                np.array([z - a], np.uint64).tofile(outs[r])
                k[a:z].tofile(outs[r])
                c[a:z].tofile(outs[r])
    finally:
        for out in outs:
            out.close()
    return paths, dtype, read


def _read_spill(path: str) -> Counts:
    """One range's spilled rows, summed, keys ascending (the spill file is removed)."""
    words = np.fromfile(path, np.uint64)
    os.remove(path)
    keys, counts, at = [], [], 0
    while at < len(words):
        rows = int(words[at])
        keys.append(words[at + 1:at + 1 + rows])
        counts.append(words[at + 1 + rows:at + 1 + 2 * rows])
        at += 1 + 2 * rows
    return _summed(keys, counts)


class _StagedParquet:
    """One final file, written a row group per key range under a temporary name and
    published (renamed, or uploaded in one PUT) once the whole chunk is done."""

    def __init__(self, url: str, tmp_root: str, n: int, kind: str):
        self.url, self.n, self.tmp_root = url, n, tmp_root
        self.target = None  # storage.atomic_write_path, entered at the first row
        self.writer = None
        self.rows = 0

    def write(self, columns: dict) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table(columns)
        if not table.num_rows:
            return
        if self.writer is None:
            self.target = atomic_write_path(self.url, self.tmp_root)
            self.writer = pq.ParquetWriter(self.target.__enter__(), table.schema, **_final_parquet(columns, self.n))
        self.writer.write_table(table)
        self.rows += table.num_rows

    def publish(self) -> str | None:
        if self.writer is None:
            return None
        self.writer.close()
        self.writer, target, self.target = None, self.target, None
        target.__exit__(None, None, None)  # renamed into place, or uploaded
        return self.url

    def discard(self) -> None:
        """Drop an unpublished file (the chunk failed): nothing is left behind."""
        if self.writer is not None:
            self.writer.close()
            stop = RuntimeError("aggregate unit failed")
            self.target.__exit__(RuntimeError, stop, None)


def _aggregate_numpy(chain: list[int], chunk: int, sources: dict[int, list[partfile.ChunkBlocks]],
                     outs: dict[int, dict[str, str]], n_ranges: int, scratch: str | None,
                     s: AggregateSettings) -> dict:
    """The in-memory path, one key range at a time (``n_ranges`` planned from the indexes)."""
    n = chain[0]
    bits = next(b.bits for m in chain for b in sources[m])
    # Bounds on prefixes of the smallest derived n: each range holds whole n-grams of every n.
    bounds = key_ranges(np.concatenate([b.mark_keys for b in sources[n]] or [np.empty(0, KEY_DTYPE)]),
                        np.concatenate([b.mark_rows for b in sources[n]] or [np.empty(0, np.int64)]),
                        n_ranges, bits * (n - chain[-1]))
    ranges = len(bounds) + 1
    tmp_root = tempfile.mkdtemp(prefix=f"agg-n{n}-c{chunk}-", dir=s.spill_dir or scratch)
    writers = {m: {kind: _StagedParquet(outs[m][kind], tmp_root, m, kind) for kind in outs[m]} for m in chain}
    held: dict[int, tuple | None] = {m: None for m in chain}
    rows = {m: 0 for m in chain}
    prefix_count = {m: 0 for m in chain}
    out_dtype = None
    blocks_read = 0
    spills: dict[int, list[str]] = {}
    try:
        if ranges > 1:
            for m in chain:
                spills[m], dtype, read = _spill_ranges(m, sources[m], [b >> bits * (n - m) for b in bounds],
                                                       bits, tmp_root)
                blocks_read += read
                if out_dtype is None:
                    out_dtype = dtype
        for r in range(ranges):
            keys = sums = None
            for m in chain:
                if spills:
                    part = _read_spill(spills[m][r])
                else:
                    part, dtype, read = _read_all(m, sources[m], bits)
                    blocks_read += read
                    if out_dtype is None:
                        out_dtype = dtype
                if keys is not None:  # derived: the (m+1)-grams summed over their last id, plus the tails
                    part = add_sorted(sum_runs(keys >> KEY_DTYPE(bits), sums), part)
                keys, sums = part.keys, part.counts
                if not len(keys):
                    continue
                rows[m] += len(keys)
                cols = dict(zip(id_columns(m), unpack_keys(keys, m, bits, out_dtype)))
                cols["count"] = sums
                writers[m]["ngrams"].write(cols)
                if m >= 2:
                    heads, last, psum, pmax, _ = prefix_rows(m, keys, sums, bits)
                    held[m], ready = merge_prefix_runs(held[m], (heads, last, psum, pmax))
                    prefix_count[m] += _write_prefixes(writers[m]["prefixes"], m, ready, bits, out_dtype)
            if r < ranges - 1:
                faults.crash_point(faults.CRASH_IN_AGGREGATE, f"{n}:{chunk}:{r}")
        results = {}
        for m in chain:
            if held[m] is not None:
                prefix_count[m] += _write_prefixes(writers[m]["prefixes"], m, held[m], bits, out_dtype)
            files = {kind: url for kind, w in writers[m].items() if (url := w.publish())}
            results[m] = {"rows": rows[m], "prefix_rows": prefix_count[m], "files": files,
                          "ranges": ranges, "blocks_read": blocks_read}
        return results
    finally:
        for ws in writers.values():
            for w in ws.values():
                w.discard()
        shutil.rmtree(tmp_root, ignore_errors=True)


def _write_prefixes(writer: _StagedParquet, n: int, rows: tuple, bits: int, out_dtype) -> int:
    heads, last, psum, pmax = rows
    if not len(heads):
        return 0
    cols = dict(zip(id_columns(n)[:-1], unpack_keys(heads, n - 1, bits, out_dtype)))
    cols[id_columns(n)[-1]] = last.astype(out_dtype)
    cols.update(sum_count=psum.astype(np.uint64), max_count=pmax.astype(np.uint64),
                frac_max=pmax.astype(np.float64) / psum.astype(np.float64))
    writer.write(cols)
    return len(heads)


def _final_parquet(columns, n: int) -> dict:
    """Parquet options of a final file. The columns that are not ids (counts, mostly small
    numbers in 8 bytes, and shares) are byte-stream split: zstd then meets their high bytes
    as runs of zeros, which took ~25% off writing a trigram file, and ~1.5 s off the
    aggregate+load at 1e9 tokens (docs/performance.md)."""
    ids = set(id_columns(n))
    return {**FINAL_PARQUET, "column_encoding": {c: "BYTE_STREAM_SPLIT" for c in columns if c not in ids}}


def _block_stream(blocks: list[partfile.ChunkBlocks], columns: list[str]):
    """Every block of a chunk as one Arrow stream, read as DuckDB consumes it."""
    import pyarrow as pa

    tables = (t for b in blocks for t in partfile.read_blocks(b, slice(None), columns))
    first = next(tables)

    def batches():
        yield from first.to_batches()
        for t in tables:
            yield from t.to_batches()

    return pa.RecordBatchReader.from_batches(first.schema, batches())


def _aggregate_duckdb(chain: list[int], chunk: int, sources: dict[int, list[partfile.ChunkBlocks]],
                      outs: dict[int, dict[str, str]], s: AggregateSettings, limit: int | None,
                      threads: int | None, scratch: str | None) -> dict:
    """Out of core: DuckDB's hash aggregate under a memory limit, spilling to local disk."""
    import duckdb

    try:
        return _duckdb_chunk(chain, chunk, sources, outs, s, limit, threads, scratch)
    except duckdb.OutOfMemoryException as exc:
        raise WorkDirError(
            f"aggregating chunk {chunk} of n={chain[0]} ran out of memory under DuckDB's limit "
            f"({str(exc).splitlines()[0].split('(')[-1].rstrip(')')}); raise --memory-limit or "
            "build.duckdb_memory_fraction, or use more --chunks"
        ) from None


def _duckdb_chunk(chain: list[int], chunk: int, sources: dict[int, list[partfile.ChunkBlocks]],
                  outs: dict[int, dict[str, str]], s: AggregateSettings, limit: int | None,
                  threads: int | None, scratch: str | None) -> dict:
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
            **({"memory_limit": f"{worker_budget(limit, s.memory_fraction)}B"} if limit else {}),
        })
        spilled = 0
        previous = None  # the temp table of the n before (n + 1), if it had rows
        for n in chain:
            ids = ", ".join(id_columns(n))
            table = f"g{n}"
            sources_sql = [f"SELECT {ids}, count FROM {previous}"] if previous else []  # derived: by prefix
            if sources[n]:
                con.register(f"parts{n}", _block_stream(sources[n], id_columns(n) + ["count"]))
                sources_sql.append(f"SELECT {ids}, count FROM parts{n}")
            if not sources_sql:  # no (n+1)-gram in this chunk, only tails of a smaller n
                results[n] = {"rows": 0, "prefix_rows": 0, "files": {}, "spilled_bytes": spilled}
                continue
            con.execute(
                f"CREATE TEMP TABLE {table} AS SELECT {ids}, CAST(SUM(count) AS UBIGINT) AS count "
                f"FROM ({' UNION ALL '.join(sources_sql)}) GROUP BY {ids}")
            if sources[n]:
                con.unregister(f"parts{n}")
            if previous:
                con.execute(f"DROP TABLE {previous}")
            previous = table
            res = {"rows": scalar(con, f"SELECT count(*) FROM {table}"), "prefix_rows": 0, "files": {}}
            spilled = max(spilled, _spilled_bytes(con))
            ngrams_sql, prefixes_sql = chunk_sql(n, table)
            queries = {"ngrams": ngrams_sql}
            if prefixes_sql:
                queries["prefixes"] = prefixes_sql
            for kind, sql in queries.items():
                with atomic_write_path(outs[n][kind], tmp_root) as staged:
                    con.execute(f"COPY ({sql}) TO {sql_string(staged)} (FORMAT parquet, COMPRESSION zstd, "
                                "COMPRESSION_LEVEL 1)")
                spilled = max(spilled, _spilled_bytes(con))
                res["files"][kind] = outs[n][kind]
            if prefixes_sql:
                head = ", ".join(id_columns(n)[:-1])
                res["prefix_rows"] = scalar(con, f"SELECT count(*) FROM (SELECT DISTINCT {head} FROM {table})")
            res["spilled_bytes"] = spilled
            results[n] = res
        con.close()
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    return results


def _spilled_bytes(con) -> int:
    """Bytes DuckDB holds in its temp directory now (evicted blocks of the temp table)."""
    return int(scalar(con, "SELECT coalesce(sum(size), 0) FROM duckdb_temporary_files()"))


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
                  "spilled_bytes": "float64", "derived_from": "float64", "partial_rows": "float64",
                  "ranges": "float64", "blocks_read": "float64", "seconds": "float64", "skipped": "bool"}


# Statistics that only some units have (None when absent): float columns, NaN for None.
NUMBERS = ("estimated_bytes", "budget_bytes", "spilled_bytes", "derived_from", "partial_rows", "ranges",
           "blocks_read")


def _empty_frame(columns: dict):
    import pandas as pd

    return pd.DataFrame({name: pd.Series(dtype=dtype) for name, dtype in columns.items()})


def chunk_row(ref: tuple[int, int], work_dir: str):
    """The partition of one (n, chunk): a one-row frame naming the folder of n's part files."""
    import pandas as pd

    n, chunk = ref
    return pd.DataFrame({"n": [n], "id0_chunk": [chunk], "partial_dir": [n_dir(work_dir, n)]})


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
            **{k: number(k) for k in NUMBERS},
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
        for k in NUMBERS:
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
