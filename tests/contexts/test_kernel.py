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


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("n", [2, 3])
def test_find_is_every_occurrence(seed, n):
    rng = np.random.default_rng(seed)
    vocab = 12
    # short samples (length 0, 1, 2 too): prompts at a sample's first and last positions,
    # n-grams that would straddle two samples
    samples = [rng.integers(0, vocab, int(rng.integers(0, 30))).tolist() for _ in range(25)]
    tokens, offsets = concat(samples)
    p = random_prompts(rng, n, vocab, 20)
    ptuples = [tuple(int(c[i]) for c in p.ids) for i in range(len(p))]
    for exclude in (None, 0):
        occ = kernel.find(tokens, offsets, p, vocab, exclude)
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
    files, samples, offs = rng.integers(0, 1 << 20, 50), rng.integers(0, 1 << 30, 50), rng.integers(0, 1 << 16, 50)
    got = kernel.priorities(kernel.sample_hashes(7, 3, files, samples), offs)
    want = [kernel.priority_int(7, 3, int(f), int(s), int(o)) for f, s, o in zip(files, samples, offs)]
    assert [int(x) for x in got] == want
    assert kernel.splitmix64_int(0) == 0xE220A8397B1DCDAF  # splitmix64's first output for state 0


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


@pytest.mark.parametrize("n", [2, 3])
def test_scan_keeps_min_k_count_of_the_oracles_occurrences(n):
    rng = np.random.default_rng(n)
    vocab, k, before, after = 10, 4, 3, 2
    samples = [rng.integers(0, vocab, int(rng.integers(1, 60))).tolist() for _ in range(40)]
    tokens, offsets = concat(samples)
    files = np.repeat([3, 4], [20, 20])
    in_file = np.r_[np.arange(20), np.arange(20)]
    p = random_prompts(rng, n, vocab, 15)
    f = kernel.scan(tokens, offsets, files, in_file, p, vocab, k, seed=11, before=before, after=after)
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
