"""scripts/bench_gpu.py without a GPU: the Pythia shapes and FLOP model, and a CPU dry run
of every section (ceiling, correctness, scan sweep, score sweep, second dtype, projections)."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from helpers import REPO

pytestmark = pytest.mark.timeout(300)

# Total parameters of the Pythia suite as published (Biderman et al. 2023, table 1).
PUBLISHED_PARAMS = {"70m": 70_426_624, "160m": 162_322_944, "410m": 405_334_016, "1b": 1_011_781_632,
                    "1.4b": 1_414_647_808, "2.8b": 2_775_208_960, "6.9b": 6_857_302_016, "12b": 11_846_072_320}


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", REPO / "scripts" / "bench_gpu.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_gpu"] = module
    spec.loader.exec_module(module)
    return module


def test_pythia_shapes_give_the_published_parameter_counts(bench):
    import torch

    assert set(bench.PYTHIA) == set(PUBLISHED_PARAMS)
    for name, shape in bench.PYTHIA.items():
        assert bench.params(shape) == PUBLISHED_PARAMS[name], name
        # the model the benchmark builds has exactly that many parameters (built on "meta": no memory)
        model = bench.build_model(shape, torch.device("meta"), "float16")
        assert sum(p.numel() for p in model.parameters()) == PUBLISHED_PARAMS[name], name
        assert model.config._attn_implementation == "sdpa"
        assert model.config.use_parallel_residual and not model.config.tie_word_embeddings


def test_flop_model_and_peak_table(bench):
    s = bench.PYTHIA["2.8b"]
    d, n, v = 2560, 32, 50304
    layer = n * (4 * d * d + 2 * d * 4 * d)
    # a scan position at L=4: one 5-token window, attention over 15 pairs, two output rows
    assert bench.scan_flops(s, 4) == pytest.approx(2 * layer * 5 + 4 * n * d * 15 + 2 * 2 * d * v)
    assert bench.score_flops(s, 2) == pytest.approx(2 * layer * 2 + 4 * n * d * 3 + 2 * d * v)
    assert 25e9 < bench.scan_flops(s, 4) < 26e9
    assert bench.peak_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert bench.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert bench.peak_tflops("NVIDIA H200") == 989.4
    assert bench.peak_tflops("NVIDIA RTX A6000") == 154.8
    assert bench.peak_tflops("cpu") is None


@pytest.mark.slow
def test_cpu_dry_run_covers_every_section(bench, tmp_path, capsys):
    out = tmp_path / "bench.json"
    # bfloat16 then float32: two dtypes (the second measured at the best batch) without
    # the CPU's slow fp16 matrix products; one tiny size, short measurements
    rc = bench.main(["--device", "cpu", "--tiny", "--threads", "1", "--dtypes", "bfloat16,float32",
                     "--sizes", "tiny-2x64", "--batch-sizes", "64,256", "--micro-batches", "256",
                     "--target-s", "0.05", "--budget-s", "120", "--json", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    res = json.loads(out.read_text())
    assert res["env"]["dtypes_usable"] == ["bfloat16", "float32"]
    assert set(res["ceiling"]) == {"bfloat16", "float32"}
    corr = res["correctness"]
    assert corr["positions"] > 300 and corr["kept_ref"] > 0
    for dtype in ("bfloat16", "float32"):
        c = corr["dtypes"][dtype]
        assert c["ok"], c
        labels = set(c["stats"])
        assert {"p (bigram)", "p (trigram)", "p_short", "p_long", "p_delta_max", "logit_excite_max",
                "logit_inhibit_max", "sym_kl", "js_divergence"} <= labels
    f32 = corr["dtypes"]["float32"]  # the same path in the same dtype: nothing may differ
    assert f32["candidates_identical"] and not f32["argmax_mismatches"]
    assert all(s["max_abs"] == 0 for s in f32["stats"].values())
    scan = [r for r in res["scan"] if "positions_per_s" in r]
    assert [(r["dtype"], r["micro_batch"]) for r in scan] == [("bfloat16", 256), ("float32", 256)]
    assert all(r["positions_per_s"] > 0 and r["tflops"] > 0 for r in scan)
    score = [r for r in res["score"] if "prompts_per_s" in r]
    assert {(r["dtype"], r["table"], r["batch"]) for r in score if r["dtype"] == "bfloat16"} == {
        ("bfloat16", t, b) for t in ("bigram", "trigram") for b in (64, 256)}
    assert {r["table"] for r in score if r["dtype"] == "float32"} == {"bigram", "trigram"}
    proj = res["projections"]
    assert proj["scan_shard_hours"]["hours"] > 0
    per_size = proj["score_trigrams_gpu_hours"]["per_size"]
    assert per_size["tiny-2x64"]["how"] == "measured" and per_size["tiny-4x128"]["how"].startswith("projected")
    assert "| scan L=4 | tiny-2x64 | bfloat16 | positions | 256 |" in printed
