#!/usr/bin/env python
"""GPU check of the first-token deletion scan: fp16 on CUDA against fp32 on CPU.

Builds a tiny random GPT-NeoX with Pythia's vocabulary (50432) and a small MDS of random
samples in a temporary folder (no network), then

1. runs ``position_statistics`` (every position, nothing filtered) with the model on
   ``--device`` in ``--dtype`` and on the CPU in float32, and prints, per statistic, the
   largest absolute difference and how often the argmaxes agree;
2. runs the whole ``scan`` (Dask LocalCluster with one worker, the GPU path: fp16 on
   CUDA) and the same scan on the CPU in fp32, and prints how the kept rows compare.
   This part needs dask/distributed, duckdb and pyarrow; where they are missing (the
   GPU image has torch and transformers but not Dask), it says so and is skipped.

    python scripts/gpu_check_scan.py                      # on the GPU machine
    python scripts/gpu_check_scan.py --device cpu --dtype float32   # a dry run anywhere

Prints one line ``RESULT {...}`` (JSON) at the end; exit 0 unless something crashed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def build_model(out: Path, vocab: int, hidden: int, layers: int, head_scale: float, seed: int) -> str:
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(seed)
    cfg = GPTNeoXConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=max(1, hidden // 32), intermediate_size=4 * hidden,
                        max_position_embeddings=2048)
    model = GPTNeoXForCausalLM(cfg).eval()
    with torch.no_grad():  # the init's logits are near uniform; sharpen them so p_long, sym_kl vary
        model.embed_out.weight.mul_(head_scale)
    model.save_pretrained(out)
    return str(out)


def write_mds(out: Path, samples) -> str:
    """An uncompressed MDS dataset (one shard), written without ``streaming`` (absent on the GPU image)."""
    out.mkdir(parents=True, exist_ok=True)
    blobs = [np.asarray(s, dtype="<u2").tobytes() for s in samples]
    records = [np.uint32(len(b)).tobytes() + b for b in blobs]
    head = 4 + 4 * (len(records) + 1)
    offsets = np.concatenate(([0], np.cumsum([len(r) for r in records]))) + head
    data = np.uint32(len(records)).tobytes() + offsets.astype("<u4").tobytes() + b"".join(records)
    (out / "shard.00000.mds").write_bytes(data)
    index = {"version": 2, "shards": [{
        "column_encodings": ["bytes"], "column_names": ["tokens"], "column_sizes": [None],
        "compression": None, "format": "mds", "hashes": [], "size_limit": 1 << 26, "version": 2,
        "raw_data": {"basename": "shard.00000.mds", "bytes": len(data), "hashes": {}},
        "samples": len(records), "zip_data": None}]}
    (out / "index.json").write_text(json.dumps(index))
    return str(out)


def have_dask_stack() -> str | None:
    """None when the whole scan can run here, else what is missing."""
    import importlib.util

    missing = [m for m in ("distributed", "duckdb", "pyarrow") if importlib.util.find_spec(m) is None]
    return ", ".join(missing) or None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="device under test (reference: cpu float32)")
    ap.add_argument("--dtype", default="float16", help="dtype under test")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--sample-len", type=int, default=512)
    ap.add_argument("--seq-len", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--head-scale", type=float, default=30.0)
    ap.add_argument("--micro-batch", type=int, default=1024)
    ap.add_argument("--tokenizer", default=None,
                    help="default: the bundled GPT-NeoX copy (ngram_dask/tokenizers/gpt-neox-20b)")
    ap.add_argument("--skip-scan", action="store_true", help="only the position statistics (no Dask)")
    ap.add_argument("--keep", default=None, help="folder to keep the model, MDS and outputs in")
    args = ap.parse_args()

    import torch

    from ngram_dask.lm.models import load_model
    from ngram_dask.lm.scan_stats import FLOAT_STATS, candidate_mask, position_statistics

    result: dict = {"device": args.device, "dtype": args.dtype, "torch": torch.__version__,
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="gpu-check-scan-"))
    tmp.mkdir(parents=True, exist_ok=True)
    vocab = 50432
    model_dir = build_model(tmp / "model", vocab, args.hidden, args.layers, args.head_scale, seed=0)
    rng = np.random.default_rng(0)
    samples = [rng.integers(0, 50277, args.sample_len) for _ in range(args.samples)]
    # Repeat short motifs so that some long windows predict confidently.
    for s in samples[::2]:
        motif = np.tile(s[:8], 5)[: max(0, len(s) - len(s) // 4)]
        s[len(s) // 4:len(s) // 4 + len(motif)] = motif

    # 1. Every position: device/dtype under test against CPU fp32.
    ref_model = load_model(model_dir, "cpu", "float32")
    t0 = time.perf_counter()
    ref = position_statistics(ref_model, samples, args.seq_len, args.micro_batch)
    result["cpu_fp32_seconds"] = round(time.perf_counter() - t0, 3)
    test_model = load_model(model_dir, args.device, args.dtype)
    position_statistics(test_model, samples[:1], args.seq_len, args.micro_batch)  # warm-up
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    got = position_statistics(test_model, samples, args.seq_len, args.micro_batch)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    result["test_seconds"] = round(time.perf_counter() - t0, 3)
    result["positions"] = int(len(ref["start"]))
    result["max_abs_diff"] = {name: float(np.max(np.abs(got[name].astype(np.float64) - ref[name])))
                              for name in FLOAT_STATS}
    result["argmax_agree"] = {name: float(np.mean(got[name] == ref[name]))
                              for name in ("short_max_id", "long_max_id")}
    result["ref_ranges"] = {name: [float(ref[name].min()), float(ref[name].max())]
                            for name in ("p_long", "sym_kl", "js_divergence")}
    m_ref, m_got = candidate_mask(ref, 0.5, 0.5), candidate_mask(got, 0.5, 0.5)
    result["kept_ref"], result["kept_test"] = int(m_ref.sum()), int(m_got.sum())
    result["kept_both"] = int((m_ref & m_got).sum())
    for name, diff in result["max_abs_diff"].items():
        print(f"  {name:<18} max |{args.device}/{args.dtype} - cpu/fp32| = {diff:.3e}")
    print(f"  argmax agreement: {result['argmax_agree']}; kept: cpu {result['kept_ref']}, "
          f"test {result['kept_test']}, both {result['kept_both']}")

    # 2. The whole scan on Dask, device under test against CPU fp32.
    missing = have_dask_stack()
    if missing and not args.skip_scan:
        print(f"  whole scan skipped: {missing} not installed here (carry the wheels to run it)")
        result["scan_skipped"] = f"missing {missing}"
    if not args.skip_scan and not missing:
        import pyarrow.parquet as pq

        from ngram_dask.config import load_config
        from ngram_dask.lm.scan import run_scan
        from ngram_dask.tokenizer import BUNDLED_GPT_NEOX

        tokenizer = args.tokenizer or str(BUNDLED_GPT_NEOX)
        mds = write_mds(tmp / "mds", samples)
        tables = {}
        for tag, device, dtype in (("test", args.device, args.dtype), ("cpu", "cpu", "float32")):
            cfg = load_config(None, {
                "input": mds, "tokenizer": tokenizer, "scan.model": model_dir, "scan.seq_len": args.seq_len,
                "scan.out": str(tmp / f"scan_{tag}.parquet"), "scan.samples_per_batch": 4,
                "scan.micro_batch": args.micro_batch, "scan.device": device, "scan.dtype": dtype,
                "cluster.n_workers": 1, "cluster.threads_per_worker": 1, "cluster.dashboard_address": "127.0.0.1:0",
            })
            t0 = time.perf_counter()
            report = run_scan(cfg, lambda msg: print("   ", msg, flush=True))
            result[f"scan_{tag}_seconds"] = round(time.perf_counter() - t0, 2)
            result[f"scan_{tag}_rows"] = report.rows
            tables[tag] = {(r["sample"], r["start"]): r
                           for r in pq.read_table(tmp / f"scan_{tag}.parquet").to_pylist()}
        common = sorted(set(tables["test"]) & set(tables["cpu"]))
        result["scan_rows_common"] = len(common)
        result["scan_max_abs_diff"] = {
            name: max((abs(tables["test"][k][name] - tables["cpu"][k][name]) for k in common), default=None)
            for name in FLOAT_STATS}
        result["scan_text_equal"] = all(tables["test"][k]["text"] == tables["cpu"][k]["text"] for k in common)
    print("RESULT " + json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
