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
    from ngram_dask.ngrams.demo import DEMO_CONFIG

    for path in (DEMO_CONFIG, REPO / "configs" / "pile.yaml"):
        cfg = load_config(path)
        assert cfg.build.chunks >= 1


@pytest.mark.parametrize("args,match", [
    (["build", "--input", "x", "--work-dir", "w", "--db", "d.duckdb", "--chunks", "0"], "build.chunks must be >= 1"),
    (["build", "--input", "x", "--work-dir", "w", "--db", "d.duckdb", "--frobnicate"],
     "unrecognized arguments: --frobnicate"),
    (["build", "--input", "x", "--work-dir", "w"], "'db' is required"),
    (["build", "--config", "/nonexistent.yaml"], "config file not found"),
    (["build", "--input", "x", "--work-dir", "w", "--db", "d", "--ngrams", "5", "--vocab-size", "50432"],
     "more than one 64-bit key"),
    (["serve", "--db", "x.duckdb", "--port", "70000"], "serve.port must be between 0 and 65535"),
    (["query", "--db", "x.duckdb", "--top", "0", "hi"], "query.top must be >= 1"),
    (["export", "--db", "x.duckdb"], "'export.out' is required (flag --out"),
    (["export", "--db", "x.duckdb", "--out", "o", "--layout", "flat"], "export.layout must be default or original"),
    (["report", "--db", "x.duckdb"], "'report.out' is required (flag --out"),
    (["verify"], "'db' is required (flag --db"),
    (["demo", "--n-workers", "0"], "demo.n_workers must be >= 1"),
    (["demo", "--n-workers", "two"], "'demo.n_workers' must be an integer"),
])
def test_cli_config_errors_are_one_line(tmp_path, args, match):
    r = run_cli(*args, cwd=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and match in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert not list(tmp_path.iterdir())  # refused before anything was written


@pytest.mark.parametrize("overrides,match", [
    ({"build.chunks": "0"}, "build.chunks must be >= 1"),
    ({"build.count_engine": "gpu"}, "build.count_engine must be auto, duckdb or numpy"),
    ({"convert.txt_mode": "page"}, "convert.txt_mode must be file or line"),
    ({"convert.size_limit": "5GiB"}, "convert.size_limit must be between 1 byte and 4 GiB"),
    ({"score.tables": "bigrams"}, r"only the catalog's top_\* tables are scored"),
    ({"score.batch_sizes": "12b=0"}, "score.batch_sizes"),
    ({"scan.device": "tpu"}, "unknown device 'tpu'"),
    ({"scan.dtype": "float8"}, "unknown dtype 'float8'"),
    ({"cluster.n_workers": "0"}, "cluster.n_workers must be >= 1"),
    ({"vocab_size": "1"}, "vocab_size must be >= 2"),
    ({"serve.port": "70000"}, "serve.port must be between 0 and 65535, got 70000"),
    ({"serve.port": "http"}, "'serve.port' must be an integer"),
    ({"query.top": "0"}, "query.top must be >= 1"),
    ({"query.json": "maybe"}, "'query.json' must be true or false"),
    ({"export.layout": "flat"}, "export.layout must be default or original"),
    ({"export.counts": "int8"}, "export.counts must be uint64 or uint32"),
    ({"export.split_rows": "-1"}, "export.split_rows must be >= 0"),
    ({"demo.n_workers": "0"}, "demo.n_workers must be >= 1"),
    ({"cluster.kind": "kubernetes"}, "cluster.kind must be local, address or slurm, got 'kubernetes'"),
    ({"cluster.kind": "address"}, "cluster.kind address needs --scheduler ADDRESS or --scheduler-file PATH"),
    ({"cluster.kind": "slurm", "cluster.scheduler": "tcp://h:1"},
     "--scheduler attaches to a running scheduler: it cannot go with cluster.kind slurm"),
    ({"cluster.kind": "local", "cluster.scheduler_file": "s.json"},
     "--scheduler-file attaches to a running scheduler: it cannot go with cluster.kind local"),
    ({"cluster.scheduler": "tcp://h:1", "cluster.scheduler_file": "s.json"},
     "give --scheduler or --scheduler-file, not both"),
    ({"cluster.wait_timeout": "0"}, "cluster.wait_timeout must be > 0 seconds"),
    ({"cluster.wait_workers": "0"}, "cluster.wait_workers must be >= 1"),
    ({"cluster.slurm.jobs": "0"}, "cluster.slurm.jobs must be >= 1"),
    ({"cluster.slurm.min_jobs": "3", "cluster.slurm.max_jobs": "2"}, "cluster.slurm.max_jobs must be >= 3"),
    ({"cluster.slurm.min_jobs": "0", "cluster.slurm.max_jobs": "2"}, "cluster.slurm.min_jobs must be >= 1"),
    ({"cluster.slurm.cores": "6", "cluster.slurm.processes": "4"},
     r"cluster.slurm.cores \(6\) must be a multiple of cluster.slurm.processes \(4\)"),
    ({"cluster.slurm.memory": "plenty"}, "cluster.slurm.memory must be a size like 16GiB, got 'plenty'"),
    ({"cluster.slurm.walltime": "2h"}, "cluster.slurm.walltime must be like 01:00:00"),
    ({"cluster.slurm.partiton": "gpu"}, "unknown config key 'cluster.slurm.partiton'"),
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
    assert " ".join(describe("build.explode_unit_tokens").split()) in flat
    assert "(config key build.chunks; default 64)" in flat


def test_options_doc_is_current():
    """docs/options.md is written from the settings; regenerate it after changing one."""
    from ngram_dask.cli.options_doc import options_markdown

    assert (REPO / "docs" / "options.md").read_text() == options_markdown(), \
        "run: python -m ngram_dask.cli.options_doc > docs/options.md"


# --- the reader commands' settings: query, serve, export, report, demo --------------------

READER_YAML = """\
query: {top: 3, json: true}
serve: {host: 0.0.0.0, port: 0}
export: {out: exp, tables: [top_bigrams], split_rows: 10, layout: original, counts: uint32,
         push_to_hub: me/pile_, private: true}
report: {out: rep}
demo: {out: d, n_workers: 1}
"""


def test_reader_command_settings_from_yaml(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(READER_YAML)
    cfg = load_config(f)
    assert (cfg.query.top, cfg.query.json) == (3, True)
    assert (cfg.serve.host, cfg.serve.port) == ("0.0.0.0", 0)
    e = cfg.export
    assert (e.out, e.tables, e.split_rows, e.layout, e.counts, e.push_to_hub, e.private) == (
        "exp", ["top_bigrams"], 10, "original", "uint32", "me/pile_", True)
    assert cfg.report.out == "rep" and (cfg.demo.out, cfg.demo.n_workers) == ("d", 1)
    defaults = load_config(None)
    assert (defaults.query.top, defaults.serve.port, defaults.export.layout, defaults.demo.out) == (
        5, 8000, "default", "demo-output")


@pytest.mark.parametrize("argv,expected", [
    (["query", "--top", "7", "--json", "p"], {"query.top": 7, "query.json": True, "serve.port": 0}),
    (["query", "-k", "2", "p"], {"query.top": 2, "query.json": True}),
    (["serve", "--host", "::1", "--port", "9"], {"serve.host": "::1", "serve.port": 9}),
    (["export", "--out", "o", "--tables", "a, b", "--split-rows", "0", "--layout", "default",
      "--counts", "uint64", "--push-to-hub", "me/x", "--private"],
     {"export.out": "o", "export.tables": ["a", "b"], "export.split_rows": 0, "export.layout": "default",
      "export.counts": "uint64", "export.push_to_hub": "me/x", "export.private": True}),
    (["report", "--out", "r2"], {"report.out": "r2"}),
    (["demo", "--out", "d2", "--n-workers", "3"], {"demo.out": "d2", "demo.n_workers": 3}),
])
def test_reader_command_flags_override_the_file(tmp_path, argv, expected):
    from ngram_dask.cli.common import config_from
    from ngram_dask.cli.main import build_parser

    f = tmp_path / "c.yaml"
    f.write_text(READER_YAML)
    cfg = config_from(build_parser().parse_args(argv[:1] + ["--config", str(f)] + argv[1:]))
    assert {k: cfg.get(k) for k in expected} == expected



def test_every_option_of_every_command_is_a_setting():
    """Each flag but the common ones (--config, -q, -v, --help) sets a config key, so its help
    names the key and YAML can set it too."""
    import argparse

    from ngram_dask.cli.main import build_parser
    from ngram_dask.config import RENAMED_KEYS, setting_help

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    common = {"_config", "_quiet", "_verbose", "help"}
    for name, p in sub.choices.items():
        for a in p._actions:
            if not a.option_strings or a.dest in common:
                continue
            if a.help == argparse.SUPPRESS:  # an old name, hidden: it must be one the config renames
                assert a.dest in RENAMED_KEYS, (name, a.option_strings)
                continue
            assert "(config key " in (a.help or ""), (name, a.option_strings)
            setting_help(a.dest)  # a real key of the config


def test_default_tokenizer_is_named_once():
    import re

    from ngram_dask.tokenizer import DEFAULT_TOKENIZER

    assert load_config(None).tokenizer == DEFAULT_TOKENIZER
    hits = [str(p.relative_to(REPO)) for p in (REPO / "ngram_dask").rglob("*.py")
            if re.search(r"[\"']" + re.escape(DEFAULT_TOKENIZER) + r"[\"']", p.read_text())]
    assert hits == ["ngram_dask/tokenizer.py"]


@pytest.mark.parametrize("overrides,kind", [
    ({}, "local"),
    ({"cluster.scheduler": "tcp://h:8786"}, "address"),
    ({"cluster.scheduler_file": "s.json"}, "address"),
    ({"cluster.kind": "slurm"}, "slurm"),
    ({"cluster.kind": "local"}, "local"),
])
def test_the_cluster_kind_follows_from_the_addresses_given(overrides, kind):
    assert load_config(None, overrides).cluster.runs_on == kind


def test_slurm_flags_and_yaml_set_the_slurm_section(tmp_path):
    from ngram_dask.cli.common import config_from
    from ngram_dask.cli.main import build_parser

    (tmp_path / "c.yaml").write_text("cluster:\n  slurm:\n    partition: cpu\n    job_extra: [--qos=high]\n"
                                     "    max_jobs: 8\n")
    args = build_parser().parse_args(["contexts", "--config", str(tmp_path / "c.yaml"), "--slurm",
                                      "--slurm-partition", "gpu", "--slurm-gres", "gpu:2", "--slurm-processes", "2",
                                      "--slurm-cores", "8", "--wait-timeout", "30"])
    cfg = config_from(args).cluster
    assert (cfg.runs_on, cfg.wait_timeout) == ("slurm", 30)
    assert (cfg.slurm.partition, cfg.slurm.gres, cfg.slurm.processes, cfg.slurm.cores) == ("gpu", "gpu:2", 2, 8)
    assert (cfg.slurm.job_extra, cfg.slurm.max_jobs, cfg.slurm.min_jobs) == (["--qos=high"], 8, 1)


def test_old_names_still_work_for_one_release_with_one_line_each(tmp_path, capsys):
    """docs/glossary.md: renamed keys, a renamed section and renamed build steps are read as
    the new ones, each use said once on stderr."""
    old = tmp_path / "old.yaml"
    old.write_text("build:\n  explode_task_tokens: 1000\n  steps: [explode, aggregate, load, catalog, contexts]\n"
                   "score:\n  rows_per_task: 7\ncatalog:\n  top_trigram_min_count: 3\n")
    cfg = load_config(old)
    assert cfg.build.explode_unit_tokens == 1000 and cfg.score.rows_per_unit == 7
    assert cfg.top.top_trigram_min_count == 3
    assert cfg.build.steps == ["explode", "aggregate", "load", "top"] and cfg.build.contexts is True
    said = capsys.readouterr().err.splitlines()
    assert len(said) == 5 and all(line.startswith("ngram-dask: deprecated: ") for line in said), said
    assert "'build.explode_task_tokens' is now 'build.explode_unit_tokens'" in said[0]
    # The new names say nothing.
    new = tmp_path / "new.yaml"
    new.write_text("build:\n  explode_unit_tokens: 1000\n  steps: [explode, top]\n  contexts: true\n")
    assert load_config(new).build.steps == ["explode", "top"]
    assert capsys.readouterr().err == ""


def test_an_old_flag_works_and_says_its_new_name(tmp_path):
    r = run_cli("build", "--input", str(tmp_path / "missing"), "--work-dir", str(tmp_path / "w"),
                "--db", str(tmp_path / "c.duckdb"), "--explode-task-tokens", "1000", "--steps", "explode,catalog")
    lines = r.stderr.splitlines()
    assert lines[:2] == [
        "ngram-dask: deprecated: 'build.explode_task_tokens' is now 'build.explode_unit_tokens'; "
        "the old name works until the next release",
        "ngram-dask: deprecated: build step 'catalog' is now 'top'; the old name works until the next release"]
    assert r.returncode == 2 and len(lines) == 3 and "missing" in lines[2]  # then the input's own one line
