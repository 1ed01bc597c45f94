"""The pure core of ``ngram-dask contexts``: token arrays and prompts in, occurrences,
counts and the kept examples out. No I/O and no Dask, so each function is tested
against a brute-force oracle (``tests/contexts/test_kernel.py``).

*Occurrences.* A prompt of ``n - 1`` ids (a row of ``top_bigrams``: n = 2, of
``top_trigrams``: n = 3) occurs at position ``i`` of a sample when the n-gram starting
at ``i`` lies inside the sample, its first ``n - 1`` ids are the prompt and (with
``drop_eos``) none of its ``n`` ids is the EOS id: exactly the n-grams that the prompt's
``sum_count`` counts. They are found in one vectorised pass per family: for n = 2 a
lookup table indexed by id, for n = 3 a hashed filter of every position's packed two-id
key (``Prompts.filter``), then ``np.searchsorted`` of the few left in the prompts'
sorted keys. No Python loop runs
per position.

*Choice.* Every occurrence gets a priority, a 64-bit hash (splitmix64) of ``(seed, n,
file, sample in file, offset in sample)``: it depends on nothing but the occurrence, so
"the k smallest priorities of each prompt" is the same set however the input is split
into tasks, in whatever order they run. A task keeps its k smallest per prompt; the
writer keeps the k smallest of those: a uniform sample of ``min(k, count)`` occurrences
without replacement, identical for any partitioning. Ties (a 64-bit collision) are
broken by the location, so the order is total.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

U64 = np.uint64
MASK64 = (1 << 64) - 1
_GOLDEN, _M1, _M2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


# --- priorities ----------------------------------------------------------------------------

def splitmix64_int(x: int) -> int:
    """splitmix64's finaliser on one Python int (the reference the arrays follow)."""
    z = (x + _GOLDEN) & MASK64
    z = ((z ^ (z >> 30)) * _M1) & MASK64
    z = ((z ^ (z >> 27)) * _M2) & MASK64
    return z ^ (z >> 31)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 on a uint64 array (wrapping arithmetic), elementwise."""
    with np.errstate(over="ignore"):
        z = x.astype(U64) + U64(_GOLDEN)
        z = (z ^ (z >> U64(30))) * U64(_M1)
        z = (z ^ (z >> U64(27))) * U64(_M2)
        return z ^ (z >> U64(31))


def priority_int(seed: int, n: int, file: int, sample: int, offset: int) -> int:
    """The priority of one occurrence (pure Python, for tests and documentation)."""
    h = splitmix64_int(seed & MASK64)
    for part in (n, file, sample, offset):
        h = splitmix64_int(h ^ (part & MASK64))
    return h


def sample_hashes(seed: int, n: int, files: np.ndarray, samples: np.ndarray) -> np.ndarray:
    """``priority_int`` up to the offset, for each sample (uint64)."""
    h = splitmix64_int(splitmix64_int(seed & MASK64) ^ n)
    return splitmix64(splitmix64(U64(h) ^ files.astype(U64)) ^ samples.astype(U64))


def priorities(sample_hash: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Priorities of occurrences from their sample's hash and their offset in the sample."""
    return splitmix64(sample_hash ^ offsets.astype(U64))


# --- prompts -------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Prompts:
    """The prompts of one family: ``n`` (2 or 3), their ids (``ids[j]`` is column ``id{j}``,
    sorted by the ids), packed into ``keys`` (``bits`` per id, ``id0`` first), and the
    expected next id of each."""

    n: int
    ids: tuple[np.ndarray, ...]
    expected: np.ndarray
    bits: int

    def __post_init__(self):
        if self.n not in (2, 3):
            raise ValueError(f"prompts are of top_bigrams (n = 2) or top_trigrams (n = 3), not n = {self.n}")
        if len(self.ids) != self.n - 1:
            raise ValueError(f"n = {self.n} prompts have {self.n - 1} id column(s), got {len(self.ids)}")
        keys = self.keys
        if len(keys) > 1 and not np.all(keys[1:] > keys[:-1]):
            raise ValueError("prompts must be sorted by their ids, without duplicates")

    @property
    def keys(self) -> np.ndarray:
        key = np.asarray(self.ids[0], U64)
        for col in self.ids[1:]:
            key = (key << U64(self.bits)) | np.asarray(col, U64)
        return key

    def __len__(self) -> int:
        return len(self.expected)

    @functools.cached_property
    def filter(self) -> tuple[int, np.ndarray]:
        """``(shift, table)``: ``table[(key * golden) >> shift]`` is True for every prompt's key
        and for few others (a one-hash Bloom filter of at least 64 slots per prompt, at most
        64 MiB), so only those candidates pay for the binary search."""
        bits = min(26, max(20, int(64 * max(len(self), 1) - 1).bit_length()))
        table = np.zeros(1 << bits, bool)
        with np.errstate(over="ignore"):
            table[(self.keys * U64(_GOLDEN)) >> U64(64 - bits)] = True
        return 64 - bits, table

    @classmethod
    def make(cls, n: int, ids, expected, bits: int) -> "Prompts":
        """Prompts from unsorted columns (sorted here)."""
        cols = [np.asarray(c, np.int64) for c in ids]
        order = np.lexsort(cols[::-1]) if cols and len(cols[0]) else np.zeros(0, np.int64)
        return cls(n, tuple(c[order] for c in cols), np.asarray(expected, np.int64)[order], bits)


# --- occurrences ---------------------------------------------------------------------------

@dataclass
class Occurrences:
    """Every occurrence of one family's prompts in a piece: ``prompt`` (index into the
    ``Prompts``), ``pos`` (position in the concatenated tokens, ascending) and ``sample``
    (index of the sample it is in)."""

    prompt: np.ndarray
    pos: np.ndarray
    sample: np.ndarray


def _lookup(tokens: np.ndarray, width: int, p: Prompts, vocab: int,
            workspace: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(candidate positions, their prompt index) where the first n-1 ids are a prompt."""
    if p.n == 2:
        first = np.zeros(max(vocab, int(p.ids[0].max()) + 1), bool)
        first[p.ids[0]] = True
        pos = np.flatnonzero(first[tokens[:width]])
        index = np.full(len(first), -1, np.int64)
        index[p.ids[0]] = np.arange(len(p))
        return pos, index[tokens[pos]]
    # Every position's packed key, hashed in place (contiguous passes, no gathers by index),
    # through the filter; the few positions left are looked up exactly.
    shift, table = p.filter
    if workspace is not None and len(workspace) >= width and workspace.dtype == U64:
        h = workspace[:width]  # a buffer kept between tasks: no page faults for a fresh array
        h[...] = tokens[:width]
    else:
        h = tokens[:width].astype(U64)
    h <<= U64(p.bits)
    h |= tokens[1:width + 1]
    with np.errstate(over="ignore"):
        h *= U64(_GOLDEN)
    h >>= U64(shift)
    pos = np.flatnonzero(table[h])
    del h
    key = (tokens[pos].astype(U64) << U64(p.bits)) | tokens[pos + 1].astype(U64)
    keys = p.keys
    j = np.searchsorted(keys, key)
    j[j == len(keys)] = 0
    ok = keys[j] == key
    return pos[ok], j[ok]


def _samples_of(pos: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """The sample of each (ascending) position: O(samples log positions + positions)."""
    ends = np.searchsorted(pos, offsets[1:], side="left")
    return np.repeat(np.arange(len(offsets) - 1), np.diff(np.concatenate(([0], ends))))


def find(tokens: np.ndarray, offsets: np.ndarray, p: Prompts, vocab: int,
         exclude_id: int | None = None, workspace: np.ndarray | None = None) -> Occurrences:
    """Every occurrence of the prompts ``p`` in the samples ``tokens[offsets[s]:offsets[s+1]]``
    that is followed by a token inside its sample (and, with ``exclude_id``, whose n-gram
    does not contain that id)."""
    n = p.n
    total = len(tokens)
    empty = Occurrences(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64))
    if total < n or len(p) == 0:
        return empty
    width = total - n + 1  # positions whose n-gram fits the concatenation
    pos, prompt = _lookup(tokens, width, p, vocab, workspace)
    sample = _samples_of(pos, offsets)
    ok = pos + (n - 1) < offsets[sample + 1]  # the next token is inside the sample
    if exclude_id is not None:
        for j in range(n):
            ok &= tokens[pos + j] != exclude_id
    return Occurrences(prompt[ok], pos[ok], sample[ok])


# --- the k smallest per prompt ---------------------------------------------------------------

def smallest_per_group(group: np.ndarray, prio: np.ndarray, tiebreak: np.ndarray, k: int,
                       groups: int) -> np.ndarray:
    """Indices of the ``k`` smallest ``(prio, tiebreak)`` of each group, sorted by
    ``(group, prio, tiebreak)``.

    Exact, and fast when groups are large: priorities are uniform, so the k smallest of
    ``c`` lie, nearly always, below ``(k + 4 sqrt(k) + 8) / c`` of the range; only those
    are sorted, and a group that got fewer than ``min(k, c)`` below its bound (rare) is
    sorted whole.
    """
    if len(group) == 0 or k <= 0:
        return np.zeros(0, np.int64)
    counts = np.bincount(group, minlength=groups)
    ratio = (k + 4 * np.sqrt(k) + 8) / np.maximum(counts, 1)
    bound = np.where(ratio >= 0.5, np.iinfo(U64).max,
                     (np.minimum(ratio, 0.5) * 2.0 ** 64).astype(U64))
    cand = np.flatnonzero(prio <= bound[group])
    short = np.bincount(group[cand], minlength=groups) < np.minimum(counts, k)
    if short.any():  # the bound was unlucky for these groups: take all their occurrences
        cand = np.union1d(cand, np.flatnonzero(short[group]))
    order = cand[np.lexsort((tiebreak[cand], prio[cand], group[cand]))]
    g = group[order]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    rank = np.arange(len(g)) - np.repeat(starts, np.diff(np.r_[starts, len(g)]))
    return order[rank < k]


# --- windows -------------------------------------------------------------------------------

def windows(tokens: np.ndarray, offsets: np.ndarray, pos: np.ndarray, sample: np.ndarray, n: int,
            before: int, after: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(list offsets, flat ids, window start)`` of the windows around occurrences:
    ``before`` ids before the prompt, the prompt, its next id and ``after`` more, clipped
    to the sample. ``window_start`` is the window's first position (in ``tokens``)."""
    lo = np.maximum(offsets[sample], pos - before)
    hi = np.minimum(offsets[sample + 1], pos + n + after)
    lengths = hi - lo
    list_offsets = np.zeros(len(pos) + 1, np.int64)
    np.cumsum(lengths, out=list_offsets[1:])
    flat = np.arange(list_offsets[-1], dtype=np.int64) - np.repeat(list_offsets[:-1] - lo, lengths)
    return list_offsets, tokens[flat], lo


# --- one piece -----------------------------------------------------------------------------

@dataclass
class Found:
    """What one piece gives for one family: per-prompt occurrence counts (``counts[i]``
    for prompt ``i``), and the kept occurrences (at most ``k`` per prompt) with their
    location, next id, priority and window."""

    n: int
    counts: np.ndarray
    prompt: np.ndarray
    actual: np.ndarray
    file: np.ndarray
    sample: np.ndarray  # index of the sample in its file
    offset: np.ndarray  # offset of the prompt's first id in its sample
    priority: np.ndarray
    window_offsets: np.ndarray
    window_ids: np.ndarray
    window_start: np.ndarray  # offset of the window's first id in its sample


def scan(tokens: np.ndarray, offsets: np.ndarray, files: np.ndarray, samples: np.ndarray, p: Prompts,
         vocab: int, k: int, seed: int, before: int, after: int, exclude_id: int | None = None,
         workspace: np.ndarray | None = None) -> Found:
    """Count every occurrence of ``p``'s prompts in the piece and keep the ``k`` of smallest
    priority per prompt. ``files[s]`` and ``samples[s]``: where sample ``s`` of the piece
    comes from (file index in the dataset, sample index in that file). ``workspace``: an
    optional uint64 buffer of at least ``len(tokens)`` entries, reused between calls."""
    offsets = np.asarray(offsets, np.int64)
    occ = find(tokens, offsets, p, vocab, exclude_id, workspace)
    counts = np.bincount(occ.prompt, minlength=len(p)).astype(np.int64)
    in_sample = occ.pos - offsets[occ.sample]
    prio = priorities(sample_hashes(seed, p.n, files, samples)[occ.sample], in_sample)
    keep = smallest_per_group(occ.prompt, prio, occ.pos, k, len(p))
    pos, sample = occ.pos[keep], occ.sample[keep]
    wo, wi, lo = windows(tokens, offsets, pos, sample, p.n, before, after)
    return Found(
        n=p.n, counts=counts, prompt=occ.prompt[keep], actual=tokens[pos + p.n - 1].astype(np.int64),
        file=np.asarray(files, np.int64)[sample], sample=np.asarray(samples, np.int64)[sample],
        offset=pos - offsets[sample], priority=prio[keep], window_offsets=wo, window_ids=wi,
        window_start=lo - offsets[sample])
