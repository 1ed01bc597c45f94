"""``ngram-dask export``: Parquet + dataset card that the real ``datasets`` client loads row for row."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from catalog_corpus import CHUNKS, _copy, bad_databases, build_catalog_db
from helpers import db_rows

from ngram_dask.cli import main
from ngram_dask.export import provenance

TABLES = ["bigrams", "trigrams", "bigram_prefixes", "trigram_prefixes", "tokens", "top_bigrams", "top_trigrams"]


@pytest.fixture(scope="module")
def built(tmp_path_factory, local_cluster, neox_tokenizer_path):
    root = tmp_path_factory.mktemp("export")
    db, _ = build_catalog_db(root, local_cluster, neox_tokenizer_path)
    return db


@pytest.fixture(scope="module")
def exported(built, tmp_path_factory):
    out = tmp_path_factory.mktemp("export-out") / "exports"
    # --split-rows 1000: the n-gram tables of this small corpus are "large"
    assert main(["export", "-q", "--db", str(built), "--out", str(out), "--split-rows", "1000"]) == 0
    return out


def _card(out: Path) -> tuple[dict, str]:
    text = (out / "README.md").read_text()
    m = re.match(r"---\n(.*?)\n---\n(.*)", text, re.S)
    assert m, "the card starts with a YAML header"
    return yaml.safe_load(m.group(1)), m.group(2)


def _columns(db, table) -> list[str]:
    return [r[0] for r in db_rows(db, "SELECT column_name FROM information_schema.columns "
                                      "WHERE table_name = ? ORDER BY ordinal_position", [table])]


def test_layout_one_folder_per_table_split_by_id0_chunk(built, exported):
    assert sorted(p.name for p in exported.iterdir()) == sorted(TABLES + ["README.md"])
    for table in ["bigrams", "trigrams"]:
        files = sorted((exported / table).iterdir())
        assert [f.name for f in files] == [f"train-{c:05d}-of-{CHUNKS:05d}.parquet" for c in range(CHUNKS)]
        for c, f in enumerate(files):
            ids = pq.read_table(f, columns=["id0"]).column("id0").to_pylist()
            assert ids and all(i % CHUNKS == c for i in ids)
            assert pq.read_schema(f).names == _columns(built, table)  # no partition column added
    for table in ["tokens", "top_bigrams", "top_trigrams"]:
        assert [f.name for f in (exported / table).iterdir()] == ["train-00000-of-00001.parquet"]


def _load(path, *args, cache, **kw):
    import datasets

    datasets.disable_progress_bars()
    return datasets.load_dataset(path, *args, split="train", cache_dir=str(cache), **kw)


def test_datasets_loads_every_table_row_for_row(built, exported, tmp_path):
    header, _ = _card(exported)
    configs = {c["config_name"]: c for c in header["configs"]}
    assert sorted(configs) == sorted(TABLES)
    for table in TABLES:
        ds = _load(str(exported), table, cache=tmp_path / "c1")  # the card's configs, as the Hub reads them
        assert ds.column_names == _columns(built, table)
        got = [tuple(r.values()) for r in ds]
        want = db_rows(built, f"SELECT * FROM {table}")
        assert len(got) == len(want)
        if table.startswith("top_") or table == "tokens":
            assert got == want  # in the table's own order
        else:
            assert sorted(got) == sorted(want)
    # the other documented ways in
    d2 = _load("parquet", data_dir=str(exported / "trigrams"), cache=tmp_path / "c2")
    d3 = _load("parquet", data_files=str(exported / "top_bigrams" / "*.parquet"), cache=tmp_path / "c3")
    assert d2.num_rows == db_rows(built, "SELECT count(*) FROM trigrams")[0][0]
    assert [tuple(r.values()) for r in d3] == db_rows(built, "SELECT * FROM top_bigrams")
    assert str(d2.features["count"].dtype) == "uint64" and str(d2.features["id0"].dtype) == "uint16"


def test_card_describes_every_column_rows_and_provenance(built, exported):
    header, body = _card(exported)
    for c in header["configs"]:
        assert c["data_files"] == [{"split": "train", "path": f"{c['config_name']}/train-*.parquet"}]
    assert [c["config_name"] for c in header["configs"] if c.get("default")] == ["top_bigrams"]
    sections = dict(re.findall(r"^## `(\w+)`\n(.*?)(?=^## |\Z)", body, re.S | re.M))
    assert sorted(sections) == sorted(TABLES)
    for table in TABLES:
        rows = db_rows(built, f"SELECT count(*) FROM {table}")[0][0]
        assert f"{rows:,} rows" in sections[table]
        described = re.findall(r"^\| `(\w+)` \| (\w+) \| (.+) \|$", sections[table], re.M)
        assert [d[0] for d in described] == _columns(built, table)
        assert all(d[2].strip() and "not described" not in d[2] for d in described)
    info = dict(db_rows(built, "SELECT key, value FROM catalog_info"))
    prov = body.split("## Provenance")[1]
    for key in ["tool", "schema_version", "input", "tokenizer", "tokens", "ngram_total_2",
                "top_trigrams_rule", "versions"]:
        assert f"| `{key}` |" in prov
    assert info["top_trigrams_rule"] in body


def test_no_credentials_in_the_card(built, tmp_path):
    db = _copy(built, tmp_path / "secret.duckdb",
               "UPDATE catalog_info SET value = 's3://AKIAEXAMPLE:hunter2@bucket/pile?X-Amz-Signature=deadbeef' "
               "WHERE key = 'input'",
               "INSERT INTO catalog_info VALUES ('aws_secret_access_key', 'hunter2'), ('hf_token', 'hf_abc')")
    out = tmp_path / "out"
    assert main(["export", "-q", "--db", str(db), "--out", str(out), "--tables", "top_bigrams"]) == 0
    card = (out / "README.md").read_text()
    assert "hunter2" not in card and "deadbeef" not in card and "AKIAEXAMPLE" not in card
    assert "hf_abc" not in card
    assert "s3://bucket/pile" in card
    assert provenance({"tokenizer": "EleutherAI/gpt-neox-20b", "tokens": "5"}) == {
        "tokenizer": "EleutherAI/gpt-neox-20b", "tokens": "5"}


def test_empty_tables_get_no_config(built, tmp_path):
    import datasets

    db = _copy(built, tmp_path / "empty.duckdb", "DELETE FROM top_trigrams")
    out = tmp_path / "out"
    assert main(["export", "-q", "--db", str(db), "--out", str(out), "--tables", "top_bigrams,top_trigrams"]) == 0
    header, body = _card(out)
    assert [c["config_name"] for c in header["configs"]] == ["top_bigrams"]
    assert "0 rows, no files" in body and not (out / "top_trigrams").exists()
    assert _load(str(out), "top_bigrams", cache=tmp_path / "c").num_rows > 0
    with pytest.raises((ValueError, datasets.exceptions.DatasetNotFoundError)):
        _load(str(out), "top_trigrams", cache=tmp_path / "c")


def test_rerun_replaces_an_earlier_export_but_not_a_foreign_folder(built, tmp_path, capsys):
    out = tmp_path / "out"
    for _ in range(2):
        assert main(["export", "-q", "--db", str(built), "--out", str(out), "--tables", "tokens"]) == 0
    assert [f.name for f in (out / "tokens").iterdir()] == ["train-00000-of-00001.parquet"]
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("do not touch")
    capsys.readouterr()
    assert main(["export", "--db", str(built), "--out", str(foreign)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert sorted(p.name for p in foreign.iterdir()) == ["thesis.tex"]


def test_unknown_table_and_missing_token(built, tmp_path, capsys, monkeypatch):
    assert main(["export", "--db", str(built), "--out", str(tmp_path / "a"), "--tables", "fourgrams"]) == 2
    assert "has no table fourgrams" in capsys.readouterr().err
    # Pushing needs a token (and the network); refused before any work, nothing is contacted.
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["export", "--db", str(built), "--out", str(tmp_path / "b"), "--push-to-hub", "me/ngrams"]) == 2
    assert "--push-to-hub" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


@pytest.fixture(scope="module")
def bad(built, tmp_path_factory):
    return bad_databases(built, tmp_path_factory.mktemp("export-bad"))


@pytest.mark.parametrize("case", ["missing", "not_duckdb", "other_tool", "old_schema", "unfinished", "no_bigrams"])
def test_bad_databases_are_refused(bad, tmp_path, capsys, case):
    path, words = bad[case]
    rc = main(["export", "--db", str(path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and words in lines[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    shutil.rmtree(tmp_path / "out", ignore_errors=True)


def test_a_scan_table_is_exported_and_described(tmp_path):
    """`ngram-dask scan --to-db` can write scan_<L> into a database with no build yet."""
    import duckdb

    db = tmp_path / "scan.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE catalog_info (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL)")
    con.execute("INSERT INTO catalog_info VALUES ('tool', 'ngram-dask'), ('schema_version', '1')")
    con.execute("""CREATE TABLE scan_4 AS SELECT '[a] bcd' AS text, ' x' AS token_short, ' y' AS token_long,
        0.2 AS p_short, 0.9 AS p_long, 1.5 AS sym_kl, 0.4 AS js_divergence, [1, 2, 3, 4, 5] AS long_ids,
        7 AS short_max_id, 8 AS long_max_id, 'ctx' AS context, [1, 2, 3] AS context_ids,
        0.7 AS p_delta_max, 3.0 AS logit_excite_max, 2.0 AS logit_inhibit_max,
        0::BIGINT AS batch, 3::BIGINT AS sample, 10 AS start""")
    con.close()
    out = tmp_path / "out"
    assert main(["export", "-q", "--db", str(db), "--out", str(out)]) == 0
    header, body = _card(out)
    assert [c["config_name"] for c in header["configs"]] == ["scan_4"]
    described = re.findall(r"^\| `(\w+)` \| [^|]+ \| (.+) \|$", body.split("## `scan_4`")[1], re.M)
    assert [d[0] for d in described] == _columns(db, "scan_4")
    assert all("not described" not in d[1] for d in described)
    ds = _load(str(out), "scan_4", cache=tmp_path / "c")
    assert ds[0]["long_ids"] == [1, 2, 3, 4, 5] and ds[0]["text"] == "[a] bcd"
