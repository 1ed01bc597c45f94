"""The pure counting core: token arrays in, packed n-gram keys and counts out.

No I/O and no Dask here, so every function is tested alone against a brute-force oracle.

An n-gram of ids ``(t0, ..., t{n-1})`` is packed into one ``uint64`` key, ``bits``
bits per id, ``t0`` in the most significant place. Sorting keys therefore sorts
n-grams lexicographically, and ``t0`` (which decides the chunk) is one shift away.
"""

from __future__ import annotations

from typing import Iterator, NamedTuple

import numpy as np

KEY_DTYPE = np.uint64


def key_bits(vocab_size: int) -> int:
    """Bits per token id in a packed key: enough for ids in ``[0, vocab_size)``."""
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be at least 2, got {vocab_size}")
    return int(vocab_size - 1).bit_length()


def check_key_fits(n: int, bits: int) -> None:
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if n * bits > 64:
        raise ValueError(
            f"{n}-grams of {bits}-bit ids need {n * bits} bits, more than one 64-bit key holds"
        )


def id_dtype(vocab_size: int) -> np.dtype:
    """The narrowest unsigned dtype that holds every id (``uint16`` for GPT-NeoX)."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


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


def merge_counts(parts: list[Counts]) -> Counts:
    """Sum the counts of several ``Counts`` (each sorted) into one sorted ``Counts``."""
    parts = [p for p in parts if len(p)]
    if not parts:
        return Counts(np.empty(0, KEY_DTYPE), np.empty(0, np.uint64))
    keys = np.concatenate([p.keys for p in parts])
    counts = np.concatenate([p.counts for p in parts]).astype(np.uint64)
    order = np.argsort(keys, kind="stable")
    keys, counts = keys[order], counts[order]
    starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
    return Counts(keys[starts], np.add.reduceat(counts, starts).astype(np.uint64))


def unpack_keys(keys: np.ndarray, n: int, bits: int, dtype=np.uint32) -> list[np.ndarray]:
    """The id columns ``[id0, ..., id{n-1}]`` of packed keys."""
    mask = KEY_DTYPE((1 << bits) - 1)
    return [
        ((keys >> KEY_DTYPE(bits * (n - 1 - j))) & mask).astype(dtype) for j in range(n)
    ]


def first_ids(keys: np.ndarray, n: int, bits: int) -> np.ndarray:
    """``id0`` of each packed key."""
    return keys >> KEY_DTYPE(bits * (n - 1))


def split_by_chunk(counts: Counts, n: int, bits: int, n_chunks: int) -> Iterator[tuple[int, Counts]]:
    """Yield ``(chunk, Counts)`` for every non-empty chunk ``id0 % n_chunks``.

    A stable sort on the chunk number keeps each chunk's keys ascending.
    """
    if len(counts) == 0:
        return
    chunk = (first_ids(counts.keys, n, bits) % KEY_DTYPE(n_chunks)).astype(
        np.uint16 if n_chunks <= 1 << 16 else np.uint32
    )
    order = np.argsort(chunk, kind="stable")
    chunk_sorted = chunk[order]
    bounds = np.flatnonzero(np.concatenate(([True], chunk_sorted[1:] != chunk_sorted[:-1])))
    bounds = np.append(bounds, len(order))
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        idx = order[lo:hi]
        yield int(chunk_sorted[lo]), Counts(counts.keys[idx], counts.counts[idx])


def ngram_totals(lengths: np.ndarray, n: int) -> int:
    """How many n-grams samples of these lengths hold: sum of ``max(L - n + 1, 0)``."""
    lengths = np.asarray(lengths, dtype=np.int64)
    return int(np.maximum(lengths - n + 1, 0).sum())
