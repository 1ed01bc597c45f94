"""Part files independent of K, and chunks aggregated in key ranges, against a brute-force oracle.

The explode writes one data and index file per (unit, n) whatever K is; the aggregate
reads a chunk's blocks with ranged reads and, under a memory budget, sums a chunk in key
ranges. Every count is checked against ``helpers.oracle`` on data made here, for
K = 1, 5, 64, 16- and 32-bit ids, every n, and 1, 2 and 7 ranges per chunk.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ngram_dask.inputs import group_pieces, plan_input
from ngram_dask.ngrams import aggregate, counting, partfile
from ngram_dask.ngrams.aggregate import AggregateSettings, aggregate_chunk
from ngram_dask.ngrams.explode import ExplodeSettings, explode_group

from helpers import oracle, oracle_prefixes, write_mds

# ----------------------------------------------------------------------------- the pure parts


def test_key_ranges_are_aligned_ascending_and_even():
    rng = np.random.default_rng(0)
    keys = np.sort(rng.integers(0, 1 << 40, 5000, dtype=np.uint64))
    rows = rng.integers(1, 100, len(keys))
    for want in (1, 2, 7, 50):
        bounds = counting.key_ranges(keys, rows, want, align=8)
        assert len(bounds) == want - 1
        assert bounds == sorted(set(bounds)) and all(b % 256 == 0 and b > 0 for b in bounds)
        # Rows per range (each block's rows at its first key, as the planner counts them): even.
        per = np.bincount(np.searchsorted(np.array(bounds, np.uint64), keys >> 8 << 8, side="right"),
                          weights=rows, minlength=want)
        assert per.max() <= rows.sum() / want + rows.max() + 1


def test_key_ranges_never_split_an_aligned_prefix():
    keys = np.array([5 << 16 | j for j in range(100)], np.uint64)  # one prefix: cannot be cut
    assert counting.key_ranges(keys, np.ones(100, int), 7, align=16) == []
    assert counting.key_ranges(np.empty(0, np.uint64), np.empty(0, int), 7, align=0) == []


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(st.tuples(st.integers(0, 4), st.integers(0, 4), st.integers(1, 5)), min_size=1, max_size=60),
       cuts=st.lists(st.integers(1, 60), max_size=4))
def test_prefix_rows_merged_across_cuts_equal_one_pass(rows, cuts):
    """Prefix rows of consecutive key ranges, joined by merge_prefix_runs, are those of the whole."""
    counts = Counter()
    for a, b, c in rows:
        counts[(a, b)] += c
    grams = sorted(counts)
    keys = counting.pack_columns([np.array([g[0] for g in grams], np.uint16), np.array([g[1] for g in grams],
                                                                                       np.uint16)], 3)
    sums = np.array([counts[g] for g in grams], np.uint64)
    whole = aggregate.prefix_rows(2, keys, sums, 3)[:4]
    held, parts = None, []
    for lo, hi in zip([0] + sorted(set(cuts)), sorted(set(cuts)) + [None]):
        k, c = keys[lo:hi], sums[lo:hi]
        if not len(k):
            continue
        held, ready = aggregate.merge_prefix_runs(held, aggregate.prefix_rows(2, k, c, 3)[:4])
        parts.append(ready)
    if held is not None:
        parts.append(held)
    joined = [np.concatenate([p[i] for p in parts]) for i in range(4)]
    for got, want in zip(joined, whole):
        assert got.tolist() == want.tolist()


def test_part_file_round_trip_reads_each_chunk_alone(tmp_path):
    """A part file's blocks, chunk by chunk and key range by key range: exactly the rows written."""
    rng = np.random.default_rng(3)
    n, bits, chunks = 2, 9, 5
    keys = np.unique(rng.integers(0, 1 << 18, 3000).astype(np.uint64))
    tags = (keys >> np.uint64(bits)) % np.uint64(chunks)
    pieces, expected = [], {}
    for c in range(chunks):
        k = keys[tags == c]
        if c == 2:
            continue  # an empty chunk: no block
        cols = counting.unpack_keys(k, n, bits, np.uint16)
        table = pa.table({"id0": cols[0], "id1": cols[1], "count": np.arange(len(k), dtype=np.uint32) + 1})
        pieces.append((c, table, k))
        expected[c] = table
    wrote = partfile.write_part(str(tmp_path), "u0", chunks, bits, iter(pieces), block_rows=37, mark_rows=10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part-u0.data", "part-u0.index"]
    assert wrote["rows"] == len(keys) - int((tags == 2).sum())
    for c in range(chunks):
        blocks = partfile.chunk_blocks(partfile.index_url(str(tmp_path), "u0"), c)
        if c == 2:
            assert len(blocks) == 0
            continue
        assert blocks.bits == bits and len(blocks) == math.ceil(expected[c].num_rows / 37)
        # A mark every 10 rows of the chunk: its key there and the rows up to the next one.
        k = keys[tags == c]
        assert blocks.mark_keys.tolist() == k[::10].tolist()
        assert blocks.mark_rows.tolist() == [min(10, len(k) - i) for i in range(0, len(k), 10)]
        got = pa.concat_tables(partfile.read_blocks(blocks, slice(None), ["id0", "id1", "count"]))
        assert got.equals(expected[c])
        # Every other block alone: the ranged reads of non-adjacent blocks.
        some = list(partfile.read_blocks(blocks, np.arange(len(blocks)) % 2 == 0, ["count"]))
        assert sum(t.num_rows for t in some) == sum(int(r) for r in blocks.rows[::2])


# ----------------------------------------------------------------------------- explode + aggregate


def _corpus(seed: int, vocab: int, count: int = 80):
    rng = np.random.default_rng(seed)
    # Few distinct ids at the start of n-grams (heavy prefixes) and a long tail after them.
    samples = [np.minimum(rng.zipf(1.4, size=int(rng.integers(0, 120))), vocab) - 1 for _ in range(count)]
    samples = [s.tolist() for s in samples] + [[0, 0, 0, 0], [vocab - 1], [vocab - 1, 0], [1, 2]]
    return samples


@pytest.fixture(scope="module", params=[("uint16", 60000), ("uint32", 1 << 20)], ids=["uint16", "uint32"])
def corpus(request, tmp_path_factory):
    dtype, vocab = request.param
    tmp = tmp_path_factory.mktemp(f"ranges-{dtype}")
    samples = _corpus(7, vocab)
    mds = write_mds(tmp / "mds", samples, dtype="<u2" if dtype == "uint16" else "<u4", size_limit=1500)
    return tmp, samples, mds, dtype, vocab


def _explode(tmp: Path, mds: Path, dtype: str, vocab: int, ns, chunks: int) -> tuple[str, tuple]:
    work = tmp / f"work-{chunks}-{'-'.join(map(str, ns))}"
    derived = counting.derived_in_aggregate(ns, drop_eos=False)
    xs = ExplodeSettings(work_dir=str(work), ngrams=tuple(ns), chunks=chunks, vocab_size=vocab,
                         token_dtype=dtype, derived=derived, block_rows=8, mark_rows=4, unit_tokens=2000)
    pieces = plan_input(str(mds), token_dtype=dtype).pieces
    groups = group_pieces(pieces, xs.unit_tokens)
    assert len(groups) >= 2
    for group in groups:
        explode_group(group, xs)
    return str(work), derived


_ORACLE: dict = {}


def _oracle(samples, n: int) -> Counter:
    key = (id(samples), n)
    if key not in _ORACLE:
        _ORACLE[key] = oracle(samples, n)
    return _ORACLE[key]


def _check_chunk(results, samples, chunks: int, chunk: int):
    for res in results:
        n = res["n"]
        want = {g: c for g, c in _oracle(samples, n).items() if g[0] % chunks == chunk}
        rows = pq.read_table(res["files"]["ngrams"]).to_pylist() if want else []
        got = [tuple(r.values()) for r in rows]
        assert [g[:-1] for g in got] == sorted(want), (n, chunk)
        assert {g[:-1]: g[-1] for g in got} == want, (n, chunk)
        assert res["rows"] == len(want)
        if n >= 2 and want:
            prefixes = [tuple(r.values()) for r in pq.read_table(res["files"]["prefixes"]).to_pylist()]
            want_p = oracle_prefixes(Counter(want))
            assert [p[: n - 1] for p in prefixes] == sorted(want_p), (n, chunk)
            assert {p[: n - 1]: p[n - 1:] for p in prefixes} == want_p, (n, chunk)
            assert res["prefix_rows"] == len(want_p)


@pytest.mark.parametrize("ns", [(1, 2, 3), (2, 3), (3,)], ids=lambda ns: "n" + "".join(map(str, ns)))
@pytest.mark.parametrize("chunks", [1, 5, 64])
def test_files_do_not_follow_k_and_ranges_are_exact(corpus, ns, chunks):
    """Files per (unit, n) whatever K; each chunk cut into 1, 2 and 7 key ranges gives the
    oracle's rows, as the DuckDB fallback does, reading each block once."""
    tmp, samples, mds, dtype, vocab = corpus
    work, derived = _explode(tmp, mds, dtype, vocab, ns, chunks)
    units = len(list(Path(work, "explode", "_done").glob("*.json")))
    for n in ns:
        assert len(list(Path(work, "explode", f"n={n}").iterdir())) == 2 * units  # data + index per unit
    top = max(ns)
    seen_ranges = set()
    for chunk in range(chunks):
        sources = {m: aggregate.chunk_sources(work, m, chunk) for m in [top] + [m for m in derived]}
        rows = sum(int(b.rows.sum()) for bl in sources.values() for b in bl)
        variants = ((1, "numpy"), (2, "numpy"), (7, "numpy"), (1, "duckdb"))
        for want_ranges, method in variants if chunk < 5 else variants[:1]:
            for p in Path(work, "aggregate").glob("**/*"):
                if p.is_file():
                    p.unlink()
            budget = max(1, math.ceil(rows * (aggregate.NUMPY_BYTES_PER_ROW + 2 * top) / want_ranges))
            s = AggregateSettings(work_dir=work, method=method, numpy_budget_bytes=budget, derived=derived)
            top_res = aggregate_chunk(top, chunk, s)
            results = aggregate.chunk_results(top_res)
            assert [r["n"] for r in results] == s.chain(top)
            _check_chunk(results, samples, chunks, chunk)
            if rows and method == "numpy":
                assert 1 <= top_res["ranges"] <= want_ranges
                # Each block is read once, however many ranges (the ranges are cut from a spill).
                assert top_res["blocks_read"] == sum(len(b) for bl in sources.values() for b in bl)
                seen_ranges.add((want_ranges, top_res["ranges"]))
    if chunks == 1 and ns != (1, 2, 3):
        # Enough distinct prefixes in one chunk: the planner cuts as many ranges as asked. (With
        # unigrams derived, bounds fall between first ids only, and a few heavy ones hold most rows.)
        assert {(2, 2), (7, 7)} <= seen_ranges, seen_ranges
    if chunks == 1:
        assert {r for w, r in seen_ranges if w == 7} - {1}, seen_ranges
