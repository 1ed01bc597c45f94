"""`ngram-dask score`: p_<model> columns on the top tables, checked against plain transformers.

A small catalog is built once per module (token ids < 360, vocab 512); two tiny random
GPT-NeoX models of different sizes score it on CPU. Every probability must equal a
direct, unbatched computation (one forward pass per row), across batch boundaries,
the last partial batch and several tasks per table.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers import db_rows, run_cli, write_mds

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]  # a catalog, tiny models on dask worker processes

TABLES = {"top_bigrams": 2, "top_trigrams": 3}
UNREACHABLE = "tcp://127.0.0.1:9"  # bad input must be refused before any cluster is contacted


def phrase_corpus(seed: int = 0) -> list[np.ndarray]:
    """60 fixed 5-token phrases (ids 1..299 of a permutation of 1..359) in random order:
    inside a phrase the next token is certain, so the top tables have a few hundred rows."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(np.arange(1, 360))
    phrases = [perm[i * 5:(i + 1) * 5] for i in range(60)]
    return [np.concatenate([phrases[k] for k in rng.integers(0, 60, size=40)]) for _ in range(30)]


@pytest.fixture(scope="module")
def gpu_procs(tmp_path_factory):
    """`dask scheduler` + one `dask worker --nthreads 1 --resources GPU=1` as processes (CPU device):
    what start_gpu_procs(workers=1, nthreads=1, resources="GPU=1") starts, kept for the module."""
    from conftest import DaskProcesses

    procs = DaskProcesses(tmp_path_factory.mktemp("score-procs"), workers=1, nthreads=1, resources="GPU=1")
    try:
        yield procs
    finally:
        procs.close()


@pytest.fixture(scope="module")
def catalog(tmp_path_factory, bpe_tokenizer_path, gpu_procs) -> Path:
    from ngram_dask.cli import main

    root = tmp_path_factory.mktemp("score-catalog")
    write_mds(root / "mds", phrase_corpus())
    (root / "catalog.yaml").write_text("top:\n  top_trigram_min_count: 3\n")
    rc = main(["build", "--input", str(root / "mds"), "--work-dir", str(root / "work"),
               "--db", str(root / "ngrams.duckdb"), "--tokenizer", bpe_tokenizer_path, "--vocab-size", "512",
               "--chunks", "4", "--config", str(root / "catalog.yaml"), "--scheduler", gpu_procs.address, "-q"])
    assert rc == 0
    db = root / "ngrams.duckdb"
    counts = {t: db_rows(db, f"SELECT count(*) FROM {t}")[0][0] for t in TABLES}
    assert counts["top_bigrams"] > 150 and counts["top_trigrams"] > 150, counts
    assert db_rows(db, "SELECT max(greatest(id0, id1, id2)) FROM top_trigrams")[0][0] < 360
    return db


@pytest.fixture(scope="module")
def models(make_tiny_model) -> dict[str, str]:
    return {"a": make_tiny_model(vocab_size=512, hidden=32, layers=2, heads=4, seed=0),
            "b": make_tiny_model(vocab_size=512, hidden=64, layers=3, heads=4, seed=1)}


def col(path: str) -> str:
    from ngram_dask.lm.models import column_name

    return column_name(path)


def keyed(db, table: str, column: str) -> dict[tuple, float]:
    n = TABLES[table]
    ids = ", ".join(f"id{j}" for j in range(n))
    return {tuple(r[:n]): r[n] for r in db_rows(db, f"SELECT {ids}, {column} FROM {table}")}


@pytest.fixture(scope="module")
def reference(catalog, models) -> dict[tuple[str, str], dict[tuple, float]]:
    """(model key, table) -> {ids: p}: one unbatched fp32 forward pass per row, no BOS."""
    import torch
    from transformers import GPTNeoXForCausalLM

    out = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is fastest, and the box is shared
    try:
        for key, path in models.items():
            model = GPTNeoXForCausalLM.from_pretrained(path).float().eval()
            for table, n in TABLES.items():
                ids = ", ".join(f"id{j}" for j in range(n))
                ref = {}
                with torch.no_grad():
                    for row in db_rows(catalog, f"SELECT {ids} FROM {table}"):
                        logits = model(input_ids=torch.tensor([list(row[:-1])])).logits[0, -1]
                        ref[tuple(row)] = torch.softmax(logits, dim=-1)[row[-1]].item()
                out[key, table] = ref
    finally:
        torch.set_num_threads(threads)
    return out


def assert_matches(db, models, reference, keys=("a", "b")) -> None:
    for key in keys:
        for table in TABLES:
            got = keyed(db, table, col(models[key]))
            ref = reference[key, table]
            assert got.keys() == ref.keys()
            rows = sorted(ref)
            np.testing.assert_allclose([got[r] for r in rows], [ref[r] for r in rows], rtol=1e-5, atol=1e-9,
                                       err_msg=f"model {key}, {table}")


def fingerprint(db: Path) -> tuple:
    return (hashlib.sha256(db.read_bytes()).hexdigest(), db.stat().st_mtime_ns,
            os.path.exists(f"{db}.wal"))


def score(*args: str) -> int:
    from ngram_dask.cli import main

    return main(["score", *args])


def worker_loads(address: str) -> dict[str, int]:
    from distributed import Client

    from ngram_dask.lm.models import load_counts

    with Client(address) as client:
        (loads,) = client.run(load_counts).values()
    return loads


@pytest.fixture(scope="module")
def scored(catalog, models, gpu_procs, tmp_path_factory):
    """Both models scored once, 50 rows per task, batch 7 (model b: 5): (db, console output, loads)."""
    import contextlib
    import io

    root = tmp_path_factory.mktemp("scored")
    db = root / "ngrams.duckdb"
    shutil.copy(catalog, db)
    (root / "score.yaml").write_text(
        "score:\n  device: cpu\n  batch_size: 7\n  rows_per_unit: 50\n"
        f"  batch_sizes: ['{models['b']}=5']\n")
    before = worker_loads(gpu_procs.address)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = score("--db", str(db), "--models", f"{models['a']},{models['b']}",
                   "--config", str(root / "score.yaml"), "--scheduler", gpu_procs.address)
    assert rc == 0, out.getvalue()
    after = worker_loads(gpu_procs.address)
    loads = {k: after.get(k, 0) - before.get(k, 0) for k in models.values()}
    return db, out.getvalue(), loads


def test_scores_equal_unbatched_transformers(scored, models, reference):
    """Dask processes whose worker advertises GPU=1 (CPU device): tasks ask for the resource,
    240 + 182 rows in tasks of 50 and batches of 7 / 5 (partial last batches and tasks)."""
    db, out, loads = scored
    assert_matches(db, models, reference)
    for table in TABLES:
        types = dict(db_rows(db, "SELECT column_name, data_type FROM information_schema.columns "
                                 "WHERE table_name = ?", [table]))
        assert types[col(models["a"])] == "DOUBLE" and types[col(models["b"])] == "DOUBLE"
    info = json.loads(db_rows(db, "SELECT value FROM catalog_info WHERE key = 'scored_models'")[0][0])
    rows = {t: db_rows(db, f"SELECT count(*) FROM {t}")[0][0] for t in TABLES}
    for key in "ab":
        assert info[col(models[key])]["tables"] == rows
        assert info[col(models[key])]["dtype"] == "float32"
    assert "each task asks for GPU=1" in out
    assert "(batch 7, 50 rows per task)" in out and "(batch 5, 50 rows per task)" in out
    assert "rows/s" in out and "summary: mean probability" in out
    mean_a = db_rows(db, f"SELECT avg({col(models['a'])}) FROM top_bigrams")[0][0]
    assert f"{mean_a:.4f}" in out
    # 9 tasks per model on one worker: the model is loaded once, not once per task
    assert loads == {models["a"]: 1, models["b"]: 1}


def test_task_resources_follow_what_workers_advertise(gpu_procs, local_cluster):
    from distributed import Client

    from ngram_dask.runtime import gpu_resources

    with Client(gpu_procs.address) as client:
        assert gpu_resources(client) == {"GPU": 1}
    with Client(local_cluster) as client:  # workers without resources: tasks must not ask for one
        assert gpu_resources(client) is None


def test_rerun_skips_scored_models_and_force_rescores(scored, models, reference, gpu_procs, tmp_path, capsys):
    src, _, _ = scored
    db = tmp_path / "ngrams.duckdb"
    shutil.copy(src, db)
    import duckdb

    a, b = col(models["a"]), col(models["b"])
    con = duckdb.connect(str(db))
    con.execute(f"UPDATE top_bigrams SET {a} = -1, {b} = -2")  # marks: a rescore would overwrite them
    con.close()
    before = fingerprint(db)
    # Everything scored: nothing runs, so not even the (unreachable) scheduler is contacted.
    assert score("--db", str(db), "--models", f"{models['a']},{models['b']}", "--scheduler", UNREACHABLE) == 0
    out = capsys.readouterr().out
    assert f"{a}: already scored on top_bigrams, top_trigrams; skipped" in out
    assert f"{b}: already scored" in out and "summary" in out
    assert fingerprint(db) == before
    assert set(keyed(db, "top_bigrams", a).values()) == {-1}

    assert score("--db", str(db), "--models", models["a"], "--force", "--device", "cpu",
                 "--rows-per-unit", "1000", "--scheduler", gpu_procs.address) == 0
    out = capsys.readouterr().out
    assert "already scored" not in out and "written" in out
    assert_matches(db, models, reference, keys=("a",))
    assert set(keyed(db, "top_bigrams", b).values()) == {-2}  # b was not asked for: untouched
    assert keyed(db, "top_trigrams", b) == pytest.approx(reference["b", "top_trigrams"], rel=1e-5)


def test_one_table_then_the_other(catalog, models, reference, gpu_procs, tmp_path, capsys):
    db = tmp_path / "ngrams.duckdb"
    shutil.copy(catalog, db)
    a = col(models["a"])
    assert score("--db", str(db), "--models", models["a"], "--table", "top_bigrams", "--device", "cpu",
                 "--scheduler", gpu_procs.address) == 0
    cols = {t: [r[0] for r in db_rows(db, f"DESCRIBE {t}")] for t in TABLES}
    assert a in cols["top_bigrams"] and a not in cols["top_trigrams"]
    capsys.readouterr()

    def score_both_then_check(done: str, redone: str) -> None:
        assert score("--db", str(db), "--models", models["a"], "--device", "cpu",
                     "--scheduler", gpu_procs.address) == 0
        out = capsys.readouterr().out
        assert f"{a}: already scored on {done}; skipped" in out and f"on {redone} (batch" in out
        assert_matches(db, models, reference, keys=("a",))

    score_both_then_check(done="top_bigrams", redone="top_trigrams")

    # A rebuilt top table (the top step's CREATE OR REPLACE) has lost its scores: they are redone.
    import duckdb

    con = duckdb.connect(str(db))
    con.execute(f"CREATE OR REPLACE TABLE top_bigrams AS SELECT * EXCLUDE ({a}) FROM top_bigrams")
    con.close()
    score_both_then_check(done="top_trigrams", redone="top_bigrams")
    info = json.loads(db_rows(db, "SELECT value FROM catalog_info WHERE key = 'scored_models'")[0][0])
    assert set(info[a]["tables"]) == set(TABLES)


def test_crash_mid_model_leaves_no_partial_column(catalog, models, reference, gpu_procs, tmp_path, capsys):
    a, b = col(models["a"]), col(models["b"])
    both = f"{models['a']},{models['b']}"
    common = ["--device", "cpu", "--rows-per-unit", "40", "--batch-size", "16",
              "--scheduler", gpu_procs.address]

    # Killed after the first results of model b arrived: a is complete, b absent.
    db = tmp_path / "one" / "ngrams.duckdb"
    db.parent.mkdir()
    shutil.copy(catalog, db)
    res = run_cli("score", "--db", str(db), "--models", both, *common, env={"NGRAM_DASK_CRASH_IN_SCORE": b})
    assert res.returncode == 86, res.stdout + res.stderr
    cols = {t: [r[0] for r in db_rows(db, f"DESCRIBE {t}")] for t in TABLES}
    assert all(a in c and b not in c for c in cols.values()), cols
    info = json.loads(db_rows(db, "SELECT value FROM catalog_info WHERE key = 'scored_models'")[0][0])
    assert set(info) == {a}
    assert_matches(db, models, reference, keys=("a",))

    # Killed inside b's write transaction, after its first table was updated: still no b.
    res = run_cli("score", "--db", str(db), "--models", both, *common,
                  env={"NGRAM_DASK_CRASH_IN_SCORE": f"{b}:write"})
    assert res.returncode == 86, res.stdout + res.stderr
    assert f"{a}: already scored" in res.stdout
    assert all(b not in [r[0] for r in db_rows(db, f"DESCRIBE {t}")] for t in TABLES)

    # The rerun skips a and scores b.
    assert score("--db", str(db), "--models", both, *common) == 0
    out = capsys.readouterr().out
    assert f"{a}: already scored" in out and f"{b}: {models['b']} on top_bigrams, top_trigrams" in out
    assert_matches(db, models, reference)


def _bad(db: Path, capsys, *args: str) -> str:
    before = fingerprint(db) if db.exists() else None
    rc = score("--db", str(db), *args, "--scheduler", UNREACHABLE)
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ngram-dask: error: "), err
    assert "scheduler" not in err  # refused before any cluster was contacted
    assert (fingerprint(db) if db.exists() else None) == before
    return lines[0]


def test_bad_input_is_one_line_and_leaves_the_database_untouched(catalog, models, make_tiny_model,
                                                                 tmp_path, capsys):
    db = tmp_path / "ngrams.duckdb"
    shutil.copy(catalog, db)
    line = _bad(db, capsys, "--models", str(tmp_path / "no-such-model"))
    assert "cannot load model" in line and "no-such-model" in line
    small = make_tiny_model(vocab_size=256, hidden=32, layers=1, heads=4, seed=2)
    line = _bad(db, capsys, "--models", f"{models['a']},{small}")  # the good model is not scored either
    top = db_rows(db, "SELECT max(greatest(id0, id1)) FROM top_bigrams")[0][0]
    assert "vocabulary of 256 tokens" in line and f"top_bigrams holds token id {top}" in line
    line = _bad(db, capsys, "--models", models["a"], "--table", "top_fourgrams")
    assert "no table top_fourgrams" in line and "ngram-dask build --tokenizer" in line
    line = _bad(db, capsys, "--models", models["a"], "--dtype", "float8")
    assert "unknown dtype" in line
    line = _bad(db, capsys, "--models", models["a"], "--device", "tpu")
    assert "unknown device" in line
    line = _bad(db, capsys, "--device", "cpu")
    assert "no models to score" in line
    for t in TABLES:
        assert col(models["a"]) not in [r[0] for r in db_rows(db, f"DESCRIBE {t}")]

    import duckdb

    counts_only = tmp_path / "counts.duckdb"
    shutil.copy(catalog, counts_only)
    con = duckdb.connect(str(counts_only))
    con.execute("DROP TABLE top_bigrams")
    con.execute("DROP TABLE top_trigrams")
    con.close()
    line = _bad(counts_only, capsys, "--models", models["a"])
    assert "no table top_bigrams" in line and "run `ngram-dask build --tokenizer ...` first" in line

    missing = tmp_path / "missing.duckdb"
    line = _bad(missing, capsys, "--models", models["a"])
    assert "does not exist" in line and not missing.exists()


def test_names_and_settings():
    from ngram_dask.config import load_config
    from ngram_dask.errors import ConfigError
    from ngram_dask.lm.models import column_name
    from ngram_dask.lm.score import parse_batch_sizes, partitions

    assert column_name("1.4b") == "p_pythia_1_4b_deduped"
    assert column_name("./runs/my-model/") == "p_my_model"
    assert parse_batch_sizes(["12b=256", "./m=64"]) == {"EleutherAI/pythia-12b-deduped": 256, "./m": 64}
    for bad in ("12b", "12b=x", "12b=0"):
        with pytest.raises(ConfigError, match="score.batch_sizes"):
            load_config(overrides={"score.batch_sizes": bad})
    assert partitions(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert partitions(0, 4) == []


def test_a_local_cluster_for_a_model_stage_has_one_worker_per_gpu_or_the_stages_cpu_workers():
    from ngram_dask.cluster import stage_cluster
    from ngram_dask.config import load_config

    cpu = load_config(overrides={"score.device": "cpu"}).cluster
    assert stage_cluster(cpu, True, "cpu", cpu_workers=1).n_workers == 1  # not one per core: each loads the model
    assert stage_cluster(cpu, True, "cpu").n_workers is None  # scan on CPU: one worker per core
    assert stage_cluster(cpu, False, "auto") is cpu  # no model: the cluster as configured
    three = load_config(overrides={"cluster.n_workers": 3}).cluster
    assert stage_cluster(three, True, "cpu", cpu_workers=1).n_workers == 3  # the user's choice wins
    attach = load_config(overrides={"cluster.scheduler": "tcp://h:8786"}).cluster
    assert stage_cluster(attach, True, "auto", cpu_workers=1) is attach
