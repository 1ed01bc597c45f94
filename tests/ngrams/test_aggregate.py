"""The aggregate stage's two engines against a brute-force oracle.

The numpy sorted-merge path and the DuckDB out-of-core path must write the same
rows, and the automatic choice between them must follow the memory budget.
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ngram_dask.inputs import plan_input
from ngram_dask.ngrams import aggregate, counting
from ngram_dask.ngrams.aggregate import AggregateSettings, aggregate_chunk, marker_url
from ngram_dask.ngrams.explode import ExplodeSettings, explode_piece

from helpers import oracle, oracle_prefixes, write_mds

CHUNKS = 3


def _samples(seed: int, count: int = 60, vocab: int = 7):
    rng = np.random.default_rng(seed)
    # Small vocabularies make ties and repeated n-grams common; a few empty/short samples.
    return [rng.integers(0, vocab, size=int(rng.integers(0, 50))).tolist() for _ in range(count)]


@pytest.fixture(scope="module")
def exploded(tmp_path_factory):
    """A real MDS dataset of several shards, exploded into partial Parquet counts."""
    tmp = tmp_path_factory.mktemp("agg")
    samples = _samples(1) + [[5, 5, 5, 5, 5, 5], [0], [1, 2]]
    mds = write_mds(tmp / "mds", samples, size_limit=1200)  # small shards: several partials per chunk
    shards = plan_input(str(mds)).pieces
    assert 3 <= len(shards) <= 8, len(shards)
    xs = ExplodeSettings(work_dir=str(tmp / "work"), ngrams=(1, 2, 3), chunks=CHUNKS,
                         vocab_size=512, token_dtype="uint16")
    for ref in shards:
        explode_piece(ref, xs)
    return tmp, samples


def _read(url):
    return [tuple(r.values()) for r in pq.read_table(url).to_pylist()]


def _expected(samples, n, chunk):
    want = {g: c for g, c in oracle(samples, n).items() if g[0] % CHUNKS == chunk}
    return want


@pytest.mark.parametrize("method", ["numpy", "duckdb"])
@pytest.mark.parametrize("n", [1, 2, 3])
def test_both_paths_match_the_oracle(exploded, tmp_path, method, n):
    tmp, samples = exploded
    work = tmp / "work"
    for chunk in range(CHUNKS):
        s = AggregateSettings(work_dir=str(work), memory_limit_bytes=1 << 30, method=method)
        marker = marker_url(str(work), n, chunk)
        # Each parametrisation starts from a clean aggregate of this chunk.
        for p in (work / "aggregate").glob(f"n={n}/**/chunk={chunk}*"):
            p.unlink()
        res = aggregate_chunk(n, chunk, s)
        assert res["path"] == method and not res["skipped"]
        want = _expected(samples, n, chunk)
        rows = _read(res["files"]["ngrams"])
        assert [r[:-1] for r in rows] == sorted(want)  # sorted by the ids
        assert {r[:-1]: r[-1] for r in rows} == want
        assert res["rows"] == len(want)
        table = pq.read_table(res["files"]["ngrams"])
        assert table.column_names == [f"id{j}" for j in range(n)] + ["count"]
        assert str(table.schema.field("count").type) == "uint64"
        assert all(str(table.schema.field(f"id{j}").type) == "uint16" for j in range(n))
        if n >= 2:
            prefixes = pq.read_table(res["files"]["prefixes"])
            assert prefixes.column_names == [f"id{j}" for j in range(n)] + ["sum_count", "max_count", "frac_max"]
            got = {r[: n - 1]: r[n - 1:] for r in _read(res["files"]["prefixes"])}
            want_p = oracle_prefixes(Counter(want))
            assert got == {k: v for k, v in want_p.items()}
            assert res["prefix_rows"] == len(want_p)
            assert [r[: n - 1] for r in _read(res["files"]["prefixes"])] == sorted(want_p)
        assert json.loads(open(marker).read())["path"] == method


def test_auto_choice_follows_the_budget(exploded):
    """A budget the chunk fits: numpy in one range; half of it: two ranges; one byte (more
    than MAX_RANGES ranges): DuckDB. The same rows every time."""
    tmp, samples = exploded
    work = tmp / "work"
    chunk, n = 1, 3
    outcomes = {}
    for budget in (1, "half", 1 << 30):
        for p in (work / "aggregate").glob(f"n={n}/**/chunk={chunk}*"):
            p.unlink()
        if budget == "half":
            budget = outcomes[1][3] // 2 + 1
        res = aggregate_chunk(n, chunk, AggregateSettings(work_dir=str(work), numpy_budget_bytes=budget))
        assert res["estimated_bytes"] > 1 and res["budget_bytes"] == budget
        outcomes[budget] = (res["path"], _read(res["files"]["ngrams"]), _read(res["files"]["prefixes"]),
                            res["estimated_bytes"], res.get("ranges"))
    half = outcomes[1][3] // 2 + 1
    assert outcomes[1][0] == "duckdb" and outcomes[half][0] == "numpy" and outcomes[1 << 30][0] == "numpy"
    assert outcomes[half][4] == 2 and outcomes[1 << 30][4] == 1
    assert outcomes[1][1:3] == outcomes[half][1:3] == outcomes[1 << 30][1:3]
    assert {r[:-1]: r[-1] for r in outcomes[1][1]} == _expected(samples, n, chunk)


def test_unknown_method_is_refused(exploded):
    tmp, _ = exploded
    with pytest.raises(ValueError, match="method"):
        aggregate.choose_path(2, 0, AggregateSettings(work_dir=str(tmp / "work"), method="gpu"), None)


partials_st = st.lists(
    st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5), st.integers(0, 5), st.integers(1, 9)),
             max_size=30),
    min_size=1, max_size=5,
)


@settings(max_examples=80, deadline=None)
@given(parts=partials_st)
def test_merge_partials_and_prefix_rows_match_the_oracle(parts):
    """Sorted partial files with overlapping keys merge to the summed counts."""
    want = Counter()
    ids_cols, counts = [[], [], []], []
    for part in parts:
        local = Counter()
        for a, b, c, k in part:
            local[(a, b, c)] += k
        for gram in sorted(local):  # each partial is sorted and distinct, as explode writes it
            for j in range(3):
                ids_cols[j].append(gram[j])
            counts.append(local[gram])
        want.update(local)
    ids = [np.array(col, dtype=np.uint16) for col in ids_cols]
    keys, sums = aggregate.merge_partials(3, ids, np.array(counts, dtype=np.uint32), 3)
    cols = counting.unpack_keys(keys, 3, 3)
    got = {tuple(int(c[i]) for c in cols): int(sums[i]) for i in range(len(keys))}
    assert got == dict(want)
    assert np.all(keys[1:] > keys[:-1])  # integer comparison: float64 cannot tell keys apart above 2**53
    if len(keys):
        heads, last, psum, pmax, frac = aggregate.prefix_rows(3, keys, sums, 3)
        hcols = counting.unpack_keys(heads, 2, 3)
        got_p = {(int(hcols[0][i]), int(hcols[1][i])): (int(last[i]), int(psum[i]), int(pmax[i]), float(frac[i]))
                 for i in range(len(heads))}
        assert got_p == oracle_prefixes(want)


@pytest.fixture(scope="module")
def exploded_derived(tmp_path_factory):
    """The same kind of dataset exploded as a build does: n = 1 and 2 as tails only.

    Samples of exactly 1 or 2 tokens have tails but no (n+1)-gram, so some chunks hold
    tails of a derived n and nothing of the n above it.
    """
    tmp = tmp_path_factory.mktemp("agg-derived")
    samples = _samples(2) + [[5, 5, 5, 5, 5, 5], [0], [1, 2], [4], [4, 1], [7, 7]]
    mds = write_mds(tmp / "mds", samples, size_limit=1200)
    ns = (1, 2, 3)
    derived = counting.derived_in_aggregate(ns, drop_eos=False)
    assert derived == (1, 2)
    xs = ExplodeSettings(work_dir=str(tmp / "work"), ngrams=ns, chunks=CHUNKS, vocab_size=512,
                         token_dtype="uint16", derived=derived)
    for ref in plan_input(str(mds)).pieces:
        explode_piece(ref, xs)
    return tmp, samples, derived


@pytest.mark.parametrize("method", ["numpy", "duckdb"])
def test_derived_n_come_out_of_the_top_n_task_exact(exploded_derived, method):
    tmp, samples, derived = exploded_derived
    work = tmp / "work"
    s = AggregateSettings(work_dir=str(work), memory_limit_bytes=1 << 30, method=method, derived=derived)
    assert s.chain(3) == [3, 2, 1]
    for p in (work / "aggregate").glob("**/*"):
        if p.is_file():
            p.unlink()
    for chunk in range(CHUNKS):
        top = aggregate_chunk(3, chunk, s)
        results = aggregate.chunk_results(top)
        assert [r["n"] for r in results] == [3, 2, 1]
        for res in results:
            n = res["n"]
            want = _expected(samples, n, chunk)
            rows = _read(res["files"]["ngrams"]) if want else []
            assert {r[:-1]: r[-1] for r in rows} == want, (n, chunk)
            assert [r[:-1] for r in rows] == sorted(want)
            assert res["rows"] == len(want)
            if n >= 2 and want:
                got = {r[: n - 1]: r[n - 1:] for r in _read(res["files"]["prefixes"])}
                assert got == oracle_prefixes(Counter(want))
            assert json.loads(open(marker_url(str(work), n, chunk)).read())["rows"] == len(want)
        again = aggregate_chunk(3, chunk, s)  # resumed: the derived markers come back as they were
        assert again["skipped"]
        again_results = aggregate.chunk_results(again)
        assert [r["rows"] for r in again_results[1:]] == [r["rows"] for r in results[1:]]
        assert all(r["skipped"] for r in again_results)


def test_a_key_range_leaves_a_small_worker_under_dasks_pause():
    """Half of a 1 GiB worker plus its ~320 MiB baseline is over Dask's pause at 80%: a worker
    held 854 MiB after such a range, paused, and the build waited on it. The budget keeps a
    range within the share the explode's units keep to; large workers keep the fraction."""
    from ngram_dask.inputs import UNIT_MEMORY_SHARE, WORKER_BASELINE_BYTES
    from ngram_dask.ngrams.aggregate import worker_budget

    gib = 1 << 30
    assert worker_budget(gib, 0.5) == int(gib * UNIT_MEMORY_SHARE - WORKER_BASELINE_BYTES)
    assert worker_budget(gib, 0.5) + WORKER_BASELINE_BYTES < 0.8 * gib
    assert worker_budget(4 * gib, 0.5) == 2 * gib
    assert worker_budget(256 << 20, 0.5) == 32 << 20  # never below a floor
