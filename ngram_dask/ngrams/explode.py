"""The build's explode step: the input's pieces -> partial n-gram counts in Parquet, split by ``id0 % K``.

A piece (``ngram_dask.inputs``) is an MDS shard, or a byte range of a Megatron, flat
``.bin``/``.npy`` or Parquet file of about ``unit_tokens`` tokens. Each unit takes a
*piece group* of consecutive pieces (as many as fit ``unit_tokens``),
counts every n-gram inside each sample of all of them at once (sort + run length,
in numpy), and writes, per n and per chunk, one file::

    <work>/explode/n=<n>/id0_chunk=<c>/part-<group>.parquet

sorted by the ids, narrow types (uint16 ids, uint32 counts), zstd-compressed. For the n
in ``derived`` (n + 1 is counted too), the file holds only the counts of each sample's
last n-gram: the aggregate derives the other n-grams from the (n+1)-grams.
Counting several pieces together merges their partial counts before anything is
written: fewer rows for the aggregate to read and fewer, larger files.

The group name is its first piece's name plus how many follow, so a retried or
re-run unit replaces its own output and nothing is counted twice; the work dir's
manifest records ``unit_tokens``, so a rerun cannot regroup pieces under files of
another grouping. A ``_done/<group>.json`` marker written last (``runtime.resumable``)
holds the group's statistics; a group with a marker is skipped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from ngram_dask.inputs import Piece, PieceGroup, read_group
from ngram_dask.ngrams import counting
from ngram_dask.runtime import resumable, thread_buffer
from ngram_dask.storage import atomic_write_parquet, join


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
    count_engine: str = "duckdb"  # counting.count_by_chunk's engine for the largest n
    # n whose partial files hold only each sample's last n-gram: the aggregate derives the
    # rest from the (n+1)-grams (counting.derived_in_aggregate)
    derived: tuple[int, ...] = ()

    @property
    def bits(self) -> int:
        return counting.key_bits(self.vocab_size)


def explode_dir(work_dir: str) -> str:
    return join(work_dir, "explode")


def part_url(work_dir: str, n: int, chunk: int, group_name: str) -> str:
    return join(explode_dir(work_dir), f"n={n}", f"id0_chunk={chunk}", f"part-{group_name}.parquet")


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


def _write_part(url: str, table: pa.Table) -> int:
    # Sorted narrow columns compress well with plain zstd; dictionary pages cost ~30% more
    # write time and ~12% more bytes here, and column statistics ~a third of the write
    # time while nothing reads them (the aggregate reads these files whole). One row
    # group per file keeps the footer small. The counts (mostly 1) are byte-stream split, so
    # zstd meets their high bytes as runs of zeros: ~12% less write time, ~8% fewer bytes.
    return atomic_write_parquet(url, table, compression="zstd", use_dictionary=False,
                                write_statistics=False, row_group_size=max(1, table.num_rows),
                                column_encoding={"count": "BYTE_STREAM_SPLIT"})


def _workspace(tokens: int) -> np.ndarray:
    return thread_buffer("explode-keys", tokens, counting.KEY_DTYPE)


@resumable(lambda group, s: marker_url(s.work_dir, group.name))
def explode_group(group: PieceGroup, s: ExplodeSettings) -> dict:
    """Explode one piece group; returns its statistics (a resumable unit).

    Every n is counted in one pass (``counting.count_by_chunk``: one sort for the
    largest n, the smaller ones derived from it), then each non-empty chunk of each n
    is written as one sorted Parquet file.
    """
    t0 = time.perf_counter()
    data = read_group(group, s.vocab_size, s.verify_hashes)
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
    by_n = counting.count_by_chunk(
        data.tokens, data.offsets, s.ngrams, s.bits, s.chunks, exclude_id=exclude, engine=s.count_engine,
        workspace=_workspace(len(data.tokens)) if s.count_engine == "numpy" else None, tails_only=s.derived)
    del data
    t_count = time.perf_counter()
    for n in s.ngrams:
        c = by_n.pop(n)
        # The expected total comes from the sample lengths alone, so `verify` can catch a
        # counting bug; with drop_eos the kept n-grams are what was counted.
        counted = int(c.counts.sum()) if len(c) else 0
        stats["ngrams"][str(n)] = counted if s.drop_eos else counting.ngram_totals(lengths, n)
        stats["distinct" if n not in s.derived else "tails"][str(n)] = len(c)
        for chunk in c.nonempty_chunks():
            table = counts_table(c.chunk(int(chunk)), n, s.bits, s.vocab_size)
            stats["bytes"] += _write_part(part_url(s.work_dir, n, int(chunk), group.name), table)
            stats["files"] += 1
        del c
    stats["count_seconds"] = round(t_count - t0, 4)  # read + count; the rest is writing files
    return stats


def explode_piece(piece: Piece, s: ExplodeSettings) -> dict:
    """One piece as a group of its own (tests and tools that explode a single piece)."""
    return explode_group(PieceGroup((piece,)), s)
