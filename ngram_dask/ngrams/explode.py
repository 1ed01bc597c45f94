"""The build's explode step: the input's pieces -> partial n-gram counts, one file pair per (unit, n).

A piece (``ngram_dask.inputs``) is an MDS shard, or a byte range of a Megatron, flat
``.bin``/``.npy`` or Parquet file. Each unit takes a *piece group* (consecutive pieces,
as many as fit ``unit_tokens``, which the build sizes from the worker's memory),
counts every n-gram inside each sample of all of them at once (one sort or hash
aggregate per unit, the smaller n derived), and writes, per n, one data file and its
index (``ngrams.partfile``)::

    <work>/explode/n=<n>/part-<group>.data    sorted by (id0 % K, ids), in blocks
    <work>/explode/n=<n>/part-<group>.index   where each chunk's blocks are

narrow types (uint16 ids, uint32 counts), zstd-compressed. How many files does not
depend on K. For the n in ``derived`` (n + 1 is counted too), the file holds only the
counts of each sample's last n-gram: the aggregate derives the other n-grams from the
(n+1)-grams.

The group name is its first piece's name plus how many follow, so a retried or re-run
unit replaces its own output and nothing is counted twice; the work dir's manifest
records the unit size, so a rerun cannot regroup pieces under files of another grouping.
A ``_done/<group>.json`` marker written last (``runtime.resumable``) holds the group's
statistics; a group with a marker is skipped.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from ngram_dask.inputs import Piece, PieceGroup, read_group
from ngram_dask.ngrams import counting, partfile
from ngram_dask.runtime import resumable, thread_buffer
from ngram_dask.storage import join


@dataclass(frozen=True)
class ExplodeSettings:
    work_dir: str
    ngrams: tuple[int, ...]
    chunks: int
    vocab_size: int
    token_dtype: str
    drop_eos: bool = False
    eos_id: int = 0
    verify_hashes: bool = True
    unit_tokens: int = 34_000_000  # pieces per unit: as many as hold this many tokens
    count_engine: str = "auto"  # counting.count_by_chunk's engine for the largest n, or auto
    # n whose partial files hold only each sample's last n-gram: the aggregate derives the
    # rest from the (n+1)-grams (counting.derived_in_aggregate)
    derived: tuple[int, ...] = ()
    block_rows: int = partfile.DEFAULT_BLOCK_ROWS  # rows per block of a part file (tests set it small)
    mark_rows: int = partfile.MARK_ROWS  # rows between a part file's marks (tests set it small)

    @property
    def bits(self) -> int:
        return counting.key_bits(self.vocab_size)


def explode_dir(work_dir: str) -> str:
    return join(work_dir, "explode")


def n_dir(work_dir: str, n: int) -> str:
    """The folder of n's part files (``partfile``: a data and an index file per unit)."""
    return join(explode_dir(work_dir), f"n={n}")


def marker_url(work_dir: str, group_name: str) -> str:
    return join(explode_dir(work_dir), "_done", f"{group_name}.json")


def counts_table(c: counting.Counts, n: int, bits: int, vocab_size: int) -> pa.Table:
    """Arrow table ``id0..id{n-1}, count`` of sorted partial counts."""
    dtype = counting.id_dtype(vocab_size)
    cols = {f"id{j}": ids for j, ids in enumerate(counting.unpack_keys(c.keys, n, bits, dtype))}
    # A group's counts fit uint32 as long as it holds < 2^32 tokens (unit_tokens is
    # checked against that), so the partial files keep the narrow type.
    cols["count"] = c.counts.astype(np.uint32)
    return pa.table(cols)


def explode_tokens(tokens: np.ndarray, offsets: np.ndarray, n: int, s: ExplodeSettings) -> counting.Counts:
    exclude = s.eos_id if s.drop_eos else None
    return counting.count_keys(counting.ngram_keys(tokens, offsets, n, s.bits, exclude_id=exclude))


def chunk_tables(c: counting.ChunkedCounts, n: int, s: ExplodeSettings):
    """``(chunk, table, keys)`` of each non-empty chunk, ascending: what ``partfile.write_part`` takes."""
    for chunk in c.nonempty_chunks():
        part = c.chunk(int(chunk))
        yield int(chunk), counts_table(part, n, s.bits, s.vocab_size), part.keys


# numpy's sort of 64-bit keys costs ~30 ns a key where its vectorised sort runs (Intel
# AVX-512 here) and ~65 ns where it does not (an AMD EPYC, docs/performance.md): DuckDB's
# hash aggregate beats the sort above ~40 ns a key (on 2^22 keys), numpy's sort below.
AUTO_SORT_NS_PER_KEY = 40.0


def engine_for_sort_speed(ns_per_key: float) -> str:
    """The counting engine ``auto`` picks on a machine whose numpy sorts a key in ``ns_per_key``."""
    return "numpy" if ns_per_key < AUTO_SORT_NS_PER_KEY else "duckdb"


@functools.cache
def sort_ns_per_key(keys: int = 1 << 22) -> float:
    """This process's numpy sort of random 64-bit keys, ns a key (best of three; ~0.3 s, once)."""
    a = np.random.default_rng(0).integers(0, 1 << 54, size=keys, dtype=np.uint64)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        np.sort(a)
        best = min(best, time.perf_counter() - t0)
    return best / keys * 1e9


def resolved_engine(engine: str) -> str:
    return engine_for_sort_speed(sort_ns_per_key()) if engine == "auto" else engine


def _workspace(tokens: int) -> np.ndarray:
    return thread_buffer("explode-keys", tokens, counting.KEY_DTYPE)


@resumable(lambda group, s: marker_url(s.work_dir, group.name))
def explode_group(group: PieceGroup, s: ExplodeSettings) -> dict:
    """Explode one piece group; returns its statistics (a resumable unit).

    Every n is counted in one pass (``counting.count_by_chunk``: one sort for the
    largest n, the smaller ones derived from it), then each n is written as one part
    file, its chunks in order (``partfile.write_part``).
    """
    t0 = time.perf_counter()
    data = read_group(group, s.vocab_size, s.verify_hashes, thread_buffer)
    lengths = data.lengths
    stats = {
        "group": group.name,
        "pieces": [piece.name for piece in group.pieces],
        "samples": int(len(lengths)),
        "tokens": int(data.offsets[-1]),
        "ngrams": {},
        "distinct": {},
        "tails": {},
        "files": 0,
        "bytes": 0,
    }
    exclude = s.eos_id if s.drop_eos else None
    engine = stats["count_engine"] = resolved_engine(s.count_engine)
    by_n = counting.count_by_chunk(
        data.tokens, data.offsets, s.ngrams, s.bits, s.chunks, exclude_id=exclude, engine=engine,
        workspace=_workspace(len(data.tokens)) if engine == "numpy" else None, tails_only=s.derived)
    del data
    t_count = time.perf_counter()
    for n in s.ngrams:
        c = by_n.pop(n)
        # The expected total comes from the sample lengths alone, so `verify` can catch a
        # counting bug; with drop_eos the kept n-grams are what was counted.
        counted = int(c.counts.sum()) if len(c) else 0
        stats["ngrams"][str(n)] = counted if s.drop_eos else counting.ngram_totals(lengths, n)
        stats["distinct" if n not in s.derived else "tails"][str(n)] = len(c)
        wrote = partfile.write_part(n_dir(s.work_dir, n), group.name, s.chunks, s.bits,
                                    chunk_tables(c, n, s), s.block_rows, s.mark_rows)
        stats["bytes"] += wrote["bytes"]
        stats["files"] += 2
        del c
    stats["count_seconds"] = round(t_count - t0, 4)  # read + count; the rest is writing files
    pa.default_memory_pool().release_unused()  # see aggregate_chunk
    return stats


def explode_piece(piece: Piece, s: ExplodeSettings) -> dict:
    """One piece as a group of its own (tests and tools that explode a single piece)."""
    return explode_group(PieceGroup((piece,)), s)
