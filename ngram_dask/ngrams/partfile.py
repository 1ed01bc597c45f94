"""The explode's output, one file pair per (unit, n), whatever K: the layout of a sort-based shuffle.

A unit's partial counts of one n are sorted by (chunk, key). They are cut into *blocks*
of at most ``block_rows`` rows, never straddling two chunks (most chunks of a unit are one
block), and each block is a complete Parquet file (``id0..id{n-1}, count``; its own
footer). Every ``MARK_ROWS`` rows of a chunk a *mark* records the key there and the rows up
to the next mark: what the aggregate plans key ranges from. The blocks are concatenated
into one data file, and an index is written after it::

    <work>/explode/n=<n>/part-<unit>.data     block 0 | block 1 | ...   (chunk 0's blocks first)
    <work>/explode/n=<n>/part-<unit>.index    little-endian uint64 words:
        MAGIC, K, B, bits, M,
        (K + 1) x (first block, first mark)   chunk c's blocks are first[c] .. first[c+1]-1, its marks too
        B x (offset, nbytes, rows, first_key)
        M x (key, rows)

Keys are n-grams packed ``bits`` bits per id (``counting``). A reader of chunk c fetches
the header, two pairs of pointers, then that chunk's rows of the block table and of the
mark table, then one byte range of data: five ranged reads per (file, chunk), whatever K
is, and nothing else. So K = 4,096 writes as many files as K = 1 (the file count follows
units and n only), and a reader never parses the other chunks' metadata (a Parquet footer
with a row group per chunk would cost every reader O(K)). Marks, not small blocks, give
the planner its resolution: layout 1 cut a large chunk into 8 blocks of >= 8,192 rows for
it, and decoding many small Parquet files cost the aggregate 2.6x a chunk's decode.

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

MAGIC = 0x4E47445058_0002  # "NGDPX", layout version 2 (marks)
HEADER_WORDS = 5
POINTER_WORDS = 2
BLOCK_WORDS = 4
MARK_WORDS = 2
DEFAULT_BLOCK_ROWS = 1 << 20
MARK_ROWS = 8192


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
               pieces: Iterator[tuple[int, pa.Table, np.ndarray]], block_rows: int = DEFAULT_BLOCK_ROWS,
               mark_rows: int = MARK_ROWS) -> dict:
    """Write one unit's data and index file; ``pieces`` yields ``(chunk, table, keys)`` in
    ascending chunk order (``keys``: the table's rows packed, ascending). A chunk's blocks
    hold at most ``block_rows`` rows; its marks are ``mark_rows`` apart. Returns
    ``{"bytes", "blocks", "rows"}``."""
    blocks: list[bytes] = []
    table_rows: list[tuple[int, int, int, int]] = []
    marks: list[np.ndarray] = []
    n_marks = 0
    first = np.zeros((n_chunks + 1, POINTER_WORDS), np.uint64)
    offset = 0
    last_chunk = -1
    for chunk, table, keys in pieces:
        if chunk <= last_chunk:
            raise ValueError(f"chunks must ascend: {chunk} after {last_chunk}")
        first[last_chunk + 1: chunk + 1] = (len(table_rows), n_marks)
        last_chunk = chunk
        for lo in range(0, table.num_rows, block_rows):
            part = table.slice(lo, block_rows)
            data = block_bytes(part)
            blocks.append(data)
            table_rows.append((offset, len(data), part.num_rows, int(keys[lo])))
            offset += len(data)
        at = np.arange(0, table.num_rows, mark_rows)
        rows = np.diff(np.append(at, table.num_rows))
        marks.append(np.stack([np.asarray(keys, np.uint64)[at], rows.astype(np.uint64)], axis=1))
        n_marks += len(at)
    first[last_chunk + 1:] = (len(table_rows), n_marks)
    index = np.concatenate([np.array([MAGIC, n_chunks, len(table_rows), bits, n_marks], np.uint64),
                            first.reshape(-1), np.array(table_rows, np.uint64).reshape(-1),
                            *(m.reshape(-1) for m in marks)])
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
    mark_keys: np.ndarray  # the key every MARK_ROWS rows of the chunk, ascending
    mark_rows: np.ndarray  # rows from each mark to the next

    def __len__(self) -> int:
        return len(self.rows)


def chunk_blocks(index: str, chunk: int) -> ChunkBlocks:
    """The blocks and marks of ``chunk`` from one index file (four small ranged reads)."""
    data = index[: -len(".index")] + ".data"
    fs, path = get_fs(index)
    head = _words(fs, path, 0, HEADER_WORDS)
    if int(head[0]) != MAGIC or not 0 <= chunk < int(head[1]):
        raise OSError(f"{index} is not an explode index (layout 2) holding chunk {chunk}")
    n_chunks, n_blocks = int(head[1]), int(head[2])
    (b_lo, m_lo), (b_hi, m_hi) = _words(fs, path, HEADER_WORDS + POINTER_WORDS * chunk,
                                        2 * POINTER_WORDS).astype(np.int64).reshape(2, POINTER_WORDS)
    blocks_at = HEADER_WORDS + POINTER_WORDS * (n_chunks + 1)
    table = _words(fs, path, blocks_at + BLOCK_WORDS * b_lo, BLOCK_WORDS * (b_hi - b_lo)).reshape(-1, BLOCK_WORDS)
    marks_at = blocks_at + BLOCK_WORDS * n_blocks
    marks = _words(fs, path, marks_at + MARK_WORDS * m_lo, MARK_WORDS * (m_hi - m_lo)).reshape(-1, MARK_WORDS)
    return ChunkBlocks(data, int(head[3]), table[:, 0].astype(np.int64), table[:, 1].astype(np.int64),
                       table[:, 2].astype(np.int64), table[:, 3].copy(), marks[:, 0].copy(),
                       marks[:, 1].astype(np.int64))


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
