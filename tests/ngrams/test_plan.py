"""`ngram-dask build --plan`: every input format, nothing written, bad arguments as one line.

The sample here is the whole (small) corpus, so the fitted growth must give back the
corpus's own distinct n-grams, counted by the oracle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers_formats import cut, write_bin, write_megatron, write_npy, write_parquet

from ngram_dask.config import load_config
from ngram_dask.ngrams.plan import Heaps, aggregate_unit_seconds, explode_unit_seconds, makespan, plan_build, rates

from helpers import oracle, run_cli, write_mds

SEQ = 256


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("plan-inputs")
    rng = np.random.default_rng(4)
    stream = np.minimum(rng.zipf(1.3, 40 * SEQ), 60000).astype(np.int64).tolist()
    samples = cut(stream, SEQ)
    paths = {
        "mds": write_mds(tmp / "mds", samples, size_limit=1 << 13),
        "megatron": write_megatron(tmp / "meg", [[s] for s in samples]).with_suffix(".bin"),
        "bin": write_bin(tmp / "flat.bin", stream),
        "npy": write_npy(tmp / "flat.npy", stream),
        "parquet": write_parquet(tmp / "rows.parquet", samples, row_group_size=7),
    }
    return tmp, samples, paths


@pytest.mark.parametrize("fmt", ["mds", "megatron", "bin", "npy", "parquet"])
def test_plan_on_every_input_format_predicts_the_corpus_and_writes_nothing(inputs, fmt, tmp_path):
    _, samples, paths = inputs
    before = sorted(p for p in Path(paths[fmt]).parent.rglob("*"))
    r = run_cli("build", "--plan", "--input", str(paths[fmt]), "--vocab-size", "65536", "--seq-len", str(SEQ),
                "--n-workers", "3", "--memory-limit", "2GiB", "--chunks", "8", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert out.startswith(f"plan (predicted, nothing built): {fmt} input"), out
    for word in ("explode:", "K = 8 chunk(s)", "n=2:", "n=3:", "aggregate n=3+2:", "scratch", "catalog", "time:"):
        assert word in out, (word, out)
    assert "3 worker(s) x 1 thread(s), 2.00 GiB each" in out
    assert sorted(p for p in Path(paths[fmt]).parent.rglob("*")) == before and not any(tmp_path.iterdir())
    cfg = load_config(None, {"input": str(paths[fmt]), "vocab_size": 65536, "build.seq_len": SEQ,
                             "cluster.n_workers": 3, "cluster.memory_limit": "2GiB", "build.chunks": 8})
    plan = plan_build(cfg)
    tokens = sum(len(s) for s in samples)
    assert plan["input"]["sampled_tokens"] == tokens  # the sample is all of it
    for n in (2, 3):
        want = len(oracle(samples, n))
        assert plan["ngrams"][n]["final_rows"] == pytest.approx(want, rel=0.1), n
        assert plan["ngrams"][n]["prefix_rows"] == pytest.approx(len(oracle(samples, n - 1)), rel=0.1), n
    # The bigrams are derived from the trigrams: their partial rows are the samples' last bigrams
    # (an MDS piece's tokens are an upper bound from its bytes: a few percent over).
    assert plan["ngrams"][2]["partial_rows"] == pytest.approx(len(samples), rel=0.1)
    assert plan["aggregate"][3]["ranges"] == 1 and plan["aggregate"][3]["path"] == "numpy"


def test_plan_cuts_into_ranges_under_a_small_budget(inputs):
    _, samples, paths = inputs
    cfg = load_config(None, {"input": str(paths["mds"]), "vocab_size": 65536, "cluster.n_workers": 1,
                             "cluster.memory_limit": "1GiB", "build.chunks": 2, "build.aggregate_budget_bytes": 50_000})
    a = plan_build(cfg)["aggregate"][3]
    assert a["ranges"] == -(-int(a["largest_chunk_bytes"]) // 50_000) > 1 and a["chunks_for_one_range"] > 2
    assert a["memory_bytes"] <= a["largest_chunk_bytes"] <= 2 * a["memory_bytes"]  # K = 2: at most all of it


def test_plan_tokens_predicts_a_larger_corpus_like_the_input(inputs):
    _, _, paths = inputs
    over = {"input": str(paths["bin"]), "vocab_size": 65536, "build.seq_len": SEQ, "cluster.n_workers": 64,
            "cluster.memory_limit": "8GiB"}
    small = plan_build(load_config(None, over))
    big = plan_build(load_config(None, {**over, "build.plan_tokens": 207e9}))
    assert big["input"]["tokens"] == 207_000_000_000
    assert big["input"]["sampled_tokens"] == small["input"]["sampled_tokens"]
    assert big["explode"]["units"] == -(-207_000_000_000 // big["explode"]["unit_tokens"])
    h = small["ngrams"][3]["heaps"]
    assert big["ngrams"][3]["final_rows"] == pytest.approx(min(207e9, h["a"] * 207e9 ** h["b"]))
    assert big["seconds"]["explode"] > small["seconds"]["explode"]


def test_heaps_fit_recovers_a_power_law_and_caps_at_the_tokens():
    pts = [(t, int(3 * t ** 0.7)) for t in (1000, 2000, 4000, 8000)]
    h = Heaps.fit(pts)
    assert h.b == pytest.approx(0.7, abs=0.01) and h(16000) == pytest.approx(3 * 16000 ** 0.7, rel=0.02)
    assert Heaps.fit([(10, 10), (20, 20)])(1e6) <= 1e6
    t = Heaps.tangent(pts)
    assert t.b == pytest.approx(0.7, abs=0.01) and t(16000) == pytest.approx(3 * 16000 ** 0.7, rel=0.02)
    # Growth that slows (concave in log-log): the tangent at the last size, below least squares.
    slowing = [(1000, 800), (2000, 1500), (4000, 2600), (8000, 4200)]
    t, f = Heaps.tangent(slowing), Heaps.fit(slowing)
    assert t(8000) == pytest.approx(4200) and t.b == pytest.approx(np.log2(4200 / 2600))
    assert t(1e6) < f(1e6)


@pytest.mark.parametrize("args,match", [
    (["--memory-limit", "lots"], "memory_limit"),
    (["--plan-sample-tokens", "10"], "build.plan_sample_tokens must be >= 1000"),
    (["--plan-sample-pieces", "0"], "build.plan_sample_pieces must be >= 1"),
    (["--plan-unit-sample-tokens", "5"], "build.plan_unit_sample_tokens must be >= 1000"),
    (["--n-workers", "0"], "cluster.n_workers must be >= 1"),
    (["--plan-tokens", "0"], "build.plan_tokens must be >= 1"),
    (["--plan-client-cores", "0"], "build.plan_client_cores must be >= 1"),
    (["--scheduler", "tcp://127.0.0.1:1"], "--plan needs the workers' memory"),
    (["--input", "/nonexistent/corpus"], "/nonexistent/corpus"),
    (["--no-input"], "'input' is required"),
])
def test_bad_plan_arguments_are_one_line_exit_2(inputs, tmp_path, args, match):
    _, _, paths = inputs
    base = ["build", "--plan", "--vocab-size", "65536"]
    if "--input" not in args and "--no-input" not in args:
        base += ["--input", str(paths["mds"])]
    r = run_cli(*base, *[a for a in args if a != "--no-input"], cwd=tmp_path)
    assert r.returncode == 2, (r.stdout, r.stderr)
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and match in err[0] and "Traceback" not in r.stderr, r.stderr
    assert not any(tmp_path.iterdir())


def test_a_units_partial_rows_come_from_consecutive_text(tmp_path):
    """Text that sits together repeats itself: here 8 regions, each one sample repeated, so an
    explode unit of one region holds one sample's trigrams, while pieces spread over the
    input grow like the whole corpus. The unit's prediction follows the consecutive sample."""
    rng = np.random.default_rng(8)
    per_region = 96
    samples = []
    for r in range(8):
        one = rng.integers(r * 5000, r * 5000 + 4000, SEQ).tolist()
        samples += [one] * per_region
    one_region = len(oracle(samples[:per_region], 3))  # the trigrams of one sample
    path = write_mds(tmp_path / "mds", samples, size_limit=1 << 13)
    cfg = load_config(None, {"input": str(path), "vocab_size": 65536, "cluster.n_workers": 1,
                             "cluster.memory_limit": "1GiB", "build.chunks": 4,
                             "build.explode_unit_tokens": per_region * SEQ, "build.plan_sample_pieces": 8})
    plan = plan_build(cfg)
    v = plan["ngrams"][3]
    # The consecutive sample holds one region, or the end of one and the start of the next.
    assert one_region <= v["partial_rows_per_unit"] <= 2.5 * one_region, (v["partial_rows_per_unit"], one_region)
    # The spread sample sees several regions (the corpus holds 8 regions' trigrams): its fit
    # at a unit's tokens, the one model there was, would predict several regions' worth.
    h = v["heaps"]
    assert h["a"] * (per_region * SEQ) ** h["b"] > 3 * one_region, (h, one_region)
    assert v["final_rows"] >= 4 * one_region, v
    assert 0 < plan["input"]["unit_sampled_tokens"] <= per_region * SEQ


def test_the_largest_chunk_decides_the_ranges(tmp_path):
    """Chunks are id0 % K: with every id even and K = 2, chunk 0 holds every n-gram, twice
    the mean chunk, and its ranges are planned for that."""
    rng = np.random.default_rng(3)
    samples = [(2 * rng.integers(0, 3000, SEQ)).tolist() for _ in range(60)]
    path = write_mds(tmp_path / "mds", samples, size_limit=1 << 13)
    cfg = load_config(None, {"input": str(path), "vocab_size": 65536, "cluster.n_workers": 1,
                             "cluster.memory_limit": "1GiB", "build.chunks": 2,
                             "build.aggregate_budget_bytes": 100_000})
    plan = plan_build(cfg)
    a = plan["aggregate"][3]
    assert a["largest_chunk_bytes"] == pytest.approx(2 * a["memory_bytes"])
    assert a["ranges"] == -(-int(a["largest_chunk_bytes"]) // 100_000) > -(-int(a["memory_bytes"]) // 100_000)
    assert plan["peak_worker_bytes"] > 320 << 20


def test_makespan_hands_each_unit_to_the_first_free_core():
    assert makespan([], 4) == 0.0
    assert makespan([3.0, 1.0, 1.0, 1.0], 2) == 3.0  # the long unit on one core, three short on the other
    assert makespan([1.0] * 7, 2) == 4.0  # the last wave's tail: 4 waves, not 3.5
    assert makespan([2.0, 2.0], 64) == 2.0  # no more cores than units


def test_the_time_model_follows_unit_and_range_sizes():
    r = rates()
    # A sort's cost per key grows with its size: small units cost less per token.
    assert r["explode_unit_seconds"]["exponent"] > 1
    assert explode_unit_seconds(8e6, r) * 10 < explode_unit_seconds(8e7, r)
    # A chunk unit costs more with more explode units to read, and per row in larger ranges.
    assert aggregate_unit_seconds(2e6, 1, 120, r) > aggregate_unit_seconds(2e6, 1, 14, r)
    assert aggregate_unit_seconds(2e7, 1, 14, r) > aggregate_unit_seconds(2e7, 10, 14, r)


def test_the_plans_times_follow_its_cluster(inputs):
    _, _, paths = inputs
    over = {"input": str(paths["bin"]), "vocab_size": 65536, "build.seq_len": SEQ, "cluster.n_workers": 64,
            "cluster.memory_limit": "8GiB", "build.plan_tokens": 207e9}
    one_box = plan_build(load_config(None, over))
    wide = plan_build(load_config(None, {**over, "cluster.n_workers": 1024}))
    # The explode spreads over the workers; the load runs on one client, whose cores are its box's.
    assert wide["seconds"]["explode"] < one_box["seconds"]["explode"] / 8
    assert wide["seconds"]["load"] == pytest.approx(one_box["seconds"]["load"] / 16)
    pinned = plan_build(load_config(None, {**over, "cluster.n_workers": 1024, "build.plan_client_cores": 64}))
    assert pinned["seconds"]["load"] == pytest.approx(one_box["seconds"]["load"])
    assert pinned["seconds"]["explode"] == pytest.approx(wide["seconds"]["explode"])
