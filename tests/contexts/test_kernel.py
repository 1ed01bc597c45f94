"""The contexts kernel against brute force: every occurrence, the counts, the choice."""

from __future__ import annotations

import numpy as np
import pytest

from ngram_dask.contexts import kernel
from ngram_dask.contexts.kernel import Prompts


def concat(samples):
    lengths = [len(s) for s in samples]
    offsets = np.zeros(len(samples) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tokens = np.concatenate([np.asarray(s, np.uint16) for s in samples]) if samples else np.zeros(0, np.uint16)
    return tokens, offsets


def oracle_occurrences(samples, prompts: set[tuple], n: int, exclude=None):
    """(prompt ids, sample index, offset) of every occurrence, by brute force."""
    out = []
    for si, s in enumerate(samples):
        s = [int(t) for t in s]
        for i in range(len(s) - n + 1):
            gram = tuple(s[i:i + n])
            if exclude is not None and exclude in gram:
                continue
            if gram[:-1] in prompts:
                out.append((gram[:-1], si, i, gram[-1]))
    return out


def random_prompts(rng, n, vocab, count, bits=16):
    ids = {tuple(int(x) for x in rng.integers(0, vocab, n - 1)) for _ in range(count)}
    cols = list(zip(*sorted(ids))) if ids else [[] for _ in range(n - 1)]
    return Prompts.make(n, cols, rng.integers(0, vocab, len(ids)), bits)


@pytest.mark.parametrize("bits", [16, 20])
@pytest.mark.parametrize("stretch", [kernel.STRETCH, 1, 5])
@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("n", [2, 3])
def test_find_is_every_occurrence(seed, n, stretch, bits):
    rng = np.random.default_rng(seed)
    vocab = 12
    # short samples (length 0, 1, 2 too): prompts at a sample's first and last positions,
    # n-grams that would straddle two samples
    samples = [rng.integers(0, vocab, int(rng.integers(0, 30))).tolist() for _ in range(25)]
    tokens, offsets = concat(samples)
    p = random_prompts(rng, n, vocab, 20, bits)
    ptuples = [tuple(int(c[i]) for c in p.ids) for i in range(len(p))]
    for exclude in (None, 0):  # (some prompts hold 0: their occurrences are all dropped)
        occ = kernel.find(tokens, offsets, p, vocab, exclude, stretch=stretch)
        got = sorted((ptuples[pr], int(s), int(pos - offsets[s]))
                     for pr, pos, s in zip(occ.prompt, occ.pos, occ.sample))
        want = sorted((pt, s, i) for pt, s, i, _ in oracle_occurrences(samples, set(ptuples), n, exclude))
        assert got == want


def test_prompt_at_the_edges_of_samples():
    # [5, 6] ends sample 0; sample 1 starts with 6; 5 is the last id of sample 2 (no next id)
    samples = [[1, 5, 6], [6, 5, 5], [7, 5]]
    tokens, offsets = concat(samples)
    p2 = Prompts.make(2, [[5]], [6], 16)
    occ = kernel.find(tokens, offsets, p2, 16)
    assert [(int(s), int(pos - offsets[s])) for pos, s in zip(occ.pos, occ.sample)] == [(0, 1), (1, 1)]
    p3 = Prompts.make(3, [[5], [6]], [1], 16)
    assert len(kernel.find(tokens, offsets, p3, 16).pos) == 0  # (5, 6) is followed by nothing in sample 0
    p3 = Prompts.make(3, [[6], [5]], [5], 16)
    occ = kernel.find(tokens, offsets, p3, 16)
    assert [(int(s), int(pos - offsets[s])) for pos, s in zip(occ.pos, occ.sample)] == [(1, 0)]


def test_priorities_match_the_reference():
    rng = np.random.default_rng(3)
    files, samples = rng.integers(0, 1 << 20, 60), rng.integers(0, 1 << 30, 60)
    # offsets past 2**32 too (a sample that long: its high bits are hashed into the word)
    offs = np.r_[rng.integers(0, 1 << 16, 50), rng.integers(1 << 32, 1 << 40, 10)]
    for some in (slice(0, 50), slice(0, 60)):
        got = kernel.priorities(kernel.sample_hashes(7, 3, files[some], samples[some]), offs[some])
        want = [kernel.priority_int(7, 3, int(f), int(s), int(o)) for f, s, o in zip(files[some], samples[some],
                                                                                       offs[some])]
        assert [int(x) for x in got] == want
    assert len(set(want)) == len(want)
    assert kernel.splitmix64_int(0) == 0xE220A8397B1DCDAF  # splitmix64's first output for state 0
    # murmur3's x86_32 of no bytes is fmix32(seed): its published values for seeds 1 and 2**32 - 1
    assert kernel.fmix32_int(1) == 0x514E28B7 and kernel.fmix32_int(0xFFFFFFFF) == 0x81F16F39


@pytest.mark.parametrize("k", [1, 3, 5, 40])
def test_smallest_per_group_is_exact(k):
    rng = np.random.default_rng(k)
    groups = 30
    sizes = rng.integers(0, 300, groups)
    sizes[:3] = [0, 1, 5000]
    group = np.repeat(np.arange(groups), sizes)
    rng.shuffle(group)
    prio = rng.integers(0, 1 << 63, len(group)).astype(np.uint64) * np.uint64(2)
    prio[:50] = prio[50]  # ties: broken by the tiebreak
    tiebreak = np.arange(len(group))
    got = kernel.smallest_per_group(group, prio, tiebreak, k, groups)
    want = []
    for g in range(groups):
        idx = np.flatnonzero(group == g)
        idx = sorted(idx, key=lambda i: (int(prio[i]), int(tiebreak[i])))[:k]
        want += idx
    assert list(got) == want


def test_unlucky_bound_falls_back_to_a_full_sort():
    group = np.zeros(1000, np.int64)
    prio = np.full(1000, np.iinfo(np.uint64).max - np.uint64(5), np.uint64)  # all above any bound
    prio[7] = 1
    got = kernel.smallest_per_group(group, prio, np.arange(1000), 5, 1)
    assert list(got) == [7, 0, 1, 2, 3]


@pytest.mark.parametrize("k", [1, 5])
def test_a_bound_with_k_minus_one_under_it_is_not_taken(k):
    """Exactly k - 1 rows under the bound (the rest just above it): the bound must stay, or the k-th is lost."""
    group = np.zeros(1000, np.int64)
    prio = np.full(1000, np.uint64(1) << np.uint64(62), np.uint64)  # above any bound for 1000 rows
    prio[10:10 + k - 1] = np.arange(1, k, dtype=np.uint64)
    prio[500] = prio[0] - np.uint64(1)  # the k-th smallest, still above the bound
    top = np.full(1, kernel.MAX64, np.uint64)
    kept = kernel.tighten(group, prio, top, k, 1)
    assert 500 in set(kept) and top[0] == kernel.MAX64
    got = kernel.smallest_per_group(group, prio, np.arange(1000), k, 1)
    assert list(got) == list(range(10, 10 + k - 1)) + [500]


@pytest.mark.parametrize("stretch, pool_rows, length", [
    (kernel.STRETCH, None, None), (1, 1, None), (7, 3, None), (50, 20, None), (50, 20, 32), (64, 20, 32),
    (7, 3, 24), (kernel.STRETCH, None, 1)])
@pytest.mark.parametrize("n", [2, 3])
def test_scan_keeps_min_k_count_of_the_oracles_occurrences(n, stretch, pool_rows, length):
    """Samples of many lengths, and of one (a power of two or not: priorities from a division;
    stretches that start a sample, or not: from bit operations)."""
    rng = np.random.default_rng(n)
    vocab, k, before, after = 10, 4, 3, 2
    samples = [rng.integers(0, vocab, length or int(rng.integers(1, 60))).tolist() for _ in range(40)]
    tokens, offsets = concat(samples)
    files = np.repeat([3, 4], [20, 20])
    in_file = np.r_[np.arange(20), np.arange(20)]
    p = random_prompts(rng, n, vocab, 15)
    f = kernel.scan(tokens, offsets, files, in_file, p, vocab, k, seed=11, before=before, after=after,
                    stretch=stretch, pool_rows=pool_rows)
    ptuples = [tuple(int(c[i]) for c in p.ids) for i in range(len(p))]
    occ = oracle_occurrences(samples, set(ptuples), n)
    # counts equal the oracle's
    want_counts = {pt: 0 for pt in ptuples}
    for pt, *_ in occ:
        want_counts[pt] += 1
    assert {ptuples[i]: int(c) for i, c in enumerate(f.counts)} == want_counts
    # the kept ones: min(k, count) per prompt, the k smallest priorities of the oracle's
    by_prompt: dict = {}
    for pt, s, i, nxt in occ:
        prio = kernel.priority_int(11, n, int(files[s]), int(in_file[s]), i)
        by_prompt.setdefault(pt, []).append((prio, s, i, nxt))
    for j in range(len(f.prompt)):
        pt = ptuples[f.prompt[j]]
        s = int(np.flatnonzero((files == f.file[j]) & (in_file == f.sample[j]))[0])
        i = int(f.offset[j])
        assert (int(f.priority[j]), s, i, int(f.actual[j])) in by_prompt[pt]
        window = f.window_ids[f.window_offsets[j]:f.window_offsets[j + 1]].tolist()
        lo = max(0, i - before)
        assert int(f.window_start[j]) == lo
        assert window == samples[s][lo:min(len(samples[s]), i + n + after)]
        assert window[i - lo:i - lo + n - 1] == list(pt)
    kept = {}
    for j in range(len(f.prompt)):
        kept.setdefault(ptuples[f.prompt[j]], []).append(int(f.priority[j]))
    for pt, items in by_prompt.items():
        assert kept.get(pt, []) == sorted(x[0] for x in items)[:k]
    assert set(kept) <= set(by_prompt)


@pytest.mark.parametrize("bits", [16, 20])
@pytest.mark.parametrize("levels", [1, 2, 4])
def test_a_pair_that_is_no_prompt_in_a_shared_slot_is_none(levels, bits):
    """Pairs that are no prompt but hash to a shared slot, and, past it, to a slot of the next
    level that names a prompt (or to the binary search): no occurrence, in find and in scan;
    the prompts sharing those slots are still found, each with its own count (brute force)."""
    rng = np.random.default_rng(levels * 7 + bits)
    vocab, count = 700, 3000
    a, b = np.meshgrid(np.arange(vocab, dtype=np.uint64), np.arange(vocab, dtype=np.uint64), indexing="ij")
    every = ((a << np.uint64(bits)) | b).ravel()
    # prompts two to a level-0 slot (the slots follow the prompts' number only): all of them share
    first = Prompts.make(3, [np.arange(count), np.arange(count)], np.zeros(count), bits, hash_levels=levels)
    mult, shift, _ = first.levels[0]
    slot = first.hash(every, mult, shift)
    order = np.argsort(slot, kind="stable")
    starts = np.flatnonzero(np.diff(slot[order]) == 0)  # order[i] and order[i + 1] share a slot
    starts = rng.permutation(starts[np.r_[True, np.diff(starts) > 1]])
    starts = starts[:count // 2]
    keys = np.unique(np.concatenate([every[order[starts]], every[order[starts + 1]]]))
    keys = np.unique(np.concatenate([keys, rng.choice(every, count - len(keys), replace=False)]))[:count]
    assert len(keys) == count
    mask = (1 << bits) - 1
    p = Prompts.make(3, [keys >> np.uint64(bits), keys & np.uint64(mask)], np.zeros(count), bits, hash_levels=levels)
    mult, shift, table = p.levels[0]
    strangers = every[(table[p.hash(every, mult, shift)] == -2) & ~np.isin(every, p.keys)]
    if levels > 1:  # past the shared slot, a slot of level 1 that names a prompt: the check must run again
        m1, s1, t1 = p.levels[1]
        strangers = strangers[t1[p.hash(strangers, m1, s1)] >= 0]
    assert len(strangers) > 20
    sharing = p.keys[table[p.hash(p.keys, mult, shift)] == -2]
    samples = [[int(x) for key in rng.choice(np.concatenate([strangers, sharing]), 60)
                for x in (int(key) >> bits, int(key) & mask)] for _ in range(30)]
    tokens, offsets = concat([np.asarray(s, np.uint32) for s in samples])
    ptuples = [tuple(int(c[i]) for c in p.ids) for i in range(len(p))]
    want = sorted((pt, si, i) for pt, si, i, _ in oracle_occurrences(samples, set(ptuples), 3))
    for stretch in (kernel.STRETCH, 7):
        occ = kernel.find(tokens, offsets, p, vocab, stretch=stretch)
        got = sorted((ptuples[pr], int(si), int(pos - offsets[si]))
                     for pr, pos, si in zip(occ.prompt, occ.pos, occ.sample))
        assert got == want
        f = kernel.scan(tokens, offsets, np.zeros(len(samples), np.int64), np.arange(len(samples)), p, vocab, 2,
                        seed=1, before=0, after=0, stretch=stretch)
        counts = np.zeros(len(p), np.int64)
        np.add.at(counts, [ptuples.index(pt) for pt, _, _ in want], 1)
        assert (f.counts == counts).all()


@pytest.mark.parametrize("n, levels, bits", [(2, 4, 16), (3, 4, 16), (3, 1, 16), (3, 4, 20), (3, 1, 20)])
def test_scan_at_high_density_with_shared_slots(n, levels, bits):
    """Prompts at most positions, hundreds of occurrences each: the pool's bound is lowered
    many times (small stretches and pool), and trigram prompts share hash slots (resolved by
    the next level's table, or with one level by the binary search); the kept examples are
    still exactly each prompt's k smallest (seen by brute force)."""
    rng = np.random.default_rng(40 + n)
    vocab, k = 9 if n == 2 else 700, 4
    # a few frequent ids, so every prompt below occurs often
    common = rng.choice(vocab, 6, replace=False)
    samples = [np.where(rng.random(L) < 0.9, rng.choice(common, L), rng.integers(0, vocab, L)).tolist()
               for L in rng.integers(1, 400, 120)]
    tokens, offsets = concat(samples)
    if n == 2:
        p = Prompts.make(2, [np.arange(vocab)], np.zeros(vocab), 16)
    else:  # every pair of common ids, plus thousands of rare pairs: some share a slot with a common one
        pairs = {(int(a), int(b)) for a in common for b in common}
        pairs |= {tuple(int(x) for x in rng.integers(0, vocab, 2)) for _ in range(3000)}
        cols = list(zip(*sorted(pairs)))
        p = Prompts.make(3, cols, np.zeros(len(pairs)), bits, hash_levels=levels)
        assert p.key_dtype == (np.uint32 if bits == 16 else np.uint64)  # both widths of packed keys
        assert (p.slots[1] == -2).any(), "no shared slot: use more prompts"
        assert len(p.levels) == 1 if levels == 1 else len(p.levels) > 1
    files, in_file = np.zeros(len(samples), np.int64), np.arange(len(samples)) * 3
    want: dict = {}
    ptuples = {tuple(int(c[i]) for c in p.ids): i for i in range(len(p))}
    for si, s in enumerate(samples):
        for i in range(len(s) - n + 1):
            j = ptuples.get(tuple(s[i:i + n - 1]))
            if j is not None:
                want.setdefault(j, []).append(kernel.priority_int(5, n, 0, si * 3, i))
    assert max(len(v) for v in want.values()) > 500
    if n == 3:  # prompts that occur sit in shared slots: the exact search behind a shared slot runs
        shift, table = p.slots
        assert (table[p.hash(p.keys[sorted(want)], p.levels[0][0], shift)] == -2).any()
    for stretch, pool_rows in ((kernel.STRETCH, None), (333, 100)):
        f = kernel.scan(tokens, offsets, files, in_file, p, vocab, k, seed=5, before=1, after=1,
                        stretch=stretch, pool_rows=pool_rows)
        assert {j: int(c) for j, c in enumerate(f.counts) if c} == {j: len(v) for j, v in want.items()}
        got: dict = {}
        for j, prio in zip(f.prompt, f.priority):
            got.setdefault(int(j), []).append(int(prio))
        assert got == {j: sorted(v)[:k] for j, v in want.items()}


def test_cutoffs_follow_the_formula():
    c = np.array([0, 1, 86, 87, 1000, 10**12])
    got = kernel.cutoffs(c, 5, 8.0)  # expects 5 + 8 sqrt(5) + 64 = 86.9 under each cutoff
    assert list(got[:3]) == [kernel.MAX64] * 3 and got[3] < kernel.MAX64  # 86 is too rare to cut, 87 is not
    assert abs(int(got[4]) / 2**64 - (5 + 8 * 5 ** 0.5 + 64) / 1000) < 1e-12
    assert 0 < int(got[5]) < int(got[4])
    assert (kernel.cutoffs(c, 5, 0.0)[c > 5] < kernel.MAX64).all()


@pytest.mark.parametrize("sigmas", [8.0, 1.0, 0.0])
@pytest.mark.parametrize("n", [2, 3])
def test_scan_under_cutoffs_keeps_the_k_smallest_under_them(n, sigmas):
    """With cutoffs from the prompts' true counts: at 8 sigmas the kept examples are exactly
    those of a scan without cutoffs; at any sigmas they are exactly the k smallest of the
    occurrences under the cutoff (brute force), counts unchanged, and a prompt comes out
    short (fewer than min(k, count)) only when fewer than that lie under its cutoff."""
    rng = np.random.default_rng(70 + n)
    vocab, k = 8, 3
    samples = [rng.integers(0, vocab, int(rng.integers(1, 300))).tolist() for _ in range(60)]
    tokens, offsets = concat(samples)
    files, in_file = np.zeros(len(samples), np.int64), np.arange(len(samples))
    p = Prompts.make(n, [np.arange(vocab)] if n == 2 else list(zip(*[(a, b) for a in range(vocab) for b in range(3)])),
                     np.zeros(vocab if n == 2 else 3 * vocab), 16)
    free = kernel.scan(tokens, offsets, files, in_file, p, vocab, k, seed=3, before=1, after=1, stretch=64, pool_rows=8)
    cut = kernel.cutoffs(free.counts, k, sigmas)
    assert (cut < kernel.MAX64).all() and free.counts.min() > 100
    pc = Prompts(p.n, p.ids, p.expected, p.bits, cutoff=cut)
    f = kernel.scan(tokens, offsets, files, in_file, pc, vocab, k, seed=3, before=1, after=1, stretch=64, pool_rows=8)
    assert (f.counts == free.counts).all()
    ptuples = {tuple(int(c[i]) for c in p.ids): i for i in range(len(p))}
    under: dict = {}
    for pt, si, i, _ in oracle_occurrences(samples, set(ptuples), n):
        prio = kernel.priority_int(3, n, 0, si, i)
        if prio <= int(cut[ptuples[pt]]):
            under.setdefault(ptuples[pt], []).append(prio)
    got: dict = {}
    for j, prio in zip(f.prompt, f.priority):
        got.setdefault(int(j), []).append(int(prio))
    assert got == {j: sorted(v)[:k] for j, v in under.items()}
    short = [j for j in range(len(p)) if len(got.get(j, [])) < min(k, int(f.counts[j]))]
    if sigmas == 8.0:
        assert not short and (f.priority == free.priority).all() and (f.prompt == free.prompt).all()
    if sigmas == 0.0:
        assert short, "no prompt fell short at 0 sigmas: the rescan path goes untested"


def test_real_tokens(neox_tokenizer_path):
    """Real text: every kept example's window decodes to text that holds its prompt."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(neox_tokenizer_path)
    text = ("def main():\n    return 0\n\nimport os, sys\n" * 30 + "the quick brown fox. " * 40).split("\n\n")
    samples = [tok(t, add_special_tokens=False)["input_ids"] + [0] for t in text]
    tokens, offsets = concat(samples)
    p2 = Prompts.make(2, [[tok("    ", add_special_tokens=False)["input_ids"][0]]], [0], 16)
    f = kernel.scan(tokens, offsets, np.zeros(len(samples), np.int64), np.arange(len(samples)), p2, 50432,
                    5, seed=0, before=4, after=2)
    occ = oracle_occurrences(samples, {(int(p2.ids[0][0]),)}, 2)
    assert int(f.counts[0]) == len(occ) > 5 and len(f.prompt) == 5
