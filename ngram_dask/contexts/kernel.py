"""The pure core of ``ngram-dask contexts``: token arrays and prompts in, occurrences,
counts and the kept examples out. No I/O and no Dask, so each function is tested
against a brute-force oracle (``tests/contexts/test_kernel.py``).

*Occurrences.* A prompt of ``n - 1`` ids (a row of ``top_bigrams``: n = 2, of
``top_trigrams``: n = 3) occurs at position ``i`` of a sample when the n-gram starting
at ``i`` lies inside the sample, its first ``n - 1`` ids are the prompt and (with
``drop_eos``) none of its ``n`` ids is the EOS id: exactly the n-grams that the prompt's
``sum_count`` counts. They are found in one pass per family over stretches of positions
(``STRETCH``, sized for the CPU's cache), with one table lookup per position: for n = 2 a
table indexed by id (``Prompts.first_index``), for n = 3 a bool table that fits the CPU's
L2 cache, hashed by every position's packed two-id key (``Prompts.filter``); only the
positions it passes look their key up in the slot tables that name the prompt
(``Prompts.levels``), larger and slower to reach. No Python loop runs per position.

*Choice.* Every occurrence gets a priority, a 64-bit hash of ``(seed, n, file, sample in
file, offset in sample)`` (``priority_int``: splitmix64 over the sample, two murmur3
finalisers over the offset): it depends on nothing but the occurrence, so
"the k smallest priorities of each prompt" is the same set however the input is split
into tasks, in whatever order they run. A task keeps its k smallest per prompt; the
writer keeps the k smallest of those: a uniform sample of ``min(k, count)`` occurrences
without replacement, identical for any partitioning. Ties (a 64-bit collision) are
broken by the location, so the order is total. Within a unit only the occurrences under
their prompt's bound (``tighten``) are ever held, so memory follows k x prompts, not the
occurrences.

Public: ``Prompts`` (``make``, ``keys``, ``key_dtype``, ``hash``, ``first_index``, ``filter``,
``levels``/``slots``, ``holding``),
``find`` -> ``Occurrences``, ``scan`` -> ``Found``, ``cutoffs``, ``smallest_per_group``, ``tighten``,
``windows``, and the priorities (``splitmix64``, ``splitmix64_int``, ``fmix32_int``, ``priority_int``,
``sample_hashes``, ``priorities``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

U64, U32 = np.uint64, np.uint32
MASK64, MASK32 = (1 << 64) - 1, (1 << 32) - 1
_GOLDEN, _M1, _M2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
_MULTIPLIERS = (_GOLDEN, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93)  # odd: one per level
_MULTIPLIERS32 = (0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D, 0x27D4EB2F)  # the same, for 32-bit keys
_F1, _F2 = 0x85EBCA6B, 0xC2B2AE35  # murmur3's 32-bit finaliser


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


def fmix32_int(x: int) -> int:
    """murmur3's 32-bit finaliser on one Python int: a bijection of ``[0, 2**32)`` (0 -> 0)."""
    x &= MASK32
    x = ((x ^ (x >> 16)) * _F1) & MASK32
    x = ((x ^ (x >> 13)) * _F2) & MASK32
    return x ^ (x >> 16)


def _word_int(offset: int) -> int:
    """The 32 bits of an offset that its priority hashes: the offset itself below 2**32."""
    return (offset & MASK32) ^ fmix32_int((offset >> 32) & MASK32)


def priority_int(seed: int, n: int, file: int, sample: int, offset: int) -> int:
    """The priority of one occurrence (pure Python: the definition the arrays follow).

    The sample's hash ``h`` (splitmix64 over ``seed, n, file, sample``) keys two 32-bit
    hashes of the offset: the high half of the priority from ``h``'s high half, the low
    half from its low half. 32-bit hashes because the scan hashes half of all positions
    and numpy multiplies 32-bit lanes in SIMD (64-bit ones: not at all); two halves
    because the scan needs only the high one for nearly every occurrence: one whose high
    half is over its prompt's cutoff's is dropped before its low half is made."""
    h = splitmix64_int(seed & MASK64)
    for part in (n, file, sample):
        h = splitmix64_int(h ^ (part & MASK64))
    word = _word_int(offset)
    return fmix32_int((h >> 32) ^ word) << 32 | fmix32_int((h & MASK32) ^ word)


def sample_hashes(seed: int, n: int, files: np.ndarray, samples: np.ndarray) -> np.ndarray:
    """``h`` of ``priority_int``, for each sample (uint64)."""
    h = splitmix64_int(splitmix64_int(seed & MASK64) ^ n)
    return splitmix64(splitmix64(U64(h) ^ files.astype(U64)) ^ samples.astype(U64))


def _fmix32_(z: np.ndarray, tmp: np.ndarray) -> np.ndarray:
    """``fmix32_int`` on a uint32 array, in place (``tmp``: scratch of the same length).
    (Arrays wrap without a warning; numpy checks overflow on scalars only.)"""
    for shift, mult in ((16, _F1), (13, _F2)):
        np.right_shift(z, U32(shift), out=tmp)
        z ^= tmp
        z *= U32(mult)
    np.right_shift(z, U32(16), out=tmp)
    z ^= tmp
    return z


def _words(offsets: np.ndarray) -> np.ndarray:
    """``_word_int`` of each offset (int64 or uint64 array): a new uint32 array."""
    offsets = np.asarray(offsets).astype(U64)
    word = offsets.astype(U32)
    high = (offsets >> U64(32)).astype(U32)
    if high.any():
        word ^= _fmix32_(high, np.empty_like(high))
    return word


def _halves(hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The high and low 32 bits of each sample hash (uint32 arrays)."""
    hashes = np.asarray(hashes, U64)
    return (hashes >> U64(32)).astype(U32), hashes.astype(U32)


def priorities(sample_hash: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Priorities of occurrences from their sample's hash and their offset in the sample."""
    word = _words(offsets)
    high, low = _halves(sample_hash)
    high ^= word
    low ^= word
    tmp = np.empty_like(word)
    return _fmix32_(high, tmp).astype(U64) << U64(32) | _fmix32_(low, tmp).astype(U64)


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
    hash_levels: int = 4  # n = 3: levels of slot tables before the binary search (tests set 1)
    cutoff: np.ndarray | None = None  # per prompt: no occurrence above it is kept (``cutoffs``); None: none


    def __post_init__(self):
        if self.n not in (2, 3):
            raise ValueError(f"prompts are of top_bigrams (n = 2) or top_trigrams (n = 3), not n = {self.n}")
        if len(self.ids) != self.n - 1:
            raise ValueError(f"n = {self.n} prompts have {self.n - 1} id column(s), got {len(self.ids)}")
        keys = self.keys
        if len(keys) > 1 and not np.all(keys[1:] > keys[:-1]):
            raise ValueError("prompts must be sorted by their ids, without duplicates")
        if self.cutoff is not None and len(self.cutoff) != len(self.expected):
            raise ValueError(f"{len(self.expected)} prompts have {len(self.cutoff)} cutoffs")

    @property
    def keys(self) -> np.ndarray:
        key = np.asarray(self.ids[0], U64)
        for col in self.ids[1:]:
            key = (key << U64(self.bits)) | np.asarray(col, U64)
        return key

    def __len__(self) -> int:
        return len(self.expected)

    @property
    def key_dtype(self) -> type:
        """n = 3: uint32 when both ids fit in 32 bits (the GPT-NeoX vocab: 16 bits each), else
        uint64. 32-bit keys halve the bytes every pass moves, and numpy multiplies them in SIMD."""
        return np.uint32 if (self.n - 1) * self.bits <= 32 else U64

    def hash(self, keys: np.ndarray, mult: int, shift: int, out: np.ndarray | None = None,
             scratch: np.ndarray | None = None) -> np.ndarray:
        """``(keys * mult) >> shift`` in the key's width, wrapping: a slot (int64, ready to
        index). The one definition the tables are built with and looked up by; ``out``
        (int64) and ``scratch`` (``key_dtype``), of ``len(keys)``, spare the hot loop two arrays."""
        dt = self.key_dtype
        if out is None:
            out = np.empty(len(keys), np.int64)
        with np.errstate(over="ignore"):
            return np.right_shift(np.multiply(np.asarray(keys, dt), dt(mult), out=scratch), dt(shift), out=out)

    @functools.cached_property
    def _multipliers(self) -> tuple[int, ...]:
        return _MULTIPLIERS if self.key_dtype is U64 else _MULTIPLIERS32

    @functools.cached_property
    def filter(self) -> tuple[int, np.ndarray]:
        """n = 3: ``(shift, table)``: ``table[hash(key, level 0's multiplier, shift)]`` is True
        for every prompt's key and for few others (at least 16 slots per prompt, at most
        2**20: a bool table that stays in the CPU's L2 cache). Every position is looked up
        here; only the few that pass are looked up in ``levels``, whose tables are larger
        than the cache (a lookup there costs ~4x one here)."""
        width = 8 * np.dtype(self.key_dtype).itemsize
        bits = min(20, max(10, int(16 * max(len(self), 1) - 1).bit_length()))
        table = np.zeros(1 << bits, bool)
        table[self.hash(self.sorted_keys, self._multipliers[0], width - bits)] = True
        return width - bits, table

    @functools.cached_property
    def sorted_keys(self) -> np.ndarray:
        """``keys`` in ``key_dtype``, computed once."""
        return self.keys.astype(self.key_dtype)

    def first_index(self, vocab: int, exclude_id: int | None = None) -> np.ndarray:
        """n = 2: ``table[id]`` is the index of the prompt ``(id,)``, -1 for an id that is none
        and for ``exclude_id`` (int32)."""
        size = max(vocab, int(self.ids[0].max()) + 1 if len(self) else 0)
        if (size, exclude_id) not in self._first_tables:
            table = np.full(size, -1, np.int16 if len(self) < 1 << 15 else np.int32)
            table[self.ids[0]] = np.arange(len(self))
            if exclude_id is not None and 0 <= exclude_id < size:
                table[exclude_id] = -1
            self._first_tables[size, exclude_id] = table
        return self._first_tables[size, exclude_id]

    @functools.cached_property
    def _first_tables(self) -> dict[tuple[int, int | None], np.ndarray]:
        return {}

    def holding(self, id_: int) -> np.ndarray:
        """Per prompt: True where one of its ids is ``id_``."""
        out = np.zeros(len(self), bool)
        for col in self.ids:
            out |= np.asarray(col) == id_
        return out

    @functools.cached_property
    def slots(self) -> tuple[int, np.ndarray]:
        """n = 3: ``(shift, table)``: ``table[hash(key, level 0's multiplier, shift)]`` is the
        index of the one prompt whose key hashes to that slot, -1 for none, -2 for several
        (int32; at least 32 slots per prompt, at most 4M, so few slots are shared)."""
        _, shift, table = self.levels[0]
        return shift, table

    @functools.cached_property
    def levels(self) -> list[tuple[int, int, np.ndarray]]:
        """``(multiplier, shift, table)`` per level: level 0 as ``slots``; the prompts of a
        level's shared slots get a table of their own, with another multiplier, in the next
        level (a frequent prompt that shares a slot would otherwise send every one of its
        occurrences to the binary search). Slots still shared at the last level are -2."""
        out, members = [], np.arange(len(self))
        width = 8 * np.dtype(self.key_dtype).itemsize
        for mult in self._multipliers[:max(1, self.hash_levels)]:
            bits = min(22, max(8, int(32 * max(len(members), 1) - 1).bit_length()))
            slot = self.hash(self.sorted_keys[members], mult, width - bits)
            table = np.full(1 << bits, -1, np.int32)
            table[slot] = members.astype(np.int32)
            used, times = np.unique(slot, return_counts=True)
            table[used[times > 1]] = -2
            out.append((mult, width - bits, table))
            members = members[np.isin(slot, used[times > 1])]
            if not len(members):
                break
        return out

    @classmethod
    def make(cls, n: int, ids, expected, bits: int, hash_levels: int = 4) -> "Prompts":
        """Prompts from unsorted columns (sorted here)."""
        cols = [np.asarray(c, np.int64) for c in ids]
        order = np.lexsort(cols[::-1]) if cols and len(cols[0]) else np.zeros(0, np.int64)
        return cls(n, tuple(c[order] for c in cols), np.asarray(expected, np.int64)[order], bits, hash_levels)


# --- occurrences ---------------------------------------------------------------------------

# Positions per stretch: the passes over a stretch's arrays run in the CPU's cache, and the
# occurrences are never all held at once (a piece group can have as many as it has tokens).
# 2**18 scanned a dense 134M-token group 6% faster than 2**17 and 2**19 (2 MiB of L2 per
# core): fewer numpy calls per position, stretches' arrays still near the core.
STRETCH = 1 << 18


@dataclass
class Occurrences:
    """Every occurrence of one family's prompts in a piece group: ``prompt`` (index into the
    ``Prompts``), ``pos`` (position in the concatenated tokens, ascending) and ``sample``
    (index of the sample it is in)."""

    prompt: np.ndarray
    pos: np.ndarray
    sample: np.ndarray


def _crossing(offsets: np.ndarray, n: int, width: int) -> np.ndarray:
    """The positions (sorted) whose n-gram would run past its sample's end: the last n - 1 of each sample."""
    q = offsets[1:, None] - np.arange(1, n, dtype=np.int64)[None, :]
    return np.unique(q[(q >= offsets[:-1, None]) & (q < width)])


def _stretches(tokens: np.ndarray, offsets: np.ndarray, p: Prompts, vocab: int, exclude_id: int | None,
               workspace: np.ndarray | None, stretch: int = STRETCH):
    """``(start, end, pos, prompt)`` per stretch of positions: the occurrences in ``[start,
    end)``, ``pos`` ascending (absolute, int64), ``prompt`` their prompt's index (int64),
    and, for n = 3, candidates that are none (``prompt`` is ``len(p)``): they are few,
    and dropping them here would copy every occurrence of the stretch once more."""
    n, width = p.n, len(tokens) - p.n + 1
    if width <= 0 or len(p) == 0:
        return
    crossing = _crossing(offsets, n, width)
    # A prompt never holds ``exclude_id`` when it comes from a build that drops it; when one
    # does, its occurrences are dropped by prompt (``dead``), so per position only the next id
    # is compared with ``exclude_id``.
    dead = p.holding(exclude_id) if exclude_id is not None and n == 3 else None
    if dead is not None and not dead.any():
        dead = None
    if n == 2:
        table = p.first_index(vocab, exclude_id)
    else:
        dt = p.key_dtype
        fshift, filt = p.filter
        mult, shift, slots = p.levels[0]
        keys = p.sorted_keys
        if workspace is None or workspace.dtype != U64 or len(workspace) < 3 * stretch:
            workspace = np.empty(3 * stretch, U64)
        kbuf, mbuf = workspace[:stretch].view(dt)[:stretch], workspace[stretch:2 * stretch].view(dt)[:stretch]
        hbuf = workspace[2 * stretch:3 * stretch].view(np.int64)
        none = len(p)
    for a in range(0, width, stretch):
        b = min(width, a + stretch)
        # np.take and int64 indices: numpy's indexing first copies other index types to intp
        if n == 2:
            hit = np.take(table, tokens[a:b])
            cand = hit != -1
        else:  # every position's packed key, looked up in the small filter first
            key = kbuf[:b - a]
            key[...] = tokens[a:b]
            key <<= dt(p.bits)
            key |= tokens[a + 1:b + 1]
            cand = np.take(filt, p.hash(key, mult, fshift, out=hbuf[:b - a], scratch=mbuf[:b - a]))
        lo, hi = np.searchsorted(crossing, (a, b))
        cand[crossing[lo:hi] - a] = False
        if exclude_id is not None:
            cand[tokens[a + n - 1:b + n - 1] == exclude_id] = False
        pos = np.flatnonzero(cand)
        if n == 2:  # (the table names no prompt that holds exclude_id)
            prompt = np.take(hit, pos).astype(np.int64)
        else:  # a slot names one candidate prompt (check it) or, for a shared slot, several
            kq = np.take(key, pos)
            prompt = np.take(slots, p.hash(kq, mult, shift, out=hbuf[:len(pos)], scratch=mbuf[:len(pos)]))
            prompt = prompt.astype(np.int64)
            shared = np.flatnonzero(prompt == -2)
            if len(shared):
                prompt[shared] = _shared(p, kq[shared])
            bad = np.take(keys, prompt) != kq  # (-1 reads the last key, which is never a non-prompt's)
            if dead is not None:
                bad |= np.take(dead, prompt)
            np.putmask(prompt, bad, none)
        yield a, b, pos, prompt


def _shared(p: Prompts, kq: np.ndarray) -> np.ndarray:
    """The prompt (or -1) of keys whose level-0 slot is shared: the next levels' tables, then a
    binary search for those still shared."""
    keys = p.sorted_keys
    out = np.full(len(kq), -2, np.int32)
    todo = np.arange(len(kq))
    for mult, shift, table in p.levels[1:]:
        out[todo] = np.take(table, p.hash(kq[todo], mult, shift))
        todo = todo[out[todo] == -2]
        if not len(todo):
            return out
    j = np.searchsorted(keys, kq[todo])
    j[j == len(keys)] = 0
    out[todo] = np.where(keys[j] == kq[todo], j, -1)
    return out


def _sample_sizes(pos: np.ndarray, offsets: np.ndarray, a: int, b: int) -> tuple[int, np.ndarray]:
    """``(s0, sizes)``: the ascending positions ``pos`` (all in ``[a, b)``) lie in samples
    ``s0, s0 + 1, ...``, ``sizes[i]`` of them in sample ``s0 + i``."""
    last = len(offsets) - 2
    s0 = min(max(int(np.searchsorted(offsets, a, side="right")) - 1, 0), last)
    s1 = min(max(int(np.searchsorted(offsets, b - 1, side="right")) - 1, s0), last)
    cut = np.searchsorted(pos, offsets[s0 + 1:s1 + 1])
    return s0, np.diff(np.concatenate(([0], cut, [len(pos)])))


def _one_length(offsets: np.ndarray) -> int | None:
    """The samples' length when they all have one (seq-len samples), else None."""
    lengths = np.diff(offsets)
    return int(lengths[0]) if len(lengths) and lengths[0] > 0 and (lengths == lengths[0]).all() else None


def _locate(pos: np.ndarray, offsets: np.ndarray, a: int, b: int, step: int | None,
            wide: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(sample, word)`` of the positions ``a + pos`` (ascending, all in ``[a, b)``): each
    one's sample (int64 index) and the 32 bits of its offset there that its priority hashes
    (``_word_int``, uint32; ``wide``: some sample is longer than 2**32)."""
    if step is not None and step & (step - 1) == 0 and (a - int(offsets[0])) % step == 0 and step <= 1 << 32:
        # samples of one length, a power of two, and the stretch starts one: two bit operations
        sample = pos >> (step.bit_length() - 1)
        sample += (a - int(offsets[0])) >> (step.bit_length() - 1)
        word = pos.astype(U32)
        word &= U32(step - 1)
        return sample, word
    if step is not None:  # samples of one length: a division, not a search
        rel = pos + (a - int(offsets[0]))
        sample = rel // step
        rel -= sample * step
    else:
        rel = pos + a
        s0, sizes = _sample_sizes(rel, offsets, a, b)
        sample = np.repeat(np.arange(s0, s0 + len(sizes)), sizes)
        rel -= np.repeat(offsets[s0:s0 + len(sizes)], sizes)
    return sample, (_words(rel) if wide else rel.astype(U32))


def find(tokens: np.ndarray, offsets: np.ndarray, p: Prompts, vocab: int,
         exclude_id: int | None = None, workspace: np.ndarray | None = None, *, stretch: int = STRETCH) -> Occurrences:
    """Every occurrence of the prompts ``p`` in the samples ``tokens[offsets[s]:offsets[s+1]]``
    that is followed by a token inside its sample (and, with ``exclude_id``, whose n-gram
    does not contain that id)."""
    offsets = np.asarray(offsets, np.int64)
    prompts, positions, samples = [], [], []
    for a, b, pos, prompt in _stretches(tokens, offsets, p, vocab, exclude_id, workspace, stretch):
        some = prompt != len(p)
        if not some.all():
            pos, prompt = pos[some], prompt[some]
        pos = pos + a
        s0, sizes = _sample_sizes(pos, offsets, a, b)
        prompts.append(prompt)
        positions.append(pos)
        samples.append(np.repeat(np.arange(s0, s0 + len(sizes)), sizes))
    if not positions:
        return Occurrences(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64))
    return Occurrences(np.concatenate(prompts), np.concatenate(positions), np.concatenate(samples))


# --- the k smallest per prompt ---------------------------------------------------------------

MAX64 = np.iinfo(U64).max


def cutoffs(occurrences: np.ndarray, k: int, sigmas: float) -> np.ndarray:
    """Per prompt, a priority under which its ``k`` smallest lie all but surely, from how
    often it occurs in the whole input (``occurrences``: its ``sum_count``).

    Priorities are uniform, so of ``c`` occurrences a number distributed Binomial(c, q)
    lies under ``q * 2**64``; ``q = (k + sigmas * sqrt(k) + sigmas**2) / c`` expects
    ``sigmas`` standard deviations (and ``sigmas**2`` more) beyond ``k`` there: at 8, fewer
    than ``k`` has odds under 1e-13 per prompt for any ``k`` (a Chernoff bound: exp(-32)).
    Every unit then drops the rest of the prompt's occurrences at once, so its pool holds
    tens per prompt, not the unit's share of every occurrence. A cutoff is a filter, not a guess: the writer counts what
    it got, and a prompt with fewer than ``min(k, c)`` under its cutoff is scanned again
    without one (``run``). ``MAX64`` (no cutoff) where ``q >= 1``.
    """
    c = np.asarray(occurrences, np.float64)
    expect = k + sigmas * np.sqrt(k) + sigmas * sigmas
    q = np.where(c > expect, expect / np.maximum(c, 1.0), 1.0)
    out = np.full(len(c), MAX64, U64)
    cut = q < 1.0
    out[cut] = (q[cut] * 2.0 ** 64).astype(U64)
    return out


def tighten(group: np.ndarray, prio: np.ndarray, top: np.ndarray, k: int, groups: int) -> np.ndarray:
    """A lower ``top`` (per group: every priority of the group is at most its ``top``) that
    still has the group's k smallest at or under it, and the indices of the rows at or under
    it. ``top`` is updated in place.

    Priorities under ``top`` are uniform, so the k smallest of ``c`` lie, nearly always,
    under ``top * (k + 4 sqrt(k) + 8) / c``; a group with fewer than ``min(k, c)`` there
    (rare) keeps its ``top``. Exact either way: a group's k smallest are never dropped.
    """
    counts = np.bincount(group, minlength=groups)
    frac = (k + 4 * np.sqrt(k) + 8) / np.maximum(counts, 1)
    lower = np.where(frac < 0.5, (top.astype(np.float64) * np.minimum(frac, 0.5)).astype(U64), top)
    under = prio <= lower[group]
    enough = np.bincount(group[under], minlength=groups) >= np.minimum(counts, k)
    top[enough] = lower[enough]
    if enough.all():
        return np.flatnonzero(under)
    return np.flatnonzero(prio <= top[group])


def _first_k_sorted(group: np.ndarray, prio: np.ndarray, tiebreak: np.ndarray, k: int, groups: int) -> np.ndarray:
    """Indices of the ``k`` smallest ``(prio, tiebreak)`` of each group, sorted by
    ``(group, prio, tiebreak)``: one argsort of ``group`` and ``prio``'s high bits packed
    in a uint64 (a lexsort of three keys costs ~7x more); equal packed keys (the low bits
    would decide) fall back to the lexsort."""
    gbits = int(groups - 1).bit_length()
    with np.errstate(over="ignore"):
        packed = prio >> U64(gbits) if gbits else prio.copy()
        if gbits:
            packed |= group.astype(U64) << U64(64 - gbits)
    order = np.argsort(packed)
    ps = packed[order]
    if len(ps) > 1 and (ps[1:] == ps[:-1]).any():
        order = np.lexsort((tiebreak, prio, group))
    g = group[order]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    rank = np.arange(len(g)) - np.repeat(starts, np.diff(np.r_[starts, len(g)]))
    return order[rank < k]


def smallest_per_group(group: np.ndarray, prio: np.ndarray, tiebreak: np.ndarray, k: int,
                       groups: int) -> np.ndarray:
    """Indices of the ``k`` smallest ``(prio, tiebreak)`` of each group, sorted by
    ``(group, prio, tiebreak)``.

    Exact, and fast when groups are large: only the rows under each group's bound
    (``tighten``) are sorted.
    """
    if len(group) == 0 or k <= 0:
        return np.zeros(0, np.int64)
    cand = tighten(group, prio, np.full(groups, MAX64, U64), k, groups)
    return cand[_first_k_sorted(group[cand], prio[cand], tiebreak[cand], k, groups)]


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


# --- one piece group ----------------------------------------------------------------------

@dataclass
class Found:
    """What one piece group gives for one family: per-prompt occurrence counts (``counts[i]``
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
         workspace: np.ndarray | None = None, *, stretch: int = STRETCH, pool_rows: int | None = None) -> Found:
    """Count every occurrence of ``p``'s prompts in the piece group and keep the ``k`` of smallest
    priority per prompt. ``files[s]`` and ``samples[s]``: where sample ``s`` of the piece group
    comes from (file index in the dataset, sample index in that file). ``workspace``: an
    optional uint64 buffer of at least ``3 * stretch`` entries, reused between calls.
    ``stretch`` and ``pool_rows`` (the pool's size that triggers the first tightening) change
    the speed, never the result: tests set them tiny.

    One pass over stretches of positions: each stretch's occurrences are counted and get their
    priority; only those at or under their prompt's ``top`` join the pool of candidates,
    and ``top`` is lowered (``tighten``) whenever the pool has doubled. So the work per
    occurrence is a few passes in cache, and memory holds the pool (about ``(k + 4 sqrt(k)
    + 8) x prompts`` rows after a tightening), never every occurrence.
    """
    offsets = np.asarray(offsets, np.int64)
    groups = len(p)
    counts = np.zeros(groups + 1, np.int64)
    # one more entry for the candidates that are none (``_stretches``): a top of 0 keeps next to none
    bound = np.zeros(groups + 1, U64)
    top = bound[:groups]
    top[:] = MAX64 if p.cutoff is None else p.cutoff
    high_keys, low_keys = _halves(sample_hashes(seed, p.n, files, samples))
    wide = len(offsets) > 1 and int(np.diff(offsets).max()) > MASK32
    pool: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    rows, limit = 0, max(1 << 20, 4 * k * groups) if pool_rows is None else pool_rows
    tmp = np.empty(stretch, U32)
    step = _one_length(offsets)
    high_bound = (bound >> U64(32)).astype(U32)
    for a, b, pos, prompt in _stretches(tokens, offsets, p, vocab, exclude_id, workspace, stretch):
        counts += np.bincount(prompt, minlength=groups + 1)
        sample, word = _locate(pos, offsets, a, b, step, wide)
        high = np.take(high_keys, sample)
        high ^= word
        _fmix32_(high, tmp[:len(high)])
        # the priority's high half rules out nearly every occurrence, so the low half is made
        # only for those at or under their prompt's bound's high half
        keep = np.flatnonzero(high <= np.take(high_bound, prompt))
        keep = keep[np.take(prompt, keep) != groups]
        low = np.take(low_keys, sample[keep])
        low ^= word[keep]
        prio = high[keep].astype(U64) << U64(32) | _fmix32_(low, tmp[:len(keep)])
        under = prio <= np.take(bound, prompt[keep])
        keep = keep[under]
        pool.append((prompt[keep], prio[under], pos[keep] + a))
        rows += len(keep)
        if rows > limit:
            pool = [_merge(pool, top, k, groups)]
            high_bound = (bound >> U64(32)).astype(U32)
            rows = len(pool[0][0])
            limit = max(limit, 2 * rows)
    prompt, prio, pos = _merge(pool, top, k, groups) if pool else (np.zeros(0, np.int32), np.zeros(0, U64),
                                                                      np.zeros(0, np.int64))
    keep = _first_k_sorted(prompt, prio, pos, k, groups) if len(prompt) else np.zeros(0, np.int64)
    prompt, prio, pos = prompt[keep].astype(np.int64), prio[keep], pos[keep]
    sample = np.searchsorted(offsets, pos, side="right") - 1
    wo, wi, lo = windows(tokens, offsets, pos, sample, p.n, before, after)
    return Found(
        n=p.n, counts=counts[:groups], prompt=prompt, actual=tokens[pos + p.n - 1].astype(np.int64),
        file=np.asarray(files, np.int64)[sample], sample=np.asarray(samples, np.int64)[sample],
        offset=pos - offsets[sample], priority=prio, window_offsets=wo, window_ids=wi,
        window_start=lo - offsets[sample])


def _merge(pool, top, k: int, groups: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pool's parts as one, cut to the rows under each prompt's (lowered) ``top``."""
    prompt, prio, pos = (np.concatenate([part[i] for part in pool]) for i in range(3))
    keep = tighten(prompt, prio, top, k, groups)
    return prompt[keep], prio[keep], pos[keep]
