"""The same tokens give the same catalog from every input format, exactly: whole builds on a
real LocalCluster, each table equal across MDS, Megatron, .bin, .npy and Parquet and equal to
the brute-force oracle; flat-file counts also checked against tokengrams."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from helpers_formats import cut, write_bin, write_megatron_with_megatron, write_npy, write_parquet

from ngram_dask.config import load_config
from ngram_dask.ngrams.pipeline import run_build
from ngram_dask.schema import id_columns, ngram_table

from helpers import db_rows, oracle, run_cli, table_dump, write_mds

pytestmark = pytest.mark.slow
TABLES = ["bigrams", "bigram_prefixes", "trigrams", "trigram_prefixes"]


def _build(tmp: Path, url: Path, scheduler: str, name: str, **over):
    overrides = {"input": str(url), "work_dir": str(tmp / f"work-{name}"), "db": str(tmp / f"{name}.duckdb"),
                 "vocab_size": 65536, "build.chunks": 5, "build.steps": "explode,aggregate,load",
                 "build.explode_unit_tokens": 600, "cluster.scheduler": scheduler}
    overrides.update(over)
    cfg = load_config(None, overrides)
    report = run_build(cfg, announce=lambda m: None)
    return cfg.db, report


def _counts(db, n):
    cols = ", ".join(id_columns(n))
    return {tuple(r[:-1]): r[-1] for r in db_rows(db, f"SELECT {cols}, count FROM {ngram_table(n)}")}


def _stream(neox_tokenizer_path) -> list[int]:
    """Real text through the real GPT-NeoX tokenizer, then random and adversarial tails."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(neox_tokenizer_path)
    text = Path(__file__).read_text() + Path(np.__file__).read_text()
    ids = tok(text)["input_ids"]
    rng = np.random.default_rng(1)
    return ids[:2500] + rng.integers(0, 50_000, 700).tolist() + [11] * 60 + [5, 6] * 40


def test_every_format_builds_the_identical_catalog(tmp_path, local_cluster, neox_tokenizer_path):
    stream = _stream(neox_tokenizer_path)
    seq_len = 97
    samples = cut(stream, seq_len)
    write_mds(tmp_path / "mds", samples, size_limit=1 << 11)
    half = len(stream) // 2
    write_megatron_with_megatron(tmp_path / "meg", [[stream[:half]], [stream[half:]]])
    write_bin(tmp_path / "flat.bin", stream)
    write_npy(tmp_path / "flat.npy", stream)
    write_parquet(tmp_path / "rows.parquet", samples, row_group_size=5)
    dumps = {}
    for name, url in [("mds", "mds"), ("megatron", "meg.bin"), ("bin", "flat.bin"), ("npy", "flat.npy"),
                      ("parquet", "rows.parquet")]:
        db, report = _build(tmp_path, tmp_path / url, local_cluster, name, **{"build.seq_len": seq_len})
        assert report.tokens == len(stream), name
        if name != "mds":  # a file of ~3.5k tokens at 600 tokens per task: several tasks
            assert report.pieces >= 5, (name, report.pieces)
        dumps[name] = table_dump(db, TABLES)
    for name, dump in dumps.items():
        assert dump == dumps["mds"], f"{name} differs from mds"
    for n in (2, 3):
        assert _counts(tmp_path / "bin.duckdb", n) == dict(oracle(samples, n))


def test_documents_mode_counts_no_ngram_across_documents(tmp_path, local_cluster):
    rng = np.random.default_rng(2)
    docs = [rng.integers(0, 40, int(k)).tolist() for k in rng.integers(0, 30, 60)]
    write_megatron_with_megatron(tmp_path / "meg", [[d] for d in docs])
    write_parquet(tmp_path / "rows.parquet", docs, row_group_size=7)
    for name, url in [("megatron", "meg.bin"), ("parquet", "rows.parquet")]:
        db, _ = _build(tmp_path, tmp_path / url, local_cluster, name, **{"build.samples": "documents",
                                                                         "build.explode_unit_tokens": 100})
        for n in (2, 3):
            assert _counts(db, n) == dict(oracle(docs, n)), name


def test_flat_bin_counts_equal_tokengrams(tmp_path, local_cluster):
    """tokengrams (a suffix-array index, PyPI) counts the same n-grams of one stream."""
    tokengrams = pytest.importorskip("tokengrams")
    rng = np.random.default_rng(4)
    stream = (rng.zipf(1.3, 20_000) % 3000).astype(np.uint16)
    write_bin(tmp_path / "flat.bin", stream)
    db, _ = _build(tmp_path, tmp_path / "flat.bin", local_cluster, "bin",
                   **{"build.seq_len": len(stream), "build.explode_unit_tokens": 1 << 20})
    index = tokengrams.InMemoryIndex.from_token_file(str(tmp_path / "flat.bin"), None, 65536)
    for n in (2, 3):
        ours = _counts(db, n)
        keys = list(ours)
        picks = [keys[i] for i in rng.choice(len(keys), 300, replace=False)]
        for gram in picks:
            assert index.count(list(gram)) == ours[gram], gram
        assert sum(ours.values()) == len(stream) - n + 1


def test_wide_vocabulary_builds_exactly_and_too_wide_ngrams_are_refused(tmp_path, local_cluster):
    rng = np.random.default_rng(6)
    stream = rng.integers(100_000, 1 << 20, 4000).tolist() + [123_456, 999_999] * 50
    write_bin(tmp_path / "wide.bin", stream, np.uint32)
    db, _ = _build(tmp_path, tmp_path / "wide.bin", local_cluster, "wide",
                   **{"vocab_size": 1 << 20, "build.token_dtype": "uint32", "build.seq_len": 512})
    samples = cut(stream, 512)
    for n in (2, 3):
        assert _counts(db, n) == dict(oracle(samples, n))
    types = dict(db_rows(db, "SELECT column_name, data_type FROM information_schema.columns "
                             "WHERE table_name = 'trigrams'"))
    assert types["id0"] == "UINTEGER"
    r = run_cli("build", "--input", str(tmp_path / "wide.bin"), "--work-dir", str(tmp_path / "w4"),
                "--db", str(tmp_path / "w4.duckdb"), "--vocab-size", str(1 << 20), "--ngrams", "2,3,4")
    assert r.returncode == 2
    assert r.stderr.strip() == ("ngram-dask: error: 4-grams of 20-bit ids need 80 bits, more than one 64-bit key "
                                "holds; ids of 20 bits fit n <= 3")


@pytest.mark.parametrize("damage", ["magic", "short", "odd", "big_id"])
def test_bad_input_is_one_line_and_the_database_stays_byte_identical(tmp_path, local_cluster, damage):
    stream = list(range(1, 300))
    write_bin(tmp_path / "ok.bin", stream)
    db, _ = _build(tmp_path, tmp_path / "ok.bin", local_cluster, "ok", vocab_size=50432)
    before = hashlib.sha256(Path(db).read_bytes()).hexdigest()
    bad = tmp_path / "bad"
    bad.mkdir()
    if damage in ("magic", "short"):
        write_megatron_with_megatron(bad / "m", [[stream]])
        if damage == "magic":
            (bad / "m.idx").write_bytes(b"XXXXXXXXX" + (bad / "m.idx").read_bytes()[9:])
        else:
            (bad / "m.bin").write_bytes((bad / "m.bin").read_bytes()[:100])
    elif damage == "odd":
        (bad / "m.bin").write_bytes(b"\x01\x02\x03")
    else:  # the same input path as the database's, now with an id >= vocab_size: found by a worker
        bad = tmp_path / "ok.bin"
        write_bin(bad, stream[:-1] + [60_000])
    r = run_cli("build", "--input", str(bad), "--work-dir", str(tmp_path / "work-bad"), "--db", db,
                "--chunks", "5", "--steps", "explode,aggregate,load", "--scheduler", local_cluster)
    assert r.returncode == 2, r.stderr
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in r.stderr, r.stderr
    assert ("ok.bin, sample 0: token id 60000 is >= vocab_size" if damage == "big_id" else "m.") in err[0], err
    assert hashlib.sha256(Path(db).read_bytes()).hexdigest() == before
