#!/usr/bin/env python
"""GPU check of `ngram-dask score`: fp16 on CUDA against fp32 on CPU, on a small catalog.

    python scripts/gpu_check_score.py                  # cuda (fp16) vs cpu (fp32); needs a GPU
    python scripts/gpu_check_score.py --device cpu     # the same on CPU only (a smoke test)
    python scripts/gpu_check_score.py --model ./pythia-70m-deduped   # a real local model

What it does, in one short run (well under a minute on a GPU machine):

1. makes a tiny random GPT-NeoX (vocab 50432 as Pythia's, a larger init so its
   distributions are peaked and fp16 errors show), or takes ``--model``;
2. makes a small catalog database on the spot: a corpus of repeated phrases that
   the model itself sampled (so expected tokens get real probability), its
   top_bigrams / top_trigrams tables (thousands of rows) and the ``catalog_info``
   of an ngram-dask build;
3. scores it twice with ``run_score`` through a one-worker LocalCluster, on two
   copies: ``--device cpu`` (fp32) and ``--device DEVICE --dtype DTYPE`` (auto = fp16
   on CUDA), and compares the two ``p_<model>`` columns row by row;
4. also compares ``score_worker.probabilities`` directly (no Dask, no DuckDB) on the same rows.

Prints rows, rows/s, mean p, and the max abs / max relative difference; exits 1 when
the max abs difference is above ``--tol``. ``--json FILE`` writes the numbers.

On the lent GPU machine (python 3.12 with torch and transformers, but no duckdb or
dask): carry wheels as /work/.library/device/README.md says, e.g. here
``pip download --no-deps --only-binary=:all: --python-version 3.12 --platform
manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl duckdb==<ours>
dask==<ours> distributed==<ours> tornado tblib zict partd locket``; without them the
script runs the direct comparison (step 4) only and says so.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def tiny_model(out: Path, vocab: int, hidden: int, layers: int, init_std: float, seed: int) -> str:
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(seed)
    config = GPTNeoXConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                           num_attention_heads=4, intermediate_size=4 * hidden, max_position_embeddings=128,
                           initializer_range=init_std)
    GPTNeoXForCausalLM(config).eval().save_pretrained(out)
    return str(out)


def corpus(model: str, max_id: int, phrases: int, device: str, seed: int) -> np.ndarray:
    """32 samples of 2048 tokens made of repeated 6-token phrases sampled from the model itself
    (distinct first tokens in [1, max_id)), so the expected tokens get real probability mass."""
    import torch

    from ngram_dask.lm import models

    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    dev = models.resolve_device(device)
    m = models.load_model(model, dev, "float32")
    table = torch.from_numpy(rng.choice(np.arange(1, max_id), size=(phrases, 1), replace=False))
    with torch.inference_mode():
        for _ in range(5):
            nxt = []
            for batch in table.split(256):
                logits = m(input_ids=batch.to(dev), use_cache=False).logits[:, -1, :max_id].float().cpu()
                logits[:, 0] = -float("inf")  # keep <|endoftext|> out of the phrases
                nxt.append(torch.multinomial(torch.softmax(logits, -1), 1, generator=gen))
            table = torch.cat([table, torch.cat(nxt)], dim=1)
    table = table.numpy()
    picks = rng.integers(0, phrases, size=(32, 2048 // 6 + 1))
    return table[picks].reshape(32, -1)[:, :2048]


def ngram_rows(samples: np.ndarray) -> dict[str, np.ndarray]:
    """Top-table rows as the catalog would hold them (frac_max > 0.5, trigrams seen > 2 times)."""
    out = {}
    for n, name, min_count in ((2, "top_bigrams", 0), (3, "top_trigrams", 2)):
        grams = np.concatenate([np.lib.stride_tricks.sliding_window_view(s, n) for s in samples])
        uniq, counts = np.unique(grams, axis=0, return_counts=True)
        prefixes, inverse = np.unique(uniq[:, :-1], axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        total = np.bincount(inverse, weights=counts)
        order = np.lexsort((-counts, inverse))  # by prefix, most frequent follower first
        first = np.r_[True, inverse[order][1:] != inverse[order][:-1]]
        best = order[first]  # one n-gram per prefix, prefixes in order
        best_count = counts[best]
        keep = (best_count / total > 0.5) & (total > min_count)
        rows = uniq[best[keep]]
        out[name] = np.column_stack([rows, total[keep], best_count[keep]]).astype(np.int64)
    return out


def write_catalog(db: Path, rows: dict[str, np.ndarray], vocab: int) -> None:
    import duckdb
    import pyarrow as pa

    from ngram_dask.schema import SCHEMA_VERSION, TOOL

    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE catalog_info (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL)")
    con.executemany("INSERT INTO catalog_info VALUES (?, ?)",
                    [("tool", TOOL), ("schema_version", str(SCHEMA_VERSION)), ("vocab_size", str(vocab)),
                     ("input", "synthetic (scripts/gpu_check_score.py)")])
    for table, r in rows.items():
        n = r.shape[1] - 2
        cols = {f"id{j}": pa.array(r[:, j].astype(np.uint16)) for j in range(n)}
        cols.update(sum_count=pa.array(r[:, n].astype(np.uint64)), max_count=pa.array(r[:, n + 1].astype(np.uint64)))
        con.register("_rows", pa.table(cols))
        con.execute(f"CREATE TABLE {table} AS SELECT *, max_count::DOUBLE / sum_count AS frac_max FROM _rows")
        con.unregister("_rows")
    con.close()


def score_copy(src: Path, dst: Path, model: str, device: str, dtype: str, batch: int, rows_per_unit: int):
    from ngram_dask.config import load_config
    from ngram_dask.lm.score import run_score, summary_lines

    shutil.copy(src, dst)
    cfg = load_config(overrides={
        "db": str(dst), "score.models": [model], "score.device": device, "score.dtype": dtype,
        "score.batch_size": batch, "score.rows_per_unit": rows_per_unit,
        "cluster.n_workers": 1, "cluster.dashboard_address": "127.0.0.1:0",
    })
    t0 = time.perf_counter()
    report = run_score(cfg, lambda m: print(f"    {m}", flush=True))
    seconds = time.perf_counter() - t0
    for line in summary_lines(report):
        print(f"    {line}")
    return report, seconds


def read_column(db: Path, table: str, column: str) -> np.ndarray:
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        ids = ", ".join(c for c in ("id0", "id1") if table == "top_trigrams" or c == "id0")
        return np.array([r[0] for r in con.execute(f"SELECT {column} FROM {table} ORDER BY {ids}").fetchall()])
    finally:
        con.close()


def diff(a: np.ndarray, b: np.ndarray) -> dict:
    d = np.abs(a - b)
    rel = d / np.maximum(np.abs(a), 1e-6)
    return {"rows": int(len(a)), "max_abs": float(d.max(initial=0)), "mean_abs": float(d.mean()) if len(d) else 0.0,
            "max_rel": float(rel.max(initial=0)), "mean_p_ref": float(a.mean()) if len(a) else 0.0,
            "mean_p_dev": float(b.mean()) if len(b) else 0.0}


def direct_check(model: str, rows: dict[str, np.ndarray], device: str, dtype: str, batch: int) -> dict:
    """``probabilities`` on the CPU in fp32 and on ``device`` in ``dtype``: no Dask, no DuckDB."""
    import torch

    from ngram_dask.lm import models
    from ngram_dask.lm.score_worker import probabilities

    out = {}
    for label, dev, dt in (("ref", "cpu", "float32"), ("dev", device, dtype)):
        m = models.load_model(model, dev, dt)
        for table, r in rows.items():
            ids = r[:, :-2]
            if dev.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            p, _ = probabilities(m, ids, batch, models.resolve_device(dev))
            if dev.startswith("cuda"):
                torch.cuda.synchronize()
            out.setdefault(table, {})[label] = (p, time.perf_counter() - t0)
    result = {}
    for table, v in out.items():
        result[table] = diff(v["ref"][0], v["dev"][0])
        result[table]["rows_per_s_ref"] = len(v["ref"][0]) / max(v["ref"][1], 1e-9)
        result[table]["rows_per_s_dev"] = len(v["dev"][0]) / max(v["dev"][1], 1e-9)
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="device of the run compared with cpu/fp32 (cuda, cuda:N, cpu)")
    ap.add_argument("--dtype", default="auto", help="its dtype: auto (fp16 on CUDA), float16, bfloat16, float32")
    ap.add_argument("--model", default=None, help="a local causal LM folder instead of the tiny random model")
    ap.add_argument("--vocab", type=int, default=50432)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--init-std", type=float, default=0.5, help="init std of the tiny model (0.5: peaked outputs)")
    ap.add_argument("--phrases", type=int, default=3000, help="distinct phrases of the corpus (~5 rows each)")
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--rows-per-unit", type=int, default=4096)
    ap.add_argument("--tol", type=float, default=2e-2, help="max abs difference allowed (fp16 vs fp32)")
    ap.add_argument("--json", default=None, help="write the numbers here")
    ap.add_argument("--keep", default=None, help="keep the work folder here (model, databases)")
    args = ap.parse_args()

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"--device {args.device}: no CUDA device here; use --device cpu for the CPU-only check")
        return 2
    work = Path(args.keep or tempfile.mkdtemp(prefix="gpu-check-score-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {"torch": torch.__version__, "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    import transformers

    env["transformers"] = transformers.__version__
    print(f"environment: {env}")

    model = args.model or tiny_model(work / "tiny-neox", args.vocab, args.hidden, args.layers, args.init_std, 0)
    from ngram_dask.lm.models import model_vocab_size

    vocab = model_vocab_size(model)
    rows = ngram_rows(corpus(model, min(vocab, 50277), args.phrases, args.device, 0))
    print("catalog: " + ", ".join(f"{t} {len(r):,} rows" for t, r in rows.items()) + f"; model {model} (vocab {vocab})")

    results: dict = {"env": env, "device": args.device, "dtype": args.dtype, "model": model}
    print(f"direct (no Dask): cpu float32 vs {args.device} {args.dtype}")
    results["direct"] = direct_check(model, rows, args.device, args.dtype, args.batch_size)
    for table, d in results["direct"].items():
        print(f"  {table}: {d['rows']:,} rows, max abs diff {d['max_abs']:.3e}, max rel diff {d['max_rel']:.3e}, "
              f"mean p {d['mean_p_ref']:.5f} vs {d['mean_p_dev']:.5f}, "
              f"{d['rows_per_s_ref']:,.0f} vs {d['rows_per_s_dev']:,.0f} rows/s")
    worst = max(d["max_abs"] for d in results["direct"].values())

    try:
        import distributed  # noqa: F401
        import duckdb  # noqa: F401
    except ImportError as exc:
        print(f"pipeline check skipped: {exc} (carry duckdb, dask and distributed wheels; see the docstring)")
        results["pipeline"] = None
    else:
        from ngram_dask.lm.models import column_name

        db = work / "catalog.duckdb"
        if db.exists():
            db.unlink()
        write_catalog(db, rows, vocab)
        col = column_name(model)
        print("pipeline: ngram-dask score --device cpu (float32)")
        _, s_ref = score_copy(db, work / "cpu.duckdb", model, "cpu", "auto", args.batch_size, args.rows_per_unit)
        print(f"pipeline: ngram-dask score --device {args.device} --dtype {args.dtype}")
        _, s_dev = score_copy(db, work / "dev.duckdb", model, args.device, args.dtype, args.batch_size,
                              args.rows_per_unit)
        results["pipeline"] = {"seconds_ref": s_ref, "seconds_dev": s_dev}
        for table in rows:
            d = diff(read_column(work / "cpu.duckdb", table, col), read_column(work / "dev.duckdb", table, col))
            results["pipeline"][table] = d
            worst = max(worst, d["max_abs"])
            print(f"  {table}: {d['rows']:,} rows, max abs diff {d['max_abs']:.3e}, max rel diff {d['max_rel']:.3e}, "
                  f"mean p {d['mean_p_ref']:.5f} (cpu fp32) vs {d['mean_p_dev']:.5f} ({args.device} {args.dtype})")

    results["max_abs_diff"] = worst
    ok = worst <= args.tol
    print(f"max abs diff {worst:.3e} ({'ok' if ok else 'ABOVE'} tolerance {args.tol:g})")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
