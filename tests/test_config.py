"""Config: defaults < YAML < flags; unknown keys and wrong types are one clear error."""

from __future__ import annotations

import pytest

from ngram_dask.config import load_config
from ngram_dask.errors import ConfigError

from helpers import REPO, run_cli


def test_precedence(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("build:\n  chunks: 7\n  ngrams: [2]\ncluster:\n  n_workers: 3\n")
    cfg = load_config(f, {"build.chunks": "9"})
    assert cfg.build.chunks == 9
    assert cfg.build.ngrams == [2]
    assert cfg.cluster.n_workers == 3
    assert cfg.cluster.dashboard_address == "127.0.0.1:8787"


def test_list_from_flag():
    assert load_config(None, {"build.ngrams": "2,3,4"}).build.ngrams == [2, 3, 4]


@pytest.mark.parametrize("text,match", [
    ("bogus: 1\n", "unknown config key 'bogus'"),
    ("build:\n  chunkz: 3\n", "unknown config key 'build.chunkz'"),
    ("build:\n  chunks: many\n", "'build.chunks' must be an integer"),
    ("build:\n  chunks: true\n", "'build.chunks' must be an integer"),
    ("build: 3\n", "must be a mapping"),
    ("build:\n  ngrams: [2, x]\n", "'build.ngrams' must be an integer"),
    ("build: [\n", "not valid YAML"),
])
def test_bad_config(tmp_path, text, match):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(f)


def test_shipped_configs_load():
    for name in ("demo.yaml", "pile.yaml"):
        cfg = load_config(REPO / "configs" / name)
        assert cfg.build.chunks >= 1


@pytest.mark.parametrize("args,match", [
    (["build", "--input", "x", "--work-dir", "w", "--db", "d.duckdb", "--chunks", "0"], "build.chunks must be >= 1"),
    (["build", "--input", "x", "--work-dir", "w", "--db", "d.duckdb", "--frobnicate"],
     "unrecognized arguments: --frobnicate"),
    (["build", "--input", "x", "--work-dir", "w"], "'db' is required"),
    (["build", "--config", "/nonexistent.yaml"], "config file not found"),
    (["build", "--input", "x", "--work-dir", "w", "--db", "d", "--ngrams", "5", "--vocab-size", "50432"],
     "more than one 64-bit key"),
])
def test_cli_config_errors_are_one_line(tmp_path, args, match):
    r = run_cli(*args, cwd=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and match in lines[0], r.stderr
    assert "Traceback" not in r.stderr
