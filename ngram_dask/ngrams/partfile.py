"""The explode's output, one file pair per (unit, n), whatever K: the layout of a sort-based shuffle.

A unit's partial counts of one n are sorted by (chunk, key). They are cut into *blocks*
of at most ``block_rows`` rows, never straddling two chunks, and each block is a complete,
small Parquet file (``id0..id{n-1}, count``; its own footer). The blocks are concatenated
into one data file, and an index is written after it::

    <work>/explode/n=<n>/part-<unit>.data     block 0 | block 1 | ...   (chunk 0's blocks first)
    <work>/explode/n=<n>/part-<unit>.index    little-endian uint64 words:
        MAGIC, K, B, bits,
        first[0..K]          chunk c's blocks are first[c] .. first[c+1]-1
        B x (offset, nbytes, rows, first_key)

``first_key`` is the block's first n-gram packed ``bits`` bits per id (``counting``). A
reader of chunk c fetches two words of the index, then that chunk's rows of the block
table, then one byte range of the data file: three ranged reads per (file, chunk),
whatever K is, and nothing else. So K = 4,096 writes as many files as K = 1 (the file
count follows units and n only), and a reader never parses the other chunks' metadata
(a Parquet footer with a row group per chunk would cost every reader O(K)). The first
keys let a reader of a key range skip the blocks outside it.

The index is written after the data file and the unit's marker after both
(``runtime.resumable``): a data file without a marker is rewritten by the rerun.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ngram_dask.storage import atomic_write_bytes, get_fs, join

MAGIC = 0x4E47445058_0001  # "NGDPX", layout version 1
HEADER_WORDS = 4
BLOCK_WORDS = 4
DEFAULT_BLOCK_ROWS = 1 << 17
# A chunk's rows in one unit are cut into at least this many blocks when they are many
# (blocks of at least MIN_BLOCK_ROWS rows): the key ranges of a large chunk are planned from
# its blocks' first keys, and a range reads only the blocks it overlaps.
BLOCKS_PER_CHUNK = 8
MIN_BLOCK_ROWS = 8192


def data_url(n_dir: str, unit: str) -> str:
    return join(n_dir, f"part-{unit}.data")


def index_url(n_dir: str, unit: str) -> str:
    return join(n_dir, f"part-{unit}.index")


def block_bytes(table: pa.Table) -> bytes:
    # Sorted narrow columns compress well with plain zstd; dictionary pages cost ~30% more
    # write time and ~12% more bytes here, and column statistics ~a third of the write time
    # while nothing reads them (the index holds what a reader needs). The counts (mostly 1)
    # are byte-stream split, so zstd meets their high bytes as runs of zeros.
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", use_dictionary=False, write_statistics=False,
                   row_group_size=max(1, table.num_rows), column_encoding={"count": "BYTE_STREAM_SPLIT"})
    return buf.getvalue()


def write_part(n_dir: str, unit: str, n_chunks: int, bits: int,
               pieces: Iterator[tuple[int, pa.Table, np.ndarray]], block_rows: int = DEFAULT_BLOCK_ROWS) -> dict:
    """Write one unit's data and index file; ``pieces`` yields ``(chunk, table, keys)`` in
    ascending chunk order (``keys``: the table's rows packed, ascending). A chunk's blocks
    hold at most ``block_rows`` rows (fewer, down to ``MIN_BLOCK_ROWS``, so that a large
    chunk has ``BLOCKS_PER_CHUNK`` of them). Returns ``{"bytes", "blocks", "rows"}``."""
    blocks: list[bytes] = []
    table_rows: list[tuple[int, int, int, int]] = []
    first = np.zeros(n_chunks + 1, np.uint64)
    offset = 0
    last_chunk = -1
    for chunk, table, keys in pieces:
        if chunk <= last_chunk:
            raise ValueError(f"chunks must ascend: {chunk} after {last_chunk}")
        first[last_chunk + 1: chunk + 1] = len(table_rows)
        last_chunk = chunk
        size = min(block_rows, max(MIN_BLOCK_ROWS, -(-table.num_rows // BLOCKS_PER_CHUNK)))
        for lo in range(0, table.num_rows, size):
            part = table.slice(lo, size)
            data = block_bytes(part)
            blocks.append(data)
            table_rows.append((offset, len(data), part.num_rows, int(keys[lo])))
            offset += len(data)
    first[last_chunk + 1:] = len(table_rows)
    index = np.concatenate([np.array([MAGIC, n_chunks, len(table_rows), bits], np.uint64), first,
                            np.array(table_rows, np.uint64).reshape(-1)])
    atomic_write_bytes(data_url(n_dir, unit), b"".join(blocks), durable=False)
    atomic_write_bytes(index_url(n_dir, unit), index.astype("<u8").tobytes(), durable=False)
    return {"bytes": offset + index.nbytes, "blocks": len(table_rows), "rows": sum(r[2] for r in table_rows)}


def _words(fs, path: str, start: int, count: int) -> np.ndarray:
    if count == 0:
        return np.empty(0, np.uint64)
    raw = fs.cat_file(path, start=8 * start, end=8 * (start + count))
    if len(raw) != 8 * count:
        raise OSError(f"{path} is truncated (wanted {8 * count} bytes at {8 * start}, got {len(raw)})")
    return np.frombuffer(raw, "<u8").astype(np.uint64)


@dataclass(frozen=True)
class ChunkBlocks:
    """The blocks of one chunk in one unit's file: what a reader of that chunk needs."""

    data: str  # the data file's URL
    bits: int  # bits per id of the first keys
    offsets: np.ndarray  # byte offset of each block
    nbytes: np.ndarray
    rows: np.ndarray
    first_keys: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)


def chunk_blocks(index: str, chunk: int) -> ChunkBlocks:
    """The block table of ``chunk`` from one index file (three small ranged reads)."""
    data = index[: -len(".index")] + ".data"
    fs, path = get_fs(index)
    head = _words(fs, path, 0, HEADER_WORDS)
    if int(head[0]) != MAGIC or not 0 <= chunk < int(head[1]):
        raise OSError(f"{index} is not an explode index holding chunk {chunk}")
    n_chunks = int(head[1])
    lo, hi = (int(v) for v in _words(fs, path, HEADER_WORDS + chunk, 2))
    table = _words(fs, path, HEADER_WORDS + n_chunks + 1 + BLOCK_WORDS * lo, BLOCK_WORDS * (hi - lo))
    table = table.reshape(-1, BLOCK_WORDS)
    return ChunkBlocks(data, int(head[3]), table[:, 0].astype(np.int64), table[:, 1].astype(np.int64),
                       table[:, 2].astype(np.int64), table[:, 3].copy())


def read_blocks(blocks: ChunkBlocks, which: np.ndarray | slice, columns: list[str]) -> Iterator[pa.Table]:
    """The tables of the chosen blocks (consecutive ones are fetched with one ranged read)."""
    idx = np.arange(len(blocks))[which]
    if len(idx) == 0:
        return
    fs, path = get_fs(blocks.data)
    # Runs of consecutive blocks are contiguous bytes: one request per run.
    breaks = np.flatnonzero(np.diff(idx) != 1) + 1
    for run in np.split(idx, breaks):
        start = int(blocks.offsets[run[0]])
        end = int(blocks.offsets[run[-1]] + blocks.nbytes[run[-1]])
        raw = pa.py_buffer(fs.cat_file(path, start=start, end=end))
        for b in run:
            piece = raw.slice(int(blocks.offsets[b]) - start, int(blocks.nbytes[b]))
            yield pq.read_table(pa.BufferReader(piece), columns=columns, use_threads=False)
