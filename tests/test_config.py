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


@pytest.mark.parametrize("overrides,match", [
    ({"build.chunks": "0"}, "build.chunks must be >= 1"),
    ({"build.count_engine": "gpu"}, "build.count_engine must be duckdb or numpy"),
    ({"convert.txt_mode": "page"}, "convert.txt_mode must be file or line"),
    ({"convert.size_limit": "5GiB"}, "convert.size_limit must be between 1 byte and 4 GiB"),
    ({"score.tables": "bigrams"}, r"only the catalog's top_\* tables are scored"),
    ({"score.batch_sizes": "12b=0"}, "score.batch_sizes"),
    ({"scan.device": "tpu"}, "unknown device 'tpu'"),
    ({"scan.dtype": "float8"}, "unknown dtype 'float8'"),
    ({"cluster.n_workers": "0"}, "cluster.n_workers must be >= 1"),
    ({"vocab_size": "1"}, "vocab_size must be >= 2"),
])
def test_every_value_is_checked_when_the_config_loads(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, overrides)


def test_a_command_checks_what_it_needs_and_values_changed_after_loading():
    cfg = load_config(None, {"input": "x", "work_dir": "w"})
    with pytest.raises(ConfigError, match="'db' is required"):
        cfg.check("build")
    cfg.db = "d.duckdb"
    cfg.check("build")
    cfg.build.chunks = 0  # set in code after loading: still refused before the build starts
    with pytest.raises(ConfigError, match="build.chunks must be >= 1"):
        cfg.check("build")
    with pytest.raises(ConfigError, match="no models to score"):
        load_config(None, {"db": "d.duckdb"}).check("score")
    with pytest.raises(ConfigError, match="scan.to_db needs a database"):
        load_config(None, {"input": "x", "scan.model": "70m", "scan.out": "o", "scan.to_db": "true"}).check("scan")


def test_help_text_comes_from_the_setting():
    from ngram_dask.config import describe

    r = run_cli("build", "--help")
    assert r.returncode == 0
    flat = " ".join(r.stdout.split())
    assert " ".join(describe("build.explode_task_tokens").split()) in flat
    assert "(config key build.chunks; default 64)" in flat


def test_options_doc_is_current():
    """docs/options.md is written from the settings; regenerate it after changing one."""
    from ngram_dask.cli.options_doc import options_markdown

    assert (REPO / "docs" / "options.md").read_text() == options_markdown(), \
        "run: python -m ngram_dask.cli.options_doc > docs/options.md"
