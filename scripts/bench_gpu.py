#!/usr/bin/env python
"""Score and scan throughput with the real Pythia shapes, and fp16-on-device correctness.

    python scripts/bench_gpu.py                          # on the GPU machine: one run, < 8 minutes
    python scripts/bench_gpu.py --device cpu --tiny      # CPU dry run of every code path (~1 minute)

No weights are downloaded: every model is a ``GPTNeoXForCausalLM`` with random weights
and a published Pythia configuration, created directly on the device in the dtype
under test (a 2.8b model never exists on the host). Random weights cost the same
FLOPs as trained ones; what they change (the values) only matters for correctness,
which is checked on a small model against the CPU float32 path instead.

Sections, in this order, each stopped when ``--budget-s`` would be exceeded:

1. ``ceiling``: one large fp16 and bf16 matrix product, the card's measured dense rate.
2. ``correctness``: a tiny GPT-NeoX (Pythia's vocabulary, a sharpened output layer so
   the statistics vary) on the device in fp16 (and bf16) against the CPU in float32:
   ``score_worker.probabilities`` for bigram and trigram prompts and every statistic of
   ``scan_stats.position_statistics``, with the tolerances printed; argmax disagreements and
   candidate-row differences are listed with their reason (a near tie, a value next to
   a threshold) or flagged UNEXPLAINED.
3. ``scan``: positions/s of ``position_statistics`` at L=4 with 2.8b (``--scan-size``)
   over a micro-batch sweep, then the best micro-batch in the other dtype.
4. ``score``: prompts/s of ``probabilities`` for bigram (1-token) and trigram (2-token)
   prompts over a batch-size sweep per model size (70m, 410m, 1.4b, 2.8b first, then
   the others while time lasts), peak memory, then the best batch in the other dtype.

Every rate comes with achieved TFLOP/s from the FLOP model below and its share of the
card's dense fp16/bf16 peak (``PEAK_TFLOPS``, keyed by device name).

FLOP model (multiply-add = 2 FLOPs; d = hidden, f = MLP width, n = layers, V = vocab):

* per token through the layers: ``2 * n * (4 d^2 + 2 d f)`` (QKV 3d^2, attention output
  d^2, MLP up and down d f each), plus attention ``4 * n * d * c`` for c attended positions;
* per output row: ``2 * d * V`` (the output layer).
* score prompt of T tokens: T tokens through the layers, attention over T(T+1)/2
  pairs, one output row (``logits_to_keep=1``);
* scan position at L: one (L+1)-token window (each window is the long window of one
  position and, one step earlier, the short window of the previous one), two output rows.

Biases, layer norms, rotary embeddings, softmax and the statistics are left out (they
are memory-bound and below 1% of the count for these shapes). ``--json`` (default
``$OUT/bench_gpu.json`` or ``./bench_gpu.json``) gets every number; the end of the
output is a table in the form of docs/gpu.md.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


# Public configurations of the Pythia suite (EleutherAI/pythia-*-deduped config.json):
# layers, hidden size, heads, vocabulary. All have intermediate_size = 4 * hidden,
# rotary_pct 0.25, use_parallel_residual true, 2048 positions, untied output layer.
@dataclass(frozen=True)
class Shape:
    name: str
    layers: int
    hidden: int
    heads: int
    vocab: int

    @property
    def inter(self) -> int:
        return 4 * self.hidden


PYTHIA = {s.name: s for s in (
    Shape("70m", 6, 512, 8, 50304),
    Shape("160m", 12, 768, 12, 50304),
    Shape("410m", 24, 1024, 16, 50304),
    Shape("1b", 16, 2048, 8, 50304),
    Shape("1.4b", 24, 2048, 16, 50304),
    Shape("2.8b", 32, 2560, 32, 50304),
    Shape("6.9b", 32, 4096, 32, 50432),
    Shape("12b", 36, 5120, 40, 50688),
)}
# --tiny: the same code paths in seconds on a CPU.
TINY = {s.name: s for s in (
    Shape("tiny-2x64", 2, 64, 4, 50304),
    Shape("tiny-4x128", 4, 128, 4, 50304),
)}

# Dense (no sparsity) fp16/bf16 tensor-core peak in TFLOP/s, by a substring of
# torch.cuda.get_device_name(); the first match wins, so specific names come first.
PEAK_TFLOPS = [
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),  # SXM ("NVIDIA H100 80GB HBM3")
    ("H200", 989.4),
    ("GH200", 989.4),
    ("A100", 312.0),
    ("L40S", 362.1),
    ("RTX A6000", 154.8),  # the original's card (309.7 with sparsity)
    ("A10", 125.0),
]

ORIGINAL_SCAN_TOKENS = 112_500_000  # one shard of the original's scan
ORIGINAL_SCAN_HOURS = 19.0  # "~19 hours on a single A6000", pythia-2.8b-deduped, L=4
ORIGINAL_SAMPLE_LEN = 2048
TOP_TRIGRAM_PROMPTS = 1_540_000  # the published top tables' trigram prompts


# --------------------------------------------------------------------------- FLOP model

def layer_macs(s: Shape) -> int:
    """Multiply-adds of the layers' matrices per token."""
    return s.layers * (4 * s.hidden * s.hidden + 2 * s.hidden * s.inter)


def params(s: Shape) -> int:
    """Parameters with the embeddings (input and untied output) and biases and norms."""
    d, f = s.hidden, s.inter
    per_layer = 4 * d * d + 4 * d + 2 * d * f + f + d + 4 * d
    return s.layers * per_layer + 2 * s.vocab * d + 2 * d


def forward_flops(s: Shape, tokens: int, out_rows: int) -> float:
    attn = 4 * s.layers * s.hidden * tokens * (tokens + 1) / 2
    return 2.0 * layer_macs(s) * tokens + attn + 2.0 * s.hidden * s.vocab * out_rows


def score_flops(s: Shape, prompt_tokens: int) -> float:
    return forward_flops(s, prompt_tokens, 1)


def scan_flops(s: Shape, seq_len: int) -> float:
    return forward_flops(s, seq_len + 1, 2)


def peak_tflops(device_name: str | None) -> float | None:
    if not device_name:
        return None
    for key, value in PEAK_TFLOPS:
        if key.lower() in device_name.lower():
            return value
    return None


# --------------------------------------------------------------------------- helpers

class Budget:
    def __init__(self, seconds: float):
        self.t0 = time.perf_counter()
        self.seconds = seconds

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.seconds - self.elapsed()


def sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def reset_peak(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)


def peak_gib(dev) -> float | None:
    import torch

    if dev.type == "cuda":
        return round(torch.cuda.max_memory_allocated(dev) / 2**30, 2)
    return None


def free_memory(dev) -> None:
    import torch

    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()


def dtype_of(name: str):
    import torch

    return {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[name]


def dtype_works(dev, name: str) -> bool:
    """Whether a matrix product in this dtype runs on this device."""
    import torch

    if dev.type == "cuda" and name == "bfloat16" and not torch.cuda.is_bf16_supported():
        return False
    try:
        a = torch.ones(8, 8, device=dev, dtype=dtype_of(name))
        (a @ a).sum().item()
        return True
    except (RuntimeError, TypeError):
        return False


def neox_config(s: Shape):
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(vocab_size=s.vocab, hidden_size=s.hidden, num_hidden_layers=s.layers,
                         num_attention_heads=s.heads, intermediate_size=s.inter, rotary_pct=0.25,
                         max_position_embeddings=2048, use_parallel_residual=True, tie_word_embeddings=False)


def build_model(s: Shape, dev, dtype: str, seed: int = 0):
    """A random-weight model created on ``dev`` in ``dtype`` (never materialised on the host)."""
    import torch
    from transformers import AutoModelForCausalLM

    from ngram_dask.lm.models import _dtype_kwarg

    torch.manual_seed(seed)
    with torch.device(dev):
        try:
            model = AutoModelForCausalLM.from_config(neox_config(s), attn_implementation="sdpa",
                                                     **_dtype_kwarg(dtype_of(dtype)))
        except TypeError:  # a transformers whose from_config takes no dtype: float32, converted below
            model = AutoModelForCausalLM.from_config(neox_config(s), attn_implementation="sdpa")
    first = next(model.parameters())
    if first.device.type != dev.type or first.dtype != dtype_of(dtype):  # a transformers that ignored the context
        print(f"  note: {s.name} was built on {first.device} in {first.dtype}; moving it", flush=True)
        model = model.to(device=dev, dtype=dtype_of(dtype))
    return model.eval()


def ceiling(dev, dtypes: list[str], n: int) -> dict:
    """Measured dense matrix-product rate: the card's real ceiling, next to its datasheet peak."""
    import torch

    out = {}
    for name in dtypes:
        g = torch.Generator(device=dev).manual_seed(0)
        a = torch.randn(n, n, device=dev, dtype=dtype_of(name), generator=g)
        b = torch.randn(n, n, device=dev, dtype=dtype_of(name), generator=g)
        for _ in range(3):
            a @ b
        sync(dev)
        reps, times = 10, []
        for _ in range(reps):
            t0 = time.perf_counter()
            a @ b
            sync(dev)
            times.append(time.perf_counter() - t0)
        out[name] = round(2 * n**3 / float(np.median(times)) / 1e12, 3)
        del a, b
    return out


def rate(fn, units_per_call: int, target_s: float, max_calls: int = 200) -> tuple[float, float]:
    """(units/s, seconds of one call): warm-up call, then enough calls for ``target_s``, three
    times; the median of the three. A call slower than ``target_s`` is timed once more only."""
    t0 = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t0, 1e-6)
    if once >= target_s:
        t0 = time.perf_counter()
        fn()
        return units_per_call / (time.perf_counter() - t0), once
    calls = int(min(max_calls, max(1, math.ceil(target_s / 3 / once))))
    rates = []
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        rates.append(calls * units_per_call / (time.perf_counter() - t0))
    return float(np.median(rates)), once


# --------------------------------------------------------------------------- correctness

def _near_tie_gap(model, tokens: list[int]) -> float:
    """fp32 gap between the two largest logits after ``tokens`` (one window, unbatched)."""
    import torch

    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([tokens]), use_cache=False).logits[0, -1].float()
    top = torch.topk(logits, 2).values
    return float(top[0] - top[1])


# Tolerances in units of the dtype's epsilon (fp16 2^-10, bf16 2^-7): probabilities
# (p, p_short, p_long, p_delta_max, js_divergence) absolute; logit differences
# (logit_excite_max, logit_inhibit_max) and sym_kl relative to 1 + |fp32 value|.
# Set at 2-4x the errors of a CPU fp16/bf16 dry run (docs/gpu.md), so a GPU result over
# them means something other than rounding.
EPS = {"float16": 2.0**-10, "bfloat16": 2.0**-7, "float32": 2.0**-23}
TOL_EPS = {"p": 20, "p_short": 20, "p_long": 20, "p_delta_max": 20, "js_divergence": 10,
           "logit_excite_max": 16, "logit_inhibit_max": 16, "sym_kl": 32}


def tolerance(name: str, dtype: str, ref: np.ndarray) -> np.ndarray:
    scale = 1.0 if name in ("p", "p_short", "p_long", "p_delta_max", "js_divergence") else 1.0 + np.abs(ref)
    return TOL_EPS[name] * EPS[dtype] * scale


def correctness(dev, dtypes: list[str], tiny: bool, seq_len: int, log) -> dict:
    import torch

    from ngram_dask.lm.scan_stats import FLOAT_STATS, candidate_mask, position_statistics
    from ngram_dask.lm.score_worker import probabilities

    shape = Shape("check", 2, 128, 4, 50432)
    torch.manual_seed(0)
    ref_model = build_model(shape, torch.device("cpu"), "float32")
    with torch.no_grad():  # the init's outputs are near uniform; sharpen them so p_long, sym_kl vary
        ref_model.embed_out.weight.mul_(30.0)
    rng = np.random.default_rng(0)
    n_samples, length = (3, 160) if tiny else (16, 512)
    samples = [rng.integers(0, 50277, length) for _ in range(n_samples)]
    for s in samples[::2]:  # repeated motifs: some long windows predict confidently
        motif = np.tile(s[:8], 5)[: max(0, len(s) - len(s) // 4)]
        s[len(s) // 4:len(s) // 4 + len(motif)] = motif
    prompts = {w: rng.integers(0, 50277, (384 if tiny else 8192, w)) for w in (2, 3)}
    # a third of the rows expect the fp32 model's own first choice, so p spans (0, 1)
    # instead of sitting near 1/V
    with torch.inference_mode():
        for ids in prompts.values():
            logits = ref_model(input_ids=torch.from_numpy(ids[::3, :-1]), use_cache=False).logits[:, -1]
            ids[::3, -1] = logits.argmax(-1).numpy()

    ref_scan = position_statistics(ref_model, samples, seq_len, micro_batch=512)
    ref_p = {w: probabilities(ref_model, ids, 1024, "cpu")[0] for w, ids in prompts.items()}
    ref_mask = candidate_mask(ref_scan, 0.5, 0.5)
    out: dict = {"positions": int(len(ref_scan["start"])), "prompts": {w: len(v) for w, v in prompts.items()},
                 "kept_ref": int(ref_mask.sum()), "eps_units": TOL_EPS,
                 "ref_ranges": {n: [float(ref_scan[n].min()), float(ref_scan[n].max())]
                                for n in ("p_long", "sym_kl", "logit_excite_max")}, "dtypes": {}}
    for dtype in dtypes:
        model = copy.deepcopy(ref_model).to(device=dev, dtype=dtype_of(dtype))
        got_scan = position_statistics(model, samples, seq_len, micro_batch=512)
        got_p = {w: probabilities(model, ids, 1024, str(dev))[0] for w, ids in prompts.items()}
        res: dict = {"stats": {}, "ok": True}
        checks = [("p (bigram)", "p", ref_p[2], got_p[2]), ("p (trigram)", "p", ref_p[3], got_p[3])]
        checks += [(n, n, ref_scan[n], got_scan[n]) for n in FLOAT_STATS]
        for label, kind, ref, got in checks:
            ref = ref.astype(np.float64)
            err = np.abs(got.astype(np.float64) - ref)
            tol = tolerance(kind, dtype, ref)
            bad = int((err > tol).sum()) + int(np.isnan(got).sum())
            res["stats"][label] = {"max_abs": float(err.max(initial=0)), "tol_at_max": float(np.max(tol)),
                                   "over_tol": bad}
            res["ok"] &= bad == 0
        # argmax disagreements: each must be a near tie of the fp32 logits
        logit_err = max(res["stats"]["logit_excite_max"]["max_abs"], res["stats"]["logit_inhibit_max"]["max_abs"])
        mism = []
        for name, offset in (("short_max_id", 1), ("long_max_id", 0)):
            for j in np.flatnonzero(got_scan[name] != ref_scan[name])[:50]:
                k, i = int(ref_scan["sample"][j]), int(ref_scan["start"][j])
                window = samples[k][i + offset:i + 1 + seq_len].tolist()
                gap = _near_tie_gap(ref_model, window)
                mism.append({"stat": name, "sample": k, "start": i, "fp32_top2_gap": gap,
                             "reason": "near tie (fp32 top-2 logit gap below 2x the largest logit error)"
                             if gap <= 2 * logit_err + 1e-6 else "UNEXPLAINED"})
        res["argmax_agree"] = {n: float(np.mean(got_scan[n] == ref_scan[n])) for n in ("short_max_id", "long_max_id")}
        res["argmax_mismatches"] = mism
        # candidate rows: the same (sample, start) set, or each difference next to a threshold
        got_mask = candidate_mask(got_scan, 0.5, 0.5)
        diffs = []
        tol_p = TOL_EPS["p_long"] * EPS[dtype]
        for j in np.flatnonzero(got_mask != ref_mask):
            pl, sk = float(ref_scan["p_long"][j]), float(ref_scan["sym_kl"][j])
            reasons = []
            if abs(pl - 0.5) <= tol_p:
                reasons.append(f"p_long {pl:.5f} (fp32) vs {float(got_scan['p_long'][j]):.5f} next to 0.5")
            if abs(sk - 0.5) <= tolerance("sym_kl", dtype, np.float64(0.5)):
                reasons.append(f"sym_kl {sk:.5f} (fp32) vs {float(got_scan['sym_kl'][j]):.5f} next to 0.5")
            diffs.append({"sample": int(ref_scan["sample"][j]), "start": int(ref_scan["start"][j]),
                          "in": "device only" if got_mask[j] else "fp32 only",
                          "reason": "; ".join(reasons) or "UNEXPLAINED"})
        res["kept_device"] = int(got_mask.sum())
        res["candidate_differences"] = diffs
        res["candidates_identical"] = not diffs
        res["ok"] &= all(m["reason"] != "UNEXPLAINED" for m in mism + diffs)
        # kept rows in both: the argmax ids (the decoded token columns) must agree
        both = np.flatnonzero(got_mask & ref_mask)
        res["kept_both_ids_equal"] = bool(np.all(got_scan["long_max_id"][both] == ref_scan["long_max_id"][both])
                                          and np.all(got_scan["short_max_id"][both] == ref_scan["short_max_id"][both]))
        out["dtypes"][dtype] = res
        log(f"  {dtype} on {dev} vs float32 on cpu: {'ok' if res['ok'] else 'NOT OK'}; "
            f"candidates {res['kept_device']} vs {out['kept_ref']} "
            f"({'identical' if not diffs else f'{len(diffs)} differ'}), argmax agreement {res['argmax_agree']}")
        for label, st in res["stats"].items():
            log(f"    {label:<18} max |diff| {st['max_abs']:.2e}  tolerance {st['tol_at_max']:.2e}  "
                f"over {st['over_tol']}")
        for item in mism + diffs:
            log(f"    difference: {item}")
        del model
        free_memory(dev)
    return out


# --------------------------------------------------------------------------- sweeps

def scan_sweep(dev, shape: Shape, dtypes: list[str], micro_batches: list[int], seq_len: int, sample_len: int,
               target_s: float, budget: Budget, reserve_s: float, log, rows: list[dict]) -> None:
    """Appends to ``rows`` as it goes, so that an error or a kill keeps what was measured."""
    from ngram_dask.lm.models import batch_limit
    from ngram_dask.lm.scan_stats import position_statistics

    model = build_model(shape, dev, dtypes[0])
    limit = batch_limit(model, dev, tokens=seq_len + 1, logit_rows=2)
    rng = np.random.default_rng(1)
    fl = scan_flops(shape, seq_len)
    best = None
    for dtype_i, dtype in enumerate(dtypes):
        sizes = micro_batches if dtype_i == 0 else ([best["micro_batch"]] if best else [])
        if dtype_i:
            model = model.to(dtype_of(dtype))
        for mb in sizes:
            if mb > limit:
                log(f"  scan {shape.name} {dtype} micro-batch {mb}: over the free-memory limit {limit}, skipped")
                continue
            if budget.left() < reserve_s:
                log(f"  scan {shape.name} {dtype} micro-batch {mb}: skipped (budget)")
                rows.append({"model": shape.name, "dtype": dtype, "micro_batch": mb, "skipped": "budget"})
                continue
            per_sample = sample_len - seq_len
            n_samples = max(1, math.ceil(2 * mb / per_sample))  # two micro-batches or more per call
            samples = [rng.integers(0, 50277, sample_len) for _ in range(n_samples)]
            n_pos = n_samples * per_sample
            reset_peak(dev)
            pos_s, once = rate(lambda m=model, x=samples, b=mb: position_statistics(m, x, seq_len, micro_batch=b),
                                n_pos, target_s)
            row = {"model": shape.name, "dtype": dtype, "micro_batch": mb, "positions_per_s": round(pos_s, 1),
                   "tflops": round(pos_s * fl / 1e12, 3), "peak_gib": peak_gib(dev), "batch_limit": limit}
            rows.append(row)
            log(f"  scan {shape.name} {dtype} micro-batch {mb:>6}: {pos_s:>12,.0f} positions/s  "
                f"{row['tflops']:8.2f} TFLOP/s  peak {row['peak_gib']} GiB")
            if dtype_i == 0 and (best is None or pos_s > best["positions_per_s"]):
                best = row
    del model
    free_memory(dev)


def score_sweep(dev, shape: Shape, dtypes: list[str], batch_sizes: list[int], target_s: float,
                budget: Budget, reserve_s: float, log, rows: list[dict]) -> None:
    """Appends to ``rows`` as it goes, so that an error or a kill keeps what was measured."""
    from ngram_dask.lm.models import batch_limit
    from ngram_dask.lm.score_worker import probabilities

    model = build_model(shape, dev, dtypes[0])
    rng = np.random.default_rng(2)
    best: dict[int, dict] = {}
    for dtype_i, dtype in enumerate(dtypes):
        if dtype_i:
            model = model.to(dtype_of(dtype))
        for width, table in ((2, "bigram"), (3, "trigram")):
            limit = batch_limit(model, dev, tokens=width - 1, logit_rows=1)
            fl = score_flops(shape, width - 1)
            sizes = batch_sizes if dtype_i == 0 else ([best[width]["batch"]] if width in best else [])
            for bs in sizes:
                if bs > limit:
                    log(f"  score {shape.name} {dtype} {table} batch {bs}: over the free-memory limit {limit}, skipped")
                    continue
                if budget.left() < reserve_s:
                    rows.append({"model": shape.name, "dtype": dtype, "table": table, "batch": bs, "skipped": "budget"})
                    continue
                ids = rng.integers(0, 50277, (bs, width))
                reset_peak(dev)
                p_s, once = rate(lambda m=model, x=ids, b=bs: probabilities(m, x, b, str(dev)), bs, target_s)
                row = {"model": shape.name, "dtype": dtype, "table": table, "batch": bs,
                       "prompts_per_s": round(p_s, 1), "tflops": round(p_s * fl / 1e12, 3),
                       "peak_gib": peak_gib(dev), "batch_limit": limit}
                rows.append(row)
                log(f"  score {shape.name:<10} {dtype:<8} {table:<7} batch {bs:>6}: {p_s:>12,.0f} prompts/s  "
                    f"{row['tflops']:8.2f} TFLOP/s  peak {row['peak_gib']} GiB")
                if dtype_i == 0 and (width not in best or p_s > best[width]["prompts_per_s"]):
                    best[width] = row
    del model
    free_memory(dev)


# --------------------------------------------------------------------------- projections

def projections(shapes: dict[str, Shape], scan_rows: list[dict], score_rows: list[dict], scan_size: str,
                seq_len: int) -> dict:
    out: dict = {}
    done = [r for r in scan_rows if "positions_per_s" in r and r["model"] == scan_size]
    if done:
        best = max(done, key=lambda r: r["positions_per_s"])
        positions = ORIGINAL_SCAN_TOKENS * (ORIGINAL_SAMPLE_LEN - seq_len) / ORIGINAL_SAMPLE_LEN
        hours = positions / best["positions_per_s"] / 3600
        out["scan_shard_hours"] = {"model": scan_size, "dtype": best["dtype"], "micro_batch": best["micro_batch"],
                                   "positions": int(positions), "hours": round(hours, 3),
                                   "original_a6000_hours": ORIGINAL_SCAN_HOURS,
                                   "speedup": round(ORIGINAL_SCAN_HOURS / hours, 1)}
    # scoring: measured trigram rate per size, else the FLOPs at the median achieved TFLOP/s
    tri = [r for r in score_rows if r.get("table") == "trigram" and "prompts_per_s" in r]
    best_by_size: dict[str, dict] = {}
    for r in tri:
        if r["model"] not in best_by_size or r["prompts_per_s"] > best_by_size[r["model"]]["prompts_per_s"]:
            best_by_size[r["model"]] = r
    if best_by_size:
        achieved = float(np.median([r["tflops"] for r in best_by_size.values()]))
        per_size, total_s = {}, 0.0
        for name, shape in shapes.items():
            if name in best_by_size:
                pps, how = best_by_size[name]["prompts_per_s"], "measured"
            else:
                pps, how = achieved * 1e12 / score_flops(shape, 2), f"projected at {achieved:.1f} TFLOP/s"
            seconds = TOP_TRIGRAM_PROMPTS / pps
            per_size[name] = {"prompts_per_s": round(pps, 1), "seconds": round(seconds, 1), "how": how}
            total_s += seconds
        out["score_trigrams_gpu_hours"] = {"prompts": TOP_TRIGRAM_PROMPTS, "per_size": per_size,
                                           "gpu_hours": round(total_s / 3600, 4),
                                           "note": "forward passes only; loading each model's weights is extra"}
    return out


def table_lines(res: dict) -> list[str]:
    peak = res["env"].get("peak_tflops")
    share = lambda t: f"{100 * t / peak:.1f}%" if peak and t is not None else "-"  # noqa: E731
    lines = ["", f"device: {res['env']['device_name']}  (datasheet peak {peak or '-'} TFLOP/s fp16/bf16 dense; "
             f"measured matmul {res.get('ceiling') or '-'})", "",
             "| stage | model | dtype | items | batch | items/s | TFLOP/s | of peak | peak GiB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in res["scan"]:
        if "positions_per_s" in r:
            lines.append(f"| scan L={res['args']['seq_len']} | {r['model']} | {r['dtype']} | positions "
                         f"| {r['micro_batch']} | {r['positions_per_s']:,.0f} | {r['tflops']:.2f} "
                         f"| {share(r['tflops'])} | {r['peak_gib'] or '-'} |")
    for r in res["score"]:
        if "prompts_per_s" in r:
            lines.append(f"| score | {r['model']} | {r['dtype']} | {r['table']} | {r['batch']} "
                         f"| {r['prompts_per_s']:,.0f} "
                         f"| {r['tflops']:.2f} | {share(r['tflops'])} | {r['peak_gib'] or '-'} |")
    proj = res.get("projections", {})
    if "scan_shard_hours" in proj:
        p = proj["scan_shard_hours"]
        lines.append(f"\nscan of the original's 112.5M-token shard with {p['model']} at L={res['args']['seq_len']}: "
                     f"{p['hours']:.2f} h here ({p['dtype']}, micro-batch {p['micro_batch']}) "
                     f"vs ~{p['original_a6000_hours']:.0f} h "
                     f"on the original's A6000 ({p['speedup']}x)")
    if "score_trigrams_gpu_hours" in proj:
        p = proj["score_trigrams_gpu_hours"]
        lines.append(f"score {p['prompts']:,} trigram prompts with {len(p['per_size'])} sizes: "
                     f"{p['gpu_hours']:.3f} device-hours "
                     f"(" + ", ".join(f"{k} {v['seconds']:.0f} s{'' if v['how'] == 'measured' else '*'}"
                                      for k, v in p["per_size"].items()) + "; * projected from FLOPs)")
    corr = res.get("correctness") or {}
    for dtype, c in corr.get("dtypes", {}).items():
        lines.append(f"correctness {dtype}: {'ok' if c['ok'] else 'NOT OK'}, candidates "
                     + ("identical" if c["candidates_identical"]
                        else f"{len(c['candidate_differences'])} differ (see JSON)"))
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny models and short sweeps (a CPU dry run)")
    ap.add_argument("--budget-s", type=float, default=None, help="stop sweeps after this (default 360; 60 with --tiny)")
    ap.add_argument("--sizes", default=None, help="score sizes in order of priority (default 70m,410m,1.4b,2.8b,"
                                                  "160m,1b,6.9b,12b)")
    ap.add_argument("--scan-size", default=None, help="scan model (default 2.8b)")
    ap.add_argument("--seq-len", type=int, default=4)
    ap.add_argument("--dtypes", default=None, help="first: the sweeps; others: at the best batch (default "
                                                   "float16,bfloat16; bfloat16,float16 on a CPU, where fp16 "
                                                   "matrix products have no fast kernels)")
    ap.add_argument("--batch-sizes", default=None, help="score sweep (default 256,1024,4096,16384,65536)")
    ap.add_argument("--micro-batches", default=None, help="scan sweep (default 1024,2048,4096,8192,16384)")
    ap.add_argument("--target-s", type=float, default=None, help="seconds per measurement (default 1.0; 0.2 tiny)")
    ap.add_argument("--skip", default="", help="sections to leave out: ceiling,correctness,scan,score")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import torch
    import transformers

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"--device {args.device}: no CUDA device here (use --device cpu --tiny for the dry run)")
        return 2
    dev = torch.device(args.device)
    tiny = args.tiny
    shapes = TINY if tiny else PYTHIA
    budget = Budget(args.budget_s or (60.0 if tiny else 360.0))
    sizes = [s.strip() for s in (args.sizes or (",".join(TINY) if tiny else "70m,410m,1.4b,2.8b,160m,1b,6.9b,12b"))
             .split(",") if s.strip()]
    scan_size = args.scan_size or ("tiny-2x64" if tiny else "2.8b")
    for name in sizes + [scan_size]:
        if name not in shapes:
            ap.error(f"unknown size {name!r}: one of {', '.join(shapes)}")
    batch_sizes = [int(x) for x in
                   (args.batch_sizes or ("64,256,1024" if tiny else "256,1024,4096,16384,65536")).split(",")]
    micro_batches = [int(x) for x in
                     (args.micro_batches or ("256,1024" if tiny else "1024,2048,4096,8192,16384")).split(",")]
    target_s = args.target_s or (0.2 if tiny else 1.0)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    dtypes = [d for d in (x.strip() for x in (args.dtypes or ("float16,bfloat16" if dev.type == "cuda"
                                                              else "bfloat16,float16")).split(",")) if d]
    usable = [d for d in dtypes if dtype_works(dev, d)]
    name = (torch.cuda.get_device_name(dev) if dev.type == "cuda"
            else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)")
    res: dict = {"args": vars(args) | {"seq_len": args.seq_len}, "env": {
        "device_name": name, "peak_tflops": peak_tflops(name) if dev.type == "cuda" else None,
        "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
        "dtypes_usable": usable, "dtypes_unsupported": [d for d in dtypes if d not in usable]},
        "shapes": {k: asdict(v) | {"params": params(v), "score_flops_bigram": score_flops(v, 1),
                                   "score_flops_trigram": score_flops(v, 2),
                                   "scan_flops_per_position": scan_flops(v, args.seq_len)} for k, v in shapes.items()},
        "scan": [], "score": []}
    if dev.type == "cuda":
        free, total = torch.cuda.mem_get_info(dev)
        res["env"].update(memory_gib=round(total / 2**30, 1), free_gib=round(free / 2**30, 1))

    def log(msg: str) -> None:
        print(f"[{budget.elapsed():6.1f}s] {msg}", flush=True)

    log(f"device {name}; torch {torch.__version__}, transformers {transformers.__version__}; dtypes {usable} "
        f"(unsupported here: {res['env']['dtypes_unsupported'] or 'none'}); budget {budget.seconds:.0f} s")
    for k, v in shapes.items():
        log(f"  {k:<10} {v.layers}L/{v.hidden}/{v.heads}h vocab {v.vocab}: {params(v) / 1e6:,.0f}M params, "
            f"{score_flops(v, 2) / 1e9:.2f} GFLOP per trigram prompt, "
            f"{scan_flops(v, args.seq_len) / 1e9:.2f} GFLOP per scan position")
    if not usable:
        print("no usable dtype on this device")
        return 2

    path = Path(args.json or os.path.join(os.environ.get("OUT") or ".", "bench_gpu.json"))
    res["errors"] = {}

    def section(key: str, fn) -> None:
        """Run one section; a failure is recorded and the next section still runs (a GPU run
        is one shot), and the JSON is rewritten after each, so a kill keeps the finished ones."""
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - reported in the output and the JSON
            import traceback

            res["errors"][key] = f"{type(exc).__name__}: {exc}"
            log(f"{key}: FAILED {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            traceback.print_exc(limit=4)
            free_memory(dev)
        res["seconds"] = round(budget.elapsed(), 1)
        path.write_text(json.dumps(res, indent=1, default=str))

    def run_ceiling() -> None:
        res["ceiling"] = ceiling(dev, usable, 512 if tiny else 8192)
        log(f"ceiling: dense matmul TFLOP/s {res['ceiling']}")

    def run_correctness() -> None:
        log("correctness: tiny GPT-NeoX, device vs cpu float32")
        res["correctness"] = correctness(dev, usable, tiny, args.seq_len, log)

    def run_scan() -> None:
        log(f"scan sweep: {scan_size}, L={args.seq_len}")
        # the scan may use up to ~45% of what is left; the score sweeps get the rest
        scan_sweep(dev, shapes[scan_size], usable, micro_batches, args.seq_len, 256 if tiny else ORIGINAL_SAMPLE_LEN,
                   target_s, budget, reserve_s=0.55 * budget.left(), log=log, rows=res["scan"])

    def run_score(size: str) -> None:
        try:
            score_sweep(dev, shapes[size], usable, batch_sizes, target_s, budget, reserve_s=2 * target_s + 2,
                        log=log, rows=res["score"])
        except torch.cuda.OutOfMemoryError as exc:
            log(f"score {size}: out of memory ({str(exc).splitlines()[0]})")
            res["score"].append({"model": size, "skipped": "out of memory"})
            free_memory(dev)

    for key, fn in (("ceiling", run_ceiling), ("correctness", run_correctness), ("scan", run_scan)):
        if key not in skip:
            section(key, fn)
    if "score" not in skip:
        for size in sizes:
            if budget.left() < 3 * target_s + 5:
                log(f"score {size}: skipped (budget)")
                res["score"].append({"model": size, "skipped": "budget"})
                continue
            log(f"score sweep: {size}")
            section(f"score {size}", lambda size=size: run_score(size))
    res["projections"] = projections(shapes, res["scan"], res["score"], scan_size, args.seq_len)
    res["seconds"] = round(budget.elapsed(), 1)
    path.write_text(json.dumps(res, indent=1, default=str))
    for line in table_lines(res):
        print(line)
    print(f"\n{res['seconds']:.0f} s in all; numbers in {path}")
    for key, err in res["errors"].items():
        print(f"FAILED {key}: {err}")
    ok = all(c["ok"] for c in (res.get("correctness") or {}).get("dtypes", {}).values())
    return 0 if ok and not res["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
