"""The readers of ``contexts``: Catalog.contexts, export --tasks, the report's tokens."""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest

from ngram_dask.catalog.api import Catalog
from ngram_dask.catalog.report.page import token_html
from ngram_dask.config import load_config
from ngram_dask.contexts.run import run_contexts

from catalog_corpus import TELOME
from helpers import run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def with_contexts(built, local_cluster, tmp_path_factory):
    db, samples = built
    out = tmp_path_factory.mktemp("with-contexts") / "catalog.duckdb"
    shutil.copy(db, out)
    run_contexts(load_config(None, {"db": str(out), "cluster.scheduler": local_cluster}), announce=lambda m: None)
    return out, db


def test_catalog_contexts(with_contexts):
    db, bare = with_contexts
    with Catalog(db) as cat:
        res = cat.contexts(" telome")
        assert res["table"] == "top_bigrams" and res["occurrences"] == 1000 and len(res["examples"]) == 5
        for e in res["examples"]:
            assert e["prompt_text"] == " telome" and e["next_text"] in ("res", " is")
            assert e["matches"] == (e["next_text"] == "res")
            assert e["before"] + e["prompt_text"] + e["next_text"] + e["after"] == cat.decode(
                [t["id"] for t in e["tokens"]])
        assert [e["rank"] for e in cat.contexts([TELOME], limit=2)["examples"]] == [1, 2]
        assert "not a prompt" in cat.contexts([7])["note"]
    with Catalog(bare) as cat:  # built, no contexts yet: a note says how to get them
        res = cat.contexts([TELOME])
        assert res["examples"] == [] and "run `ngram-dask contexts --db" in res["note"]


def test_export_tasks(with_contexts, tmp_path):
    db, bare = with_contexts
    r = run_cli("export", "--db", str(db), "--out", str(tmp_path / "tasks"), "--tasks")
    assert r.returncode == 0, r.stderr
    for name in ("bigram_prompts", "trigram_prompts"):
        rows = pq.read_table(tmp_path / "tasks" / f"{name}.parquet").to_pylist()
        lines = [json.loads(x) for x in (tmp_path / "tasks" / f"{name}.jsonl").read_text().splitlines()]
        assert rows == lines and rows
        for row in rows:
            assert row["text"].endswith(row["prompt"])
            assert row["input_ids"][-len(row["prompt_ids"]):] == row["prompt_ids"]
    tri = pq.read_table(tmp_path / "tasks" / "trigram_prompts.parquet").to_pylist()
    common = [x for x in tri if x["prompt"] == ", or"]
    assert len(common) == 5 and all(x["expected"] == " common" for x in common)
    assert {x["actual"] for x in common} <= {" common", " ice"}
    r = run_cli("export", "--db", str(bare), "--out", str(tmp_path / "none"), "--tasks")
    assert r.returncode == 2 and "run `ngram-dask contexts" in r.stderr and r.stderr.count("\n") == 1


def test_report_tokens_show_whitespace():
    four = "<span class=ws>·</span>" * 4
    assert token_html("    ") == "<span class=tok title=\"&#x27;    &#x27;\">" + four + "</span>"
    assert ">tuple<" in token_html("tuple") and "<span class=ws>·</span>tuple" in token_html(" tuple")
    assert "<span class=ws>↵</span>" in token_html("\n") and "∅" in token_html("")
