"""`ngram-dask scan`: the first-token deletion scan.

* every statistic of every position against an independent, unbatched torch computation
  (one window at a time, float64), across micro-batch sizes and sample edges;
* a one-layer GPT-NeoX built by hand so that a known token ("trigger") in first position
  of the long window, and only there, makes the model predict a known token: exactly
  those positions come out, with the right text, context, batch, sample and start;
* a worker SIGKILLed mid-scan: the scan finishes, a rerun skips everything, and the
  output is the uninterrupted run's;
* bad input: one clear line, exit 2.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import read_index, run_cli, write_mds, write_mds_subfolders

L = 4
FILLER_TEXT = "the quick brown fox jumps over the lazy dog. def main(): return 0\nimport os, sys\n" * 3


# ---------------------------------------------------------------------------------------
# Independent references
# ---------------------------------------------------------------------------------------

def reference_position(model, tokens, i: int, seq_len: int) -> dict:
    """All statistics of position i from two separate forward passes, in float64."""
    import torch

    short = [int(t) for t in tokens[i + 1:i + 1 + seq_len]]
    long = [int(t) for t in tokens[i:i + 1 + seq_len]]
    assert len(short) == seq_len and len(long) == seq_len + 1
    with torch.no_grad():
        ls = model(torch.tensor([short])).logits[0, -1].double()
        ll = model(torch.tensor([long])).logits[0, -1].double()
    ps, pl = torch.softmax(ls, -1), torch.softmax(ll, -1)

    def kl(p, q):
        return float((p * (p.log() - q.log())).sum())

    m = (ps + pl) / 2
    return {
        "p_short": float(ps.max()), "p_long": float(pl.max()),
        "short_max_id": int(ps.argmax()), "long_max_id": int(pl.argmax()),
        "p_delta_max": float((ps - pl).abs().max()),
        "logit_excite_max": float((ll - ls).max()), "logit_inhibit_max": float((ls - ll).max()),
        "sym_kl": (kl(ps, pl) + kl(pl, ps)) / 2,
        "js_divergence": (kl(ps, m) + kl(pl, m)) / 2,
    }


def reference_positions(lengths, seq_len):
    return [(k, i) for k, n in enumerate(lengths) for i in range(n) if i + 1 + seq_len <= n]


def assert_stats_close(got: dict, want: dict, where) -> None:
    for name in ("short_max_id", "long_max_id"):
        assert got[name] == want[name], (where, name)
    for name in ("p_short", "p_long", "p_delta_max", "js_divergence"):
        assert got[name] == pytest.approx(want[name], abs=2e-6), (where, name)
    for name in ("logit_excite_max", "logit_inhibit_max"):
        assert got[name] == pytest.approx(want[name], abs=2e-5), (where, name)
    assert got["sym_kl"] == pytest.approx(want["sym_kl"], rel=1e-4, abs=2e-6), (where, "sym_kl")


def build_trigger_model(out: Path, trigger: int, target: int, vocab_size: int = 512, seed: int = 0) -> str:
    """A one-layer GPT-NeoX whose prediction is ``target`` (p ~ 1) iff ``trigger`` is in the window.

    Every other token's embedding lies in dims 6.. and sums to zero (LayerNorm only
    rescales it); ``trigger``'s embedding is e0 - e1. Head 0 has a constant query on a
    non-rotary dim and a key and value that read e0 - e1, so the last position attends
    to the trigger when it is present and gets a zero attention output otherwise; the
    attention output writes e2 - e3, which ``embed_out`` maps to ``target`` alone.
    Without the trigger, long and short windows end in the same hidden state, so their
    distributions (near uniform) are identical: sym_kl = 0.
    """
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    hidden, heads = 32, 4
    hs = hidden // heads
    config = GPTNeoXConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=1,
                           num_attention_heads=heads, intermediate_size=4 * hidden,
                           max_position_embeddings=128, rotary_pct=0.25)
    model = GPTNeoXForCausalLM(config).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        emb = torch.zeros(vocab_size, hidden)
        emb[:, 6:] = torch.randn(vocab_size, hidden - 6, generator=g)
        emb[:, 6:] -= emb[:, 6:].mean(dim=1, keepdim=True)
        emb[trigger] = 0
        emb[trigger, 0], emb[trigger, 1] = 1.0, -1.0
        neox = model.gpt_neox
        neox.embed_in.weight.copy_(emb)
        layer = neox.layers[0]
        for ln in (layer.input_layernorm, layer.post_attention_layernorm, neox.final_layer_norm):
            ln.weight.fill_(1.0)
        qkv = layer.attention.query_key_value  # per head: [query | key | value], hs each
        d = hs - 1  # not rotated (rotary_pct 0.25 rotates dims 0, 1)
        qkv.bias[d] = 10.0
        qkv.weight[hs + d, 0], qkv.weight[hs + d, 1] = 1.0, -1.0
        qkv.weight[2 * hs + d, 0], qkv.weight[2 * hs + d, 1] = 1.0, -1.0
        layer.attention.dense.weight[2, d], layer.attention.dense.weight[3, d] = 10.0, -10.0
        w = torch.randn(vocab_size, hidden, generator=g) * 0.05
        w[:, :6] = 0
        w[target] = 0
        w[target, 2], w[target, 3] = 2.0, -2.0
        model.embed_out.weight.copy_(w)
    model.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def bpe(bpe_tokenizer_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(bpe_tokenizer_path)
    trigger, target = tok.encode(" chloride"), tok.encode(" salt")
    assert len(trigger) == 1 and len(target) == 1
    filler = tok.encode(FILLER_TEXT)
    assert trigger[0] not in filler and len(filler) >= 50
    return tok, trigger[0], target[0], filler


@pytest.fixture(scope="module")
def trigger_model(bpe, tmp_path_factory):
    _, trigger, target, _ = bpe
    return build_trigger_model(tmp_path_factory.mktemp("trigger-model"), trigger, target)


def load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path).eval()


def config(**overrides):
    from ngram_dask.config import load_config

    return load_config(None, overrides)


# ---------------------------------------------------------------------------------------
# The pure core
# ---------------------------------------------------------------------------------------

def test_every_statistic_of_every_position_matches_unbatched_torch(make_tiny_model):
    import torch

    from ngram_dask.lm.scan_stats import position_statistics

    model = load(make_tiny_model(vocab_size=512, hidden=32, layers=2, seed=3))
    with torch.no_grad():  # sharper distributions than the init's near-uniform ones
        model.embed_out.weight.mul_(40)
    rng = np.random.default_rng(0)
    # shorter than L+1 (no position), exactly L+1 (one: position 0 is the last), longer ones
    lengths = [1, L, L + 1, 9, 2, 13, L + 2, 7]
    samples = [rng.integers(0, 512, n) for n in lengths]
    want_pos = reference_positions(lengths, L)
    assert len(want_pos) == 5 + 0 + 1 + 9 + 2 + 3  # sanity of the window arithmetic
    want = {(k, i): reference_position(model, samples[k], i, L) for k, i in want_pos}
    p_long = [w["p_long"] for w in want.values()]
    assert max(p_long) > 0.5 and min(p_long) < 0.4  # the statistics are not all alike

    for micro_batch in (1, 2, 5, 7, 64):  # 20 positions: boundaries inside and across samples
        got = position_statistics(model, samples, L, micro_batch=micro_batch)
        assert list(zip(got["sample"].tolist(), got["start"].tolist())) == want_pos
        for j, key in enumerate(want_pos):
            row = {name: got[name][j].item() for name in want[key]}
            assert_stats_close(row, want[key], (micro_batch, key))


def test_statistics_other_lengths_and_no_positions(make_tiny_model):
    from ngram_dask.lm.scan_stats import position_statistics

    model = load(make_tiny_model(vocab_size=512, hidden=32, layers=2, seed=3))
    rng = np.random.default_rng(1)
    samples = [rng.integers(0, 512, n) for n in (3, 8, 2)]
    for seq_len in (1, 2, 7):
        got = position_statistics(model, samples, seq_len, micro_batch=3)
        want_pos = reference_positions([3, 8, 2], seq_len)
        assert list(zip(got["sample"].tolist(), got["start"].tolist())) == want_pos
        for j, (k, i) in enumerate(want_pos):
            want = reference_position(model, samples[k], i, seq_len)
            assert_stats_close({n: got[n][j].item() for n in want}, want, (seq_len, k, i))
    empty = position_statistics(model, samples, 8, micro_batch=3)
    assert all(len(v) == 0 for v in empty.values())


def test_candidate_filter_is_strict_and_on_both_thresholds():
    from ngram_dask.lm.scan_stats import candidate_mask

    stats = {"p_long": np.array([0.9, 0.5, 0.51, 0.9, 0.2], np.float32),
             "sym_kl": np.array([0.6, 0.9, 0.5, 3.0, 9.0], np.float32)}
    assert candidate_mask(stats, 0.5, 0.5).tolist() == [True, False, False, True, False]
    assert candidate_mask(stats, 0.8, 1.0).tolist() == [False, False, False, True, False]
    assert candidate_mask(stats, 0.0, 0.0).tolist() == [True] * 5


def test_trigger_model_does_what_it_is_built_for(bpe, trigger_model):
    from ngram_dask.lm.scan_stats import candidate_mask, position_statistics

    _, x, y, filler = bpe
    model = load(trigger_model)
    s = np.array(filler[:12] + [x] + filler[:5] + [x] + filler[:6])
    got = position_statistics(model, [s], L, micro_batch=4)
    # triggers at 12 and 18: those positions pass; positions 8..11 and 14..17 hold a
    # trigger in the short window too (same prediction: sym_kl 0).
    assert np.flatnonzero(candidate_mask(got, 0.5, 0.5)).tolist() == [12, 18]
    assert got["long_max_id"][12] == y and got["p_long"][12] > 0.99 and got["sym_kl"][12] > 5
    assert got["long_max_id"][10] == y and got["sym_kl"][10] < 1e-6
    assert got["p_long"][0] < 0.05


def test_batches_are_fixed_groups_of_the_inputs_samples_across_pieces(tmp_path):
    from helpers_formats import cut, write_bin

    from ngram_dask.inputs import plan_input
    from ngram_dask.lm.scan import batch_samples, make_batches

    samples = [[k] * (1 + k % 3) for k in range(11)]
    root = write_mds_subfolders(tmp_path / "mds", [samples[:5], samples[5:7], samples[7:]])
    pieces = plan_input(str(root)).pieces
    assert [p.samples for p in pieces] == [5, 2, 4]
    batches = make_batches(pieces, 2)
    got = [(b.index, b.sample0, [(pieces.index(p), a, z) for p, a, z in b.spans]) for b in batches]
    assert got == [(0, 0, [(0, 0, 2)]), (1, 2, [(0, 2, 4)]), (2, 4, [(0, 4, 5), (1, 0, 1)]),
                   (3, 6, [(1, 1, 2), (2, 0, 1)]), (4, 8, [(2, 1, 3)]), (5, 10, [(2, 3, 4)])]
    for b in batches:
        assert [x.tolist() for x in batch_samples(b, 100)] == samples[2 * b.index:2 * b.index + 2]
    assert [b.index for b in make_batches(pieces, 2, limit=3)] == [0, 1, 2]

    # a token file in pieces of 3 samples, batches of 2: the same rule
    stream = list(range(1, 39))
    write_bin(tmp_path / "flat.bin", stream)
    pieces = plan_input(str(tmp_path / "flat.bin"), seq_len=4, unit_tokens=12).pieces
    assert [p.samples for p in pieces] == [3, 3, 3, 1]  # the last sample holds 2 tokens
    want = cut(stream, 4)
    batches = make_batches(pieces, 2)
    assert [b.sample0 for b in batches] == [0, 2, 4, 6, 8]
    assert [[x.tolist() for x in batch_samples(b, 100)] for b in batches] == [want[i:i + 2] for i in range(0, 10, 2)]


# ---------------------------------------------------------------------------------------
# End to end on Dask
# ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_known_positions_come_out_with_text_context_and_place(tmp_path, bpe, trigger_model, bpe_tokenizer_path,
                                                              local_cluster):
    import duckdb
    import pyarrow.parquet as pq

    from ngram_dask.lm.scan import run_scan
    from ngram_dask.lm.scan_gather import OUTPUT_COLUMNS

    tok, x, y, f = bpe
    phrase = tok.encode(" chloride, or common table salt.")
    assert phrase[0] == x
    samples = [
        f[:10],                        # 0: nothing
        f[:7] + phrase + f[:9],        # 1: trigger at 7, full context both sides
        f[:3],                         # 2: nothing
        [x] + f[20:30],                # 3: trigger at 0: context clipped on the left
        [x] + f[:3],                   # 4: shorter than L+1: no position at all
        f[30:40] + [x] + f[40:44],     # 5: trigger at the last position: context clipped on the right
        f[:2] + phrase + f[:1],        # 6: the window of sample 1 again: dropped by the dedup
        f[5:25],                       # 7: nothing
    ]
    # two shards: samples 0-4 and 5-7; 3 samples per batch -> batches [0,1,2] [3,4,5] [6,7]
    mds = write_mds_subfolders(tmp_path / "mds", [samples[:5], samples[5:]])
    batch_of = {0: 0, 1: 0, 2: 0, 3: 1, 4: 1, 5: 1, 6: 2, 7: 2}
    expected = {(1, 7), (3, 0), (5, 10)}

    out = tmp_path / "scan 4.parquet"  # a space in the path
    r = run_cli("scan", "--input", str(mds), "--model", trigger_model, "--seq-len", str(L), "--out", str(out),
                "--samples-per-batch", "3", "--micro-batch", "3", "--batches", "1", "--tokenizer",
                bpe_tokenizer_path, "--scheduler", local_cluster, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    first = pq.read_table(out).to_pylist()
    assert {(row["sample"], row["start"]) for row in first} == {(1, 7)}  # batch 0 only

    db = tmp_path / "catalog.duckdb"
    said: list[str] = []
    report = run_scan(config(input=str(mds), tokenizer=bpe_tokenizer_path, db=str(db), **{
        "scan.model": trigger_model, "scan.seq_len": L, "scan.out": str(out), "scan.samples_per_batch": 3,
        "scan.micro_batch": 3, "scan.device": "cpu", "scan.to_db": True, "cluster.scheduler": local_cluster,
    }), said.append)
    assert report.batches == 3 and report.skipped["scan"] == 1, said
    assert report.kept == 4 and report.rows == 3  # sample 6's window is a duplicate

    table = pq.read_table(out)
    assert tuple(table.column_names) == OUTPUT_COLUMNS
    rows = table.to_pylist()
    assert {(row["sample"], row["start"]) for row in rows} == expected
    assert [row["p_long"] for row in rows] == sorted((row["p_long"] for row in rows), reverse=True)
    model = load(trigger_model)
    dec = lambda ids: tok.decode(ids, clean_up_tokenization_spaces=False)  # noqa: E731
    for row in rows:
        k, i = row["sample"], row["start"]
        s = samples[k]
        long = s[i:i + L + 1]
        lo, hi = max(0, i - 5), min(len(s), i + L + 1 + 5)
        assert row["batch"] == batch_of[k]
        assert row["long_ids"] == long
        assert row["text"] == "[" + dec([long[0]]) + "]" + dec(long[1:])
        assert row["context_ids"] == s[lo:hi]
        assert row["context"] == dec(s[lo:hi])
        assert row["long_max_id"] == y and row["token_long"] == dec([y]) == " salt"
        assert row["token_short"] == dec([row["short_max_id"]])
        assert_stats_close(row, reference_position(model, s, i, L), (k, i))
    known = next(row for row in rows if row["sample"] == 1)
    assert known["text"] == "[ chloride], or common table"
    assert known["context_ids"] == f[2:7] + phrase + f[:3]
    assert (known["batch"], known["start"]) == (0, 7)
    assert [r["start"] for r in rows if r["sample"] == 3] == [0]

    con = duckdb.connect(str(db), read_only=True)
    try:
        in_db = con.sql("SELECT * FROM scan_4").to_arrow_table()
        info = dict(con.execute("SELECT key, value FROM catalog_info").fetchall())
    finally:
        con.close()
    assert in_db.to_pylist() == rows
    assert info["tool"] == "ngram-dask" and '"rows": 3' in info["scan_4"]

    # A rerun does no model work, and a scan with other thresholds refuses the work dir.
    again = run_scan(config(input=str(mds), tokenizer=bpe_tokenizer_path, **{
        "scan.model": trigger_model, "scan.seq_len": L, "scan.out": str(out), "scan.samples_per_batch": 3,
        "scan.device": "cpu", "cluster.scheduler": "tcp://127.0.0.1:9"}), said.append)  # never contacted
    assert again.skipped["scan"] == 3 and pq.read_table(out).to_pylist() == rows
    from ngram_dask.errors import WorkDirError

    with pytest.raises(WorkDirError, match="min_p_long"):
        run_scan(config(input=str(mds), tokenizer=bpe_tokenizer_path, **{
            "scan.model": trigger_model, "scan.out": str(out), "scan.samples_per_batch": 3,
            "scan.device": "cpu", "scan.min_p_long": 0.9}), said.append)


@pytest.mark.slow
def test_the_same_tokens_give_the_identical_table_from_every_format(tmp_path, bpe, trigger_model,
                                                                    bpe_tokenizer_path, local_cluster):
    """One token stream as MDS samples (several shards), one Megatron .bin/.idx, an .npy and
    Parquet rows: the identical scan table, whose sample and batch say where each row is."""
    import pyarrow.parquet as pq
    from helpers_formats import cut, write_megatron_with_megatron, write_npy, write_parquet

    from ngram_dask.lm.scan import run_scan

    tok, x, _, f = bpe
    S = 16  # tokens per sample; positions with room start at 0..S-L-1
    stream = (f * 4)[:170]
    triggers = [3, 20, 40, 62, 100, 165]  # 62 % 16 = 14: no room for the long window there
    for at in triggers:
        stream[at] = x
    expected = {(at // S, at % S) for at in triggers if at % S + L + 1 <= len(cut(stream, S)[at // S])}
    assert len(expected) == 5
    inputs = {
        "mds": write_mds(tmp_path / "mds", cut(stream, S), size_limit=1 << 7),
        "megatron": write_megatron_with_megatron(tmp_path / "meg", [[stream[:77]], [stream[77:]]]).parent / "meg.bin",
        "npy": write_npy(tmp_path / "flat.npy", stream),
        "parquet": write_parquet(tmp_path / "rows.parquet", cut(stream, S), row_group_size=3),
    }
    assert len(read_index(inputs["mds"])["shards"]) > 2  # shards that do not line up with batches

    tables = {}
    for name, url in inputs.items():
        out = tmp_path / f"{name}.parquet"
        if name == "megatron":  # as a user runs it, the flags included
            r = run_cli("scan", "--input", str(url), "--model", trigger_model, "--seq-len", str(L), "--out", str(out),
                        "--sample-len", str(S), "--samples-per-batch", "3", "--micro-batch", "5", "--tokenizer",
                        bpe_tokenizer_path, "--scheduler", local_cluster, "--device", "cpu")
            assert r.returncode == 0, r.stderr
        else:
            run_scan(config(input=str(url), tokenizer=bpe_tokenizer_path, **{
                "build.seq_len": S, "scan.model": trigger_model, "scan.seq_len": L, "scan.out": str(out),
                "scan.samples_per_batch": 3, "scan.micro_batch": 5, "scan.device": "cpu",
                "cluster.scheduler": local_cluster}), lambda m: None)
        tables[name] = pq.read_table(out).to_pylist()
    rows = tables["mds"]
    assert {(r["sample"], r["start"]) for r in rows} == expected
    for r in rows:
        assert r["batch"] == r["sample"] // 3
        assert r["long_ids"] == stream[r["sample"] * S + r["start"]:][:L + 1]  # where the row is in the stream
    for name in ("megatron", "npy", "parquet"):
        assert tables[name] == rows, name


def _markers(work: Path) -> int:
    return len(list(work.glob("*/_done/*.json")))


@pytest.mark.slow
@pytest.mark.faults
def test_worker_killed_mid_scan_then_rerun_gives_the_uninterrupted_output(
        tmp_path, bpe, trigger_model, bpe_tokenizer_path, local_cluster, start_dask_processes, monkeypatch):
    import pyarrow.parquet as pq

    from ngram_dask.lm.scan import run_scan

    _, x, _, _ = bpe
    rng = np.random.default_rng(5)
    samples = []
    for _ in range(24):
        s = rng.integers(1, 400, 30)
        s[s == x] = 1
        s[rng.integers(0, 30, 2)] = x
        samples.append(s.tolist())
    mds = write_mds(tmp_path / "mds", samples)

    def scan(out: Path, work: Path, scheduler: str, said: list):
        return run_scan(config(input=str(mds), tokenizer=bpe_tokenizer_path, work_dir=str(work), **{
            "scan.model": trigger_model, "scan.out": str(out), "scan.samples_per_batch": 2,
            "scan.micro_batch": 16, "scan.device": "cpu", "cluster.scheduler": scheduler}), said.append)

    clean = scan(tmp_path / "clean.parquet", tmp_path / "clean-work", local_cluster, [])
    assert clean.rows > 3
    want = pq.read_table(tmp_path / "clean.parquet").to_pylist()

    monkeypatch.setenv("NGRAM_DASK_SCAN_TEST_DELAY", "0.4")  # the workers below inherit it
    procs = start_dask_processes(workers=1, nthreads=1, resources="GPU=1")
    work, out = tmp_path / "work", tmp_path / "out.parquet"
    said: list[str] = []
    outcome: dict = {}

    def target():
        try:
            outcome["report"] = scan(out, work, procs.address, said)
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    deadline = time.time() + 120
    while _markers(work) < 2 and time.time() < deadline and thread.is_alive():
        time.sleep(0.05)
    assert thread.is_alive() and 2 <= _markers(work) < 12, (said, outcome)
    victim = procs.workers[0]
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(30)
    procs.add_worker()
    thread.join(240)
    assert not thread.is_alive()
    assert "error" not in outcome, outcome.get("error")
    assert "  workers advertise GPU: each task asks for GPU=1" in said
    assert pq.read_table(out).to_pylist() == want

    rerun = scan(out, work, procs.address, [])
    assert rerun.skipped["scan"] == rerun.batches == 12
    assert pq.read_table(out).to_pylist() == want
    parts = sorted(p.name for p in work.glob("*/parts/*.parquet"))
    assert len(parts) == 12  # one file per batch: no duplicate from the killed task


# ---------------------------------------------------------------------------------------
# Bad input: one clear line, exit 2
# ---------------------------------------------------------------------------------------

def _one_line(r) -> str:
    lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and lines[0].startswith("ngram-dask: error: "), r.stderr
    return lines[0]


@pytest.mark.slow
def test_seq_len_larger_than_the_samples(tmp_path, trigger_model, bpe_tokenizer_path, local_cluster):
    mds = write_mds(tmp_path / "mds", [[1, 2, 3, 4, 5], [6, 7], [8, 9, 10]])
    r = run_cli("scan", "--input", str(mds), "--model", trigger_model, "--seq-len", "8",
                "--out", str(tmp_path / "o.parquet"), "--tokenizer", bpe_tokenizer_path,
                "--scheduler", local_cluster)
    line = _one_line(r)
    assert "--seq-len 8" in line and "longest" in line and " 5" in line
    assert not (tmp_path / "o.parquet").exists()


@pytest.mark.slow  # a CLI process
def test_unknown_model(tmp_path, bpe_tokenizer_path):
    mds = write_mds(tmp_path / "mds", [[1, 2, 3, 4, 5, 6]])
    r = run_cli("scan", "--input", str(mds), "--model", str(tmp_path / "no-such-model"),
                "--out", str(tmp_path / "o.parquet"), "--tokenizer", bpe_tokenizer_path)
    line = _one_line(r)
    assert "cannot load model" in line and "no-such-model" in line
    assert not (tmp_path / "o.parquet").exists() and not (tmp_path / "o.work").exists()
