"""The pure counting core: token arrays in, packed n-gram keys and counts out.

No I/O and no Dask here, so every function is tested alone against a brute-force oracle.

An n-gram of ids ``(t0, ..., t{n-1})`` is packed into one ``uint64`` key, ``bits``
bits per id, ``t0`` in the most significant place. Sorting keys therefore sorts
n-grams lexicographically, and ``t0`` (which decides the chunk) is one shift away.
"""

from __future__ import annotations

import sys
from typing import NamedTuple

import numpy as np

from ngram_dask.schema import check_key_fits, id_dtype, key_bits  # noqa: F401  (re-exported)

KEY_DTYPE = np.uint64


def ngram_start_mask(offsets: np.ndarray, total: int, n: int) -> np.ndarray:
    """True at every position where an n-gram starts inside its own sample.

    ``offsets`` has one entry per sample boundary (``len(samples) + 1`` entries,
    ``offsets[0] == 0``, ``offsets[-1] == total``). The last ``n - 1`` positions of
    every sample are masked, which also masks samples shorter than ``n`` entirely.
    """
    mask = np.ones(total, dtype=bool)
    if n == 1 or total == 0:
        return mask
    starts = np.asarray(offsets[:-1], dtype=np.int64)
    ends = np.asarray(offsets[1:], dtype=np.int64)
    for back in range(1, n):
        pos = ends - back
        mask[pos[pos >= starts]] = False
    return mask


def ngram_keys(
    tokens: np.ndarray, offsets: np.ndarray, n: int, bits: int, exclude_id: int | None = None
) -> np.ndarray:
    """Packed keys of every n-gram inside a sample, in corpus order (unsorted).

    ``tokens`` is all samples concatenated; ``offsets`` the sample boundaries.
    A sample of length L contributes ``max(L - n + 1, 0)`` keys. With ``exclude_id``
    set, n-grams containing that id (the document separator) are left out.
    """
    check_key_fits(n, bits)
    total = len(tokens)
    if total < n:
        return np.empty(0, dtype=KEY_DTYPE)
    width = total - n + 1
    keys = tokens[:width].astype(KEY_DTYPE)
    for j in range(1, n):
        keys <<= KEY_DTYPE(bits)
        keys |= tokens[j : j + width].astype(KEY_DTYPE)
    valid = ngram_start_mask(offsets, total, n)[:width]
    if exclude_id is not None:
        hit = tokens == exclude_id
        for j in range(n):
            valid &= ~hit[j : j + width]
    return keys[valid]


class Counts(NamedTuple):
    """Distinct keys in ascending order with their counts."""

    keys: np.ndarray
    counts: np.ndarray

    def __len__(self) -> int:
        return len(self.keys)


def count_keys(keys: np.ndarray) -> Counts:
    """Sort and run-length count: distinct keys ascending, with their counts (uint64)."""
    if len(keys) == 0:
        return Counts(np.empty(0, KEY_DTYPE), np.empty(0, np.uint64))
    ordered = np.sort(keys)
    starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
    counts = np.diff(np.append(starts, len(ordered))).astype(np.uint64)
    return Counts(ordered[starts], counts)


def unpack_keys(keys: np.ndarray, n: int, bits: int, dtype=np.uint32) -> list[np.ndarray]:
    """The id columns ``[id0, ..., id{n-1}]`` of packed keys."""
    if bits == 16 and np.dtype(dtype) == np.uint16 and sys.byteorder == "little" and keys.dtype == KEY_DTYPE:
        # 16-bit ids are the key's 16-bit lanes: one strided copy per column instead of a
        # shift, a mask and a cast over 64-bit values (~3x less time in the explode).
        lanes = keys.view(np.uint16).reshape(-1, 4)
        return [np.ascontiguousarray(lanes[:, n - 1 - j]) for j in range(n)]
    mask = KEY_DTYPE((1 << bits) - 1)
    return [
        ((keys >> KEY_DTYPE(bits * (n - 1 - j))) & mask).astype(dtype) for j in range(n)
    ]


def pack_columns(columns: list[np.ndarray], bits: int) -> np.ndarray:
    """Packed keys of rows given as id columns ``[id0, ..., id{n-1}]`` (the inverse of ``unpack_keys``)."""
    keys = np.zeros(len(columns[0]) if columns else 0, KEY_DTYPE)
    for col in columns:
        keys <<= KEY_DTYPE(bits)
        keys |= col
    return keys


def key_ranges(first_keys: np.ndarray, rows: np.ndarray, n_ranges: int, align: int) -> list[int]:
    """Cut a sorted key space into about ``n_ranges`` ranges of equal rows: the lower bounds
    of ranges 1.. (range 0 starts at 0, the last one is unbounded).

    ``first_keys``/``rows``: blocks of sorted rows (from several sorted files, in any order),
    each given by its first key and its row count; a block's rows are taken to sit at its
    first key, so the ranges are as even as the blocks are fine. Every bound is a multiple
    of ``2**align`` (the keys' low ``align`` bits zero): keys sharing their high bits (an
    n-gram's prefix) never straddle two ranges. Fewer ranges come back when the blocks
    cannot tell more apart.
    """
    if n_ranges <= 1 or len(first_keys) == 0:
        return []
    order = np.argsort(first_keys, kind="stable")
    keys = np.asarray(first_keys, KEY_DTYPE)[order] >> KEY_DTYPE(align) << KEY_DTYPE(align)
    before = np.cumsum(np.asarray(rows, np.int64)[order]) - np.asarray(rows, np.int64)[order]
    total = int(before[-1] + rows[order[-1]])
    targets = [total * i / n_ranges for i in range(1, n_ranges)]
    at = np.searchsorted(before, targets, side="left")
    bounds = sorted({int(keys[i]) for i in at if i < len(keys)} - {int(keys[0])} - {0})
    return bounds


def first_ids(keys: np.ndarray, n: int, bits: int) -> np.ndarray:
    """``id0`` of each packed key."""
    return keys >> KEY_DTYPE(bits * (n - 1))


# ----------------------------------------------------------------------------- one pass per shard
#
# The explode stage counts every n in one sort. Two ideas make that cheap:
#
# * The chunk number ``id0 % K`` is packed above the ids ("tagged" keys), so one sort
#   orders the counts chunk by chunk, each chunk ascending: a chunk's rows are one
#   contiguous slice found by binary search, with no second sort to split them.
# * Only the largest n is sorted. The (n-1)-grams of a sample are the prefixes of its
#   n-grams plus its last (n-1)-gram, so their sorted counts are the n-gram counts
#   summed over runs of ``key >> bits`` (still sorted) plus one key per sample. This
#   does not hold when n-grams containing an excluded id are dropped (an (n-1)-gram
#   followed by the excluded id has no n-gram), so then every n is sorted on its own.


class ChunkedCounts(NamedTuple):
    """Sorted counts of one n, grouped by chunk: chunk ``c`` is ``[bounds[c], bounds[c+1])``.

    ``keys`` are plain packed n-grams (no chunk tag), ascending inside each chunk.
    """

    keys: np.ndarray
    counts: np.ndarray
    bounds: np.ndarray

    def chunk(self, c: int) -> Counts:
        lo, hi = int(self.bounds[c]), int(self.bounds[c + 1])
        return Counts(self.keys[lo:hi], self.counts[lo:hi])

    def nonempty_chunks(self) -> np.ndarray:
        return np.flatnonzero(np.diff(self.bounds))

    def __len__(self) -> int:
        return len(self.keys)


def chunk_bits(n_chunks: int) -> int:
    return int(max(n_chunks, 1) - 1).bit_length()


def tag_fits(n: int, bits: int, n_chunks: int) -> bool:
    """Whether a tagged key (chunk above n ids) leaves the all-ones value free as a sentinel."""
    return n * bits + chunk_bits(n_chunks) < 64


def _chunk_tags(ids: np.ndarray, n_chunks: int, out: np.ndarray) -> np.ndarray:
    """``id % n_chunks`` as uint64, into ``out``. For 16-bit ids a 65,536-entry table
    lookup: cheaper than integer division per element."""
    if n_chunks == 1:
        out[:] = 0
    elif ids.dtype == np.uint16:
        np.take(np.arange(1 << 16, dtype=KEY_DTYPE) % KEY_DTYPE(n_chunks), ids, out=out)
    else:
        np.remainder(ids, n_chunks, out=out, casting="unsafe")
    return out


def _tagged_keys(tokens: np.ndarray, offsets: np.ndarray, n: int, bits: int, n_chunks: int,
                 workspace: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Tagged keys at every position; the ``invalid`` positions hold the sentinel (all ones).

    Returns ``(keys, invalid)``: after an ascending sort the sentinels are the last
    ``invalid`` entries, so dropping them costs no copy and no boolean mask pass.
    ``keys`` lives in ``workspace`` when that is large enough: a fresh array of this
    size costs as much in page faults as building the keys (see ``Workspace``).
    """
    total = len(tokens)
    width = total - n + 1
    if workspace is not None and len(workspace) >= width:
        keys = workspace[:width]
    else:
        keys = np.empty(width, KEY_DTYPE)
    _chunk_tags(tokens[:width], n_chunks, keys)
    for j in range(n):
        keys <<= KEY_DTYPE(bits)
        keys |= tokens[j : j + width]
    invalid = ~ngram_start_mask(offsets, total, n)[:width]
    keys[invalid] = np.iinfo(KEY_DTYPE).max
    return keys, int(invalid.sum())


def _run_length(ordered: np.ndarray) -> Counts:
    if len(ordered) == 0:
        return Counts(np.empty(0, KEY_DTYPE), np.empty(0, np.uint64))
    starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
    counts = np.diff(np.append(starts, len(ordered))).astype(np.uint64)
    return Counts(ordered[starts], counts)


def sum_runs(keys: np.ndarray, counts: np.ndarray) -> Counts:
    """Sum the counts of equal adjacent keys (``keys`` sorted)."""
    if len(keys) == 0:
        return Counts(np.empty(0, KEY_DTYPE), np.empty(0, np.uint64))
    starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
    return Counts(keys[starts], np.add.reduceat(counts, starts).astype(np.uint64, copy=False))


def add_sorted(base: Counts, extra: Counts) -> Counts:
    """``base + extra`` for sorted counts where ``extra`` is small: binary search, no re-sort."""
    if len(extra) == 0:
        return base
    pos = np.searchsorted(base.keys, extra.keys)
    inside = pos < len(base.keys)
    found = np.zeros(len(extra), bool)
    found[inside] = base.keys[pos[inside]] == extra.keys[inside]
    counts = base.counts.copy()
    np.add.at(counts, pos[found], extra.counts[found])
    new = ~found
    return Counts(np.insert(base.keys, pos[new], extra.keys[new]),
                  np.insert(counts, pos[new], extra.counts[new]))


def _sample_tail_keys(tokens: np.ndarray, offsets: np.ndarray, m: int, bits: int, n_chunks: int) -> np.ndarray:
    """Tagged key of the last m-gram of every sample holding at least m tokens."""
    starts = np.asarray(offsets[:-1], np.int64)
    ends = np.asarray(offsets[1:], np.int64)
    at = ends[ends - starts >= m] - m
    first = tokens[at]
    keys = (first % n_chunks).astype(KEY_DTYPE) if n_chunks > 1 else np.zeros(len(at), KEY_DTYPE)
    for j in range(m):
        keys <<= KEY_DTYPE(bits)
        keys |= tokens[at + j]
    return keys


def _untag(c: Counts, n: int, bits: int, n_chunks: int) -> ChunkedCounts:
    shift = KEY_DTYPE(n * bits)
    tags = np.arange(n_chunks + 1, dtype=KEY_DTYPE) << shift
    bounds = np.searchsorted(c.keys, tags).astype(np.int64)
    keys = c.keys & KEY_DTYPE((1 << (n * bits)) - 1)
    return ChunkedCounts(keys, c.counts, bounds)


def _chunked_by_argsort(c: Counts, n: int, bits: int, n_chunks: int) -> ChunkedCounts:
    """The fallback when a chunk tag does not fit beside the ids: a stable sort on the chunk."""
    chunk = (first_ids(c.keys, n, bits) % KEY_DTYPE(n_chunks)).astype(np.int64)
    order = np.argsort(chunk, kind="stable")
    bounds = np.searchsorted(chunk[order], np.arange(n_chunks + 1)).astype(np.int64)
    return ChunkedCounts(c.keys[order], c.counts[order], bounds)


def _tagged_counts_duckdb(tokens: np.ndarray, offsets: np.ndarray, n: int, bits: int, n_chunks: int) -> Counts:
    """The same result as sorting the tagged keys and run-length counting them, computed by
    DuckDB's hash aggregate over the n shifted id columns (zero-copy views of ``tokens``)
    and a sort of the distinct n-grams only.

    Why: numpy sorts 64-bit keys at ~65 ns each on the reference machine (its vectorised
    sort does not run on that CPU); hashing every position and sorting only the distinct
    n-grams took 1.5-2.9 s where the sort path took 2.9-4.4 s for 33.5M tokens. One
    thread: the explode already runs one task per worker thread. Arrays in, arrays out.
    """
    import pyarrow as pa

    from ngram_dask.db import memory

    total = len(tokens)
    width = total - n + 1
    ids = [f"id{j}" for j in range(n)]
    columns = {c: tokens[j: j + width] for j, c in enumerate(ids)}
    columns["valid"] = ngram_start_mask(offsets, total, n)[:width]
    con = memory(threads=1)
    try:
        con.register("grams", pa.table(columns))
        res = con.sql(
            f"SELECT {', '.join(ids)}, count(*) AS c FROM grams WHERE valid GROUP BY {', '.join(ids)} "
            f"ORDER BY id0 % {int(n_chunks)}, {', '.join(ids)}").to_arrow_table().combine_chunks()
    finally:
        con.close()
    first = res.column("id0").to_numpy()
    keys = _chunk_tags(first, n_chunks, np.empty(len(first), KEY_DTYPE))
    for c in ids:
        keys <<= KEY_DTYPE(bits)
        keys |= res.column(c).to_numpy()
    return Counts(keys, res.column("c").to_numpy().astype(np.uint64))


COUNT_ENGINES = ("numpy", "duckdb")


def derived_in_aggregate(ns, drop_eos: bool) -> tuple[int, ...]:
    """The n whose counts the aggregate derives from the (n+1)-gram counts of their chunk.

    Inside a sample, the n-grams are the prefixes of its (n+1)-grams plus its last n-gram,
    and an n-gram lands in the same chunk (``id0 % K``) as the (n+1)-grams it prefixes. So
    the final n-gram counts of a chunk are its final (n+1)-gram counts summed over the
    last id, plus the counts of the samples' last n-grams: the explode writes only those
    ("tails") for such n. Not with dropped ids (an n-gram followed by a dropped id has no
    (n+1)-gram).
    """
    if drop_eos:
        return ()
    present = set(ns)
    return tuple(sorted(n for n in present if n + 1 in present))


def tail_counts(tokens: np.ndarray, offsets: np.ndarray, n: int, bits: int, n_chunks: int) -> ChunkedCounts:
    """Counts of the last n-gram of every sample holding at least n tokens, by chunk."""
    if tag_fits(n, bits, n_chunks):
        return _untag(count_keys(_sample_tail_keys(tokens, offsets, n, bits, n_chunks)), n, bits, n_chunks)
    plain = count_keys(_sample_tail_keys(tokens, offsets, n, bits, 1))  # tag 0: the plain packed keys
    return _chunked_by_argsort(plain, n, bits, n_chunks)


def count_by_chunk(tokens: np.ndarray, offsets: np.ndarray, ns, bits: int, n_chunks: int,
                   exclude_id: int | None = None, workspace: np.ndarray | None = None,
                   engine: str = "numpy", tails_only=()) -> dict[int, ChunkedCounts]:
    """Counts of every n in ``ns`` inside each sample, split into chunks ``id0 % n_chunks``.

    ``engine`` counts the largest n: "numpy" (sort the packed keys, run length: the
    reference) or "duckdb" (hash aggregate, then sort the distinct n-grams); equal results.
    For each n in ``tails_only``, only the samples' last n-grams are counted
    (``tail_counts``: the aggregate derives the rest, see ``derived_in_aggregate``).
    ``workspace``: an optional uint64 array to build and sort the keys in (reused across
    calls by the caller); the results never point into it.
    """
    if engine not in COUNT_ENGINES:
        raise ValueError(f"engine must be one of {', '.join(COUNT_ENGINES)}, got {engine!r}")
    ns = sorted(set(ns))
    for n in ns:
        check_key_fits(n, bits)
    out: dict[int, ChunkedCounts] = {}
    derived: Counts | None = None  # tagged counts of derived_n, to derive n = derived_n - 1 from
    derived_n = -1
    for n in reversed(ns):
        if n in tails_only:
            out[n] = tail_counts(tokens, offsets, n, bits, n_chunks)
            derived = None
            continue
        if len(tokens) < n:
            empty = Counts(np.empty(0, KEY_DTYPE), np.empty(0, np.uint64))
            out[n] = ChunkedCounts(empty.keys, empty.counts, np.zeros(n_chunks + 1, np.int64))
            derived = None
            continue
        if not tag_fits(n, bits, n_chunks) or exclude_id is not None:
            c = count_keys(ngram_keys(tokens, offsets, n, bits, exclude_id=exclude_id))
            out[n] = _chunked_by_argsort(c, n, bits, n_chunks)
            derived = None
            continue
        if derived is not None and derived_n == n + 1:
            prefixes = sum_runs(derived.keys >> KEY_DTYPE(bits), derived.counts)
            tails = count_keys(_sample_tail_keys(tokens, offsets, n, bits, n_chunks))
            tagged = add_sorted(prefixes, tails)
        elif engine == "duckdb":
            tagged = _tagged_counts_duckdb(tokens, offsets, n, bits, n_chunks)
        else:
            keys, invalid = _tagged_keys(tokens, offsets, n, bits, n_chunks, workspace)
            keys.sort()
            tagged = _run_length(keys[: len(keys) - invalid])
            del keys
        out[n] = _untag(tagged, n, bits, n_chunks)
        derived, derived_n = tagged, n
    return out


def ngram_totals(lengths: np.ndarray, n: int) -> int:
    """How many n-grams samples of these lengths hold: sum of ``max(L - n + 1, 0)``."""
    lengths = np.asarray(lengths, dtype=np.int64)
    return int(np.maximum(lengths - n + 1, 0).sum())
