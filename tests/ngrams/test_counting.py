"""The pure counting core against a Counter oracle, on random and adversarial streams."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ngram_dask.ngrams import counting

from helpers import oracle

samples_st = st.lists(
    st.lists(st.integers(0, 65535), min_size=0, max_size=40), min_size=0, max_size=12
)
small_vocab_samples_st = st.lists(
    st.lists(st.integers(0, 3), min_size=0, max_size=60), min_size=0, max_size=8
)


def concat(samples):
    lengths = [len(s) for s in samples]
    tokens = np.array([t for s in samples for t in s], dtype=np.uint16)
    offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
    return tokens, offsets


def as_counter(c: counting.Counts, n: int, bits: int) -> Counter:
    cols = counting.unpack_keys(c.keys, n, bits)
    return Counter({tuple(int(col[i]) for col in cols): int(c.counts[i]) for i in range(len(c))})


@settings(max_examples=300, deadline=None)
@given(samples=st.one_of(samples_st, small_vocab_samples_st), n=st.integers(1, 4))
# Keys above 2**53 that differ only in their low bits: a float64 comparison called them equal.
@example(samples=[[32, 0, 0, 1, 32, 0, 0, 0]], n=4)
def test_count_keys_matches_counter(samples, n):
    tokens, offsets = concat(samples)
    bits = 16
    c = counting.count_keys(counting.ngram_keys(tokens, offsets, n, bits))
    assert as_counter(c, n, bits) == oracle(samples, n)
    # strictly increasing, compared as the 64-bit integers they are (float64 merges keys above 2**53)
    assert np.all(c.keys[1:] > c.keys[:-1])
    assert int(c.counts.sum()) == counting.ngram_totals(offsets[1:] - offsets[:-1], n)


@settings(max_examples=200, deadline=None)
@given(samples=small_vocab_samples_st, n=st.integers(2, 4), exclude=st.integers(0, 3))
def test_exclude_id_drops_every_ngram_containing_it(samples, n, exclude):
    tokens, offsets = concat(samples)
    c = counting.count_keys(counting.ngram_keys(tokens, offsets, n, 16, exclude_id=exclude))
    assert as_counter(c, n, 16) == oracle(samples, n, exclude=exclude)


@settings(max_examples=100, deadline=None)
@given(parts=st.lists(samples_st, min_size=0, max_size=4), n=st.integers(1, 3), k=st.sampled_from([1, 2, 7, 64]))
def test_partials_of_several_shard_groups_merge_to_the_whole(parts, n, k):
    """The two halves of the build's counting: each shard group's counts by chunk
    (``count_by_chunk``, the explode) summed per chunk (``aggregate.merge_partials``) are
    the counts of the whole corpus, each chunk holding exactly its id0 % k."""
    from ngram_dask.ngrams.aggregate import merge_partials

    per_chunk: dict[int, list[counting.Counts]] = {}
    for samples in parts:
        tokens, offsets = concat(samples)
        cc = counting.count_by_chunk(tokens, offsets, (n,), 16, k)[n]
        for chunk in cc.nonempty_chunks().tolist():
            per_chunk.setdefault(chunk, []).append(cc.chunk(chunk))
    got = Counter()
    for chunk, partials in per_chunk.items():
        ids = [np.concatenate(col) for col in zip(*(counting.unpack_keys(p.keys, n, 16) for p in partials))]
        keys, counts = merge_partials(n, ids, np.concatenate([p.counts for p in partials]), 16)
        assert np.all(keys[1:] > keys[:-1]) and np.all(counting.first_ids(keys, n, 16) % k == chunk)
        got += as_counter(counting.Counts(keys, counts), n, 16)
    assert got == sum((oracle(samples, n) for samples in parts), Counter())


@pytest.mark.parametrize("lengths", [[0], [1], [2], [3], [0, 1, 2, 3], [2048], [1, 2048, 0, 5]])
@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_short_and_long_samples(lengths, n):
    rng = np.random.default_rng(sum(lengths) + n)
    samples = [list(rng.integers(0, 65536, size=L)) for L in lengths]
    tokens, offsets = concat(samples)
    c = counting.count_keys(counting.ngram_keys(tokens, offsets, n, 16))
    assert as_counter(c, n, 16) == oracle(samples, n)
    assert int(c.counts.sum()) == sum(max(L - n + 1, 0) for L in lengths)


def test_extreme_ids_do_not_collide():
    samples = [[0, 65535, 0, 65535, 65535, 0], [65535] * 5, [0] * 5]
    tokens, offsets = concat(samples)
    for n in (2, 3, 4):
        c = counting.count_keys(counting.ngram_keys(tokens, offsets, n, 16))
        assert as_counter(c, n, 16) == oracle(samples, n)


def test_key_bits_and_fit():
    assert counting.key_bits(50432) == 16
    assert counting.key_bits(65536) == 16
    assert counting.key_bits(65537) == 17
    assert counting.key_bits(2) == 1
    counting.check_key_fits(4, 16)
    with pytest.raises(ValueError, match="64-bit"):
        counting.check_key_fits(4, 17)


def test_narrow_bits_pack_exactly():
    # vocab 5 -> 3 bits per id: 8-grams fit in 24 bits
    rng = np.random.default_rng(1)
    samples = [list(rng.integers(0, 5, size=30)) for _ in range(4)]
    tokens, offsets = concat(samples)
    bits = counting.key_bits(5)
    c = counting.count_keys(counting.ngram_keys(tokens, offsets, 8, bits))
    assert as_counter(c, 8, bits) == oracle(samples, 8)


# ----------------------------------------------------------------------------- one pass per shard


def _chunked_as_counter(cc: counting.ChunkedCounts, n: int, k: int) -> Counter:
    got = Counter()
    for chunk in range(k):
        part = cc.chunk(chunk)
        if len(part) > 1:
            assert np.all(part.keys[1:] > part.keys[:-1])  # ascending inside the chunk
        assert np.all(counting.first_ids(part.keys, n, 16) % k == chunk)
        got += as_counter(part, n, 16)
    assert set(cc.nonempty_chunks().tolist()) == {c for c in range(k) if cc.bounds[c + 1] > cc.bounds[c]}
    return got


@settings(max_examples=200, deadline=None)
@given(samples=st.one_of(samples_st, small_vocab_samples_st),
       ns=st.sampled_from([(2, 3), (1, 2, 3), (3,), (1, 3), (2, 4)]),
       k=st.sampled_from([1, 3, 64]), engine=st.sampled_from(counting.COUNT_ENGINES))
def test_count_by_chunk_matches_counter(samples, ns, k, engine):
    """One count for the largest n, the smaller n derived from it: same as counting each,
    with either engine; and both engines give identical arrays (order included)."""
    tokens, offsets = concat(samples)
    out = counting.count_by_chunk(tokens, offsets, ns, 16, k, engine=engine)
    assert sorted(out) == sorted(ns)
    for n in ns:
        assert _chunked_as_counter(out[n], n, k) == oracle(samples, n)
    reference = counting.count_by_chunk(tokens, offsets, ns, 16, k, engine="numpy")
    for n in ns:
        for got, want in zip(out[n], reference[n]):
            assert np.array_equal(got, want)


@settings(max_examples=100, deadline=None)
@given(samples=small_vocab_samples_st, exclude=st.integers(0, 3), k=st.sampled_from([1, 4]))
def test_count_by_chunk_with_excluded_id(samples, exclude, k):
    """Dropping n-grams with the separator breaks the prefix derivation: each n is counted alone."""
    tokens, offsets = concat(samples)
    out = counting.count_by_chunk(tokens, offsets, (1, 2, 3), 16, k, exclude_id=exclude)
    for n in (1, 2, 3):
        assert _chunked_as_counter(out[n], n, k) == oracle(samples, n, exclude=exclude)


@settings(max_examples=50, deadline=None)
@given(samples=samples_st)
def test_count_by_chunk_without_room_for_the_tag(samples):
    """Four 16-bit ids fill the key: the chunk split falls back to a stable sort on the chunk."""
    tokens, offsets = concat(samples)
    assert not counting.tag_fits(4, 16, 64)
    out = counting.count_by_chunk(tokens, offsets, (3, 4), 16, 64)
    for n in (3, 4):
        assert _chunked_as_counter(out[n], n, 64) == oracle(samples, n)


@settings(max_examples=100, deadline=None)
@given(base=st.dictionaries(st.integers(0, 50), st.integers(1, 9)),
       extra=st.dictionaries(st.integers(0, 50), st.integers(1, 9)))
def test_add_sorted_sums_and_inserts(base, extra):
    def counts(d):
        keys = sorted(d)
        return counting.Counts(np.array(keys, dtype=np.uint64), np.array([d[k] for k in keys], dtype=np.uint64))

    got = counting.add_sorted(counts(base), counts(extra))
    assert got.keys.tolist() == sorted(set(base) | set(extra))
    assert dict(zip(got.keys.tolist(), got.counts.tolist())) == dict(Counter(base) + Counter(extra))


@settings(max_examples=100, deadline=None)
@given(keys=st.lists(st.integers(0, 2**64 - 1), max_size=50), n=st.integers(1, 4))
def test_unpack_keys_lane_view_equals_the_shift_and_mask(keys, n):
    """16-bit ids read as the key's lanes (the fast path) equal the generic unpacking,
    whatever sits in the bits above the n ids."""
    arr = np.array(keys, dtype=np.uint64)
    fast = counting.unpack_keys(arr, n, 16, np.uint16)
    slow = counting.unpack_keys(arr, n, 16, np.uint32)
    assert [f.dtype for f in fast] == [np.uint16] * n
    assert all(np.array_equal(f, s) for f, s in zip(fast, slow))


@settings(max_examples=200, deadline=None)
@given(samples=st.one_of(samples_st, small_vocab_samples_st), k=st.sampled_from([1, 3, 64]),
       engine=st.sampled_from(counting.COUNT_ENGINES))
def test_derived_counts_are_the_prefix_sums_plus_the_tails(samples, k, engine):
    """What the aggregate relies on for a derived n: per chunk, count(n) = count(n+1) summed
    over the last id + the samples' last n-grams (the tails, all the explode writes for n)."""
    tokens, offsets = concat(samples)
    out = counting.count_by_chunk(tokens, offsets, (1, 2, 3), 16, k, engine=engine, tails_only=(1, 2))
    full = counting.count_by_chunk(tokens, offsets, (1, 2, 3), 16, k, engine=engine)
    for n in (1, 2):
        tails = Counter(tuple(s[-n:]) for s in samples if len(s) >= n)
        assert _chunked_as_counter(out[n], n, k) == tails
        for chunk in range(k):
            above = full[n + 1].chunk(chunk)
            summed = Counter()
            for g, c in as_counter(above, n + 1, 16).items():
                summed[g[:n]] += c
            mine = as_counter(out[n].chunk(chunk), n, 16)
            assert set(mine) <= {g for g in tails if g[0] % k == chunk}  # the tails stay in their chunk
            want = Counter({g: c for g, c in oracle(samples, n).items() if g[0] % k == chunk})
            assert summed + mine == want
    assert _chunked_as_counter(out[3], 3, k) == oracle(samples, 3)  # the top n is counted in full


@settings(max_examples=50, deadline=None)
@given(samples=samples_st)
def test_tail_counts_without_room_for_the_tag(samples):
    tokens, offsets = concat(samples)
    k = 1 << 16  # 3 x 16-bit ids and a 16-bit chunk number: no sentinel left, the fallback runs
    assert not counting.tag_fits(3, 16, k)
    got = counting.tail_counts(tokens, offsets, 3, 16, k)
    assert as_counter(counting.Counts(got.keys, got.counts), 3, 16) == \
        Counter(tuple(s[-3:]) for s in samples if len(s) >= 3)
    rows = np.arange(len(got.keys))
    chunk_of_row = np.searchsorted(got.bounds, rows, side="right") - 1  # where bounds put each row
    assert np.array_equal(chunk_of_row, counting.first_ids(got.keys, 3, 16) % k)
