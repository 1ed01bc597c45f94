"""Stage 1, explode: one MDS shard -> partial n-gram counts in Parquet, split by ``id0 % K``.

Each task reads its shard, counts every n-gram inside each sample (sort + run
length, in numpy), and writes, per n and per chunk, one file::

    <work>/explode/n=<n>/id0_chunk=<c>/part-<shard>.parquet

sorted by the ids, narrow types (uint16 ids, uint32 counts), zstd-compressed.
The file names depend only on the shard, so a retried or re-run task replaces its
own output and nothing is counted twice. A ``_done`` marker written last holds the
shard's statistics; a shard with a marker is skipped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from . import counting
from .mds import ShardRef, read_shard
from .storage import atomic_write_parquet, join, read_marker, write_marker


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

    @property
    def bits(self) -> int:
        return counting.key_bits(self.vocab_size)


def explode_dir(work_dir: str) -> str:
    return join(work_dir, "explode")


def part_url(work_dir: str, n: int, chunk: int, shard_name: str) -> str:
    return join(explode_dir(work_dir), f"n={n}", f"id0_chunk={chunk}", f"part-{shard_name}.parquet")


def marker_url(work_dir: str, shard_name: str) -> str:
    return join(explode_dir(work_dir), "_done", f"{shard_name}.json")


def counts_table(c: counting.Counts, n: int, bits: int, vocab_size: int) -> pa.Table:
    """Arrow table ``id0..id{n-1}, count`` of sorted partial counts."""
    dtype = counting.id_dtype(vocab_size)
    cols = {f"id{j}": ids for j, ids in enumerate(counting.unpack_keys(c.keys, n, bits, dtype))}
    # One shard holds < 2^32 tokens (MDS offsets are uint32), so its counts fit uint32.
    cols["count"] = c.counts.astype(np.uint32)
    return pa.table(cols)


def explode_tokens(tokens: np.ndarray, offsets: np.ndarray, n: int, s: ExplodeSettings) -> counting.Counts:
    exclude = s.eos_id if s.drop_eos else None
    return counting.count_keys(counting.ngram_keys(tokens, offsets, n, s.bits, exclude_id=exclude))


def _write_part(url: str, table: pa.Table) -> int:
    # Sorted narrow columns compress well with plain zstd; dictionary pages cost ~30% more
    # write time and ~12% more bytes here. One row group per file keeps the footer small
    # (these files are read whole by the aggregate).
    return atomic_write_parquet(url, table, compression="zstd", use_dictionary=False,
                                row_group_size=max(1, table.num_rows))


def explode_shard(shard: ShardRef, s: ExplodeSettings) -> dict:
    """Explode one shard (idempotent); returns its statistics.

    Every n is counted in one pass (``counting.count_by_chunk``: one sort for the
    largest n, the smaller ones derived from it), then each non-empty chunk of each n
    is written as one sorted Parquet file.
    """
    done = read_marker(marker_url(s.work_dir, shard.name))
    if done is not None:
        return {**done, "skipped": True}
    t0 = time.perf_counter()
    data = read_shard(shard, s.token_dtype, s.vocab_size, s.verify_hashes)
    lengths = data.lengths
    stats = {
        "shard": shard.name,
        "samples": int(len(lengths)),
        "tokens": int(data.offsets[-1]),
        "ngrams": {},
        "distinct": {},
        "files": 0,
        "bytes": 0,
    }
    exclude = s.eos_id if s.drop_eos else None
    by_n = counting.count_by_chunk(data.tokens, data.offsets, s.ngrams, s.bits, s.chunks, exclude_id=exclude)
    del data
    t_count = time.perf_counter()
    for n in s.ngrams:
        c = by_n.pop(n)
        # The expected total comes from the sample lengths alone, so `verify` can catch a
        # counting bug; with drop_eos the kept n-grams are what was counted.
        counted = int(c.counts.sum()) if len(c) else 0
        stats["ngrams"][str(n)] = counted if s.drop_eos else counting.ngram_totals(lengths, n)
        stats["distinct"][str(n)] = len(c)
        for chunk in c.nonempty_chunks():
            table = counts_table(c.chunk(int(chunk)), n, s.bits, s.vocab_size)
            stats["bytes"] += _write_part(part_url(s.work_dir, n, int(chunk), shard.name), table)
            stats["files"] += 1
        del c
    t_end = time.perf_counter()
    stats["seconds"] = round(t_end - t0, 4)
    stats["count_seconds"] = round(t_count - t0, 4)  # read + count; the rest is writing files
    write_marker(marker_url(s.work_dir, shard.name), stats)
    return {**stats, "skipped": False}
