"""``ngram-dask export``: Parquet + dataset card that the real ``datasets`` client loads row for row."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from ngram_dask.catalog.export_common import provenance
from ngram_dask.cli import main

from catalog_corpus import CHUNKS, _copy, bad_databases
from helpers import db_rows

pytestmark = pytest.mark.slow  # builds a catalog with the real tokenizer

TABLES = ["bigrams", "trigrams", "bigram_prefixes", "trigram_prefixes", "tokens", "top_bigrams", "top_trigrams"]


@pytest.fixture(scope="module")
def built(built):
    """The catalog database alone (the shared fixture also returns the samples)."""
    return built[0]


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


# --- --layout original: what the original project published -----------------------------------

# The published tables' split names and columns, as code written against them reads them
# (`load_dataset("<org>/pile_top_trigrams", split="top_trigrams")`, then these names).
ORIGINAL = {
    "bigrams": ("bigrams", ["id0", "id1", "count", "id0_chunk"]),
    "trigrams": ("trigrams", ["id0", "id1", "id2", "count", "id0_chunk"]),
    "bigram_prefixes": ("bigram_prefixes", ["id0", "id1", "sum_count", "max_count", "frac_max"]),
    "trigram_prefixes": ("trigram_prefixes", ["id0", "id1", "id2", "sum_count", "max_count", "frac_max"]),
    "top_bigrams": ("top_bigrams", ["id0", "id1", "sum_count", "max_count", "frac_max", "token0", "token1",
                                    "seq", "p_70m", "p_1.4b", "p_my_model"]),
    "top_trigrams": ("top_trigrams", ["id0", "id1", "id2", "sum_count", "max_count", "frac_max", "token0",
                                      "token1", "token2", "seq", "p_70m", "p_160m", "p_12b"]),
    "tokens": ("tokens", ["id", "token"]),
    "scan_4": ("scan", ["text", "token_short", "token_long", "p_short", "p_long", "JS", "long_ids",
                        "short_max_id", "long_max_id", "context", "context_ids", "p_delta_max",
                        "logit_excite_max", "logit_inhibit_max", "batch", "sample", "start",
                        "js_divergence"]),
}
# The same rows from our tables, written out by hand (the oracle does not reuse export_original.py's mapping).
ORIGINAL_SQL = {
    "bigrams": f"SELECT id0, id1, count, (id0 % {CHUNKS})::INTEGER FROM bigrams",
    "trigrams": f"SELECT id0, id1, id2, count, (id0 % {CHUNKS})::INTEGER FROM trigrams",
    "bigram_prefixes": "SELECT * FROM bigram_prefixes",
    "trigram_prefixes": "SELECT * FROM trigram_prefixes",
    "top_bigrams": "SELECT id0, id1, sum_count, max_count, frac_max, token0, token1, seq, "
                   "p_pythia_70m_deduped, p_pythia_1_4b_deduped, p_my_model FROM top_bigrams",
    "top_trigrams": "SELECT id0, id1, id2, sum_count, max_count, frac_max, token0, token1, token2, seq, "
                    "p_pythia_70m_deduped, p_pythia_160m_deduped, p_pythia_12b_deduped FROM top_trigrams",
    "tokens": "SELECT * FROM tokens",
    "scan_4": "SELECT text, token_short, token_long, p_short, p_long, sym_kl, long_ids, short_max_id, "
              "long_max_id, context, context_ids, p_delta_max, logit_excite_max, logit_inhibit_max, "
              "batch, sample, start + 1, js_divergence FROM scan_4",
}
ORDERED = {"top_bigrams", "top_trigrams", "tokens", "scan_4"}  # compared in the table's own order


@pytest.fixture(scope="module")
def scored(built, tmp_path_factory):
    """The catalog as `ngram-dask score` and `scan --to-db` leave it: p_<model> columns (added
    out of size order, one not a Pythia model) and a scan_4 table."""
    return _copy(
        built, tmp_path_factory.mktemp("export-scored") / "scored.duckdb",
        "ALTER TABLE top_bigrams ADD COLUMN p_pythia_1_4b_deduped DOUBLE",
        "ALTER TABLE top_bigrams ADD COLUMN p_my_model DOUBLE",
        "ALTER TABLE top_bigrams ADD COLUMN p_pythia_70m_deduped DOUBLE",
        "UPDATE top_bigrams SET p_pythia_1_4b_deduped = frac_max / 2, p_my_model = 0.25, "
        "p_pythia_70m_deduped = frac_max / 3",
        "ALTER TABLE top_trigrams ADD COLUMN p_pythia_12b_deduped DOUBLE",
        "ALTER TABLE top_trigrams ADD COLUMN p_pythia_70m_deduped DOUBLE",
        "ALTER TABLE top_trigrams ADD COLUMN p_pythia_160m_deduped DOUBLE",
        "UPDATE top_trigrams SET p_pythia_12b_deduped = frac_max, p_pythia_70m_deduped = frac_max / 4, "
        "p_pythia_160m_deduped = frac_max / 5",
        """CREATE TABLE scan_4 AS SELECT * FROM (VALUES
            ('[ sodium] chloride, or common', ' salt', ' salt', 0.3::FLOAT, 0.95::FLOAT, 1.7::FLOAT, 0.4::FLOAT,
             [23827, 36807, 13, 390, 1846], 7043, 7043, 'ctx a', [1, 2, 3], 0.6::FLOAT, 3.0::FLOAT,
             2.0::FLOAT, 0::BIGINT, 3::BIGINT, 10),
            ('[ telome]res protect chromosome', ' ends', ' ends', 0.2::FLOAT, 0.9::FLOAT, 0.8::FLOAT, 0.2::FLOAT,
             [38103, 373, 4017, 10565, 7637], 7637, 7637, 'ctx b', [4, 5], 0.7::FLOAT, 2.5::FLOAT,
             1.0::FLOAT, 1::BIGINT, 70::BIGINT, 0))
          AS t(text, token_short, token_long, p_short, p_long, sym_kl, js_divergence, long_ids, short_max_id,
               long_max_id, context, context_ids, p_delta_max, logit_excite_max, logit_inhibit_max,
               batch, sample, start)""",
    )


@pytest.fixture(scope="module")
def original(scored, tmp_path_factory):
    out = tmp_path_factory.mktemp("export-original") / "pile"
    assert main(["export", "-q", "--db", str(scored), "--out", str(out), "--layout", "original",
                 "--split-rows", "1000"]) == 0
    return out


def _load_split(folder, split, cache):
    import datasets

    datasets.disable_progress_bars()
    return datasets.load_dataset(str(folder), split=split, cache_dir=str(cache))


def test_original_layout_loads_as_the_published_tables(scored, original, tmp_path):
    for table, (split, columns) in ORIGINAL.items():
        ds = _load_split(original / table, split, tmp_path / table)  # as the original's users load it
        assert ds.column_names == columns, table
        got = [tuple(r.values()) for r in ds]
        want = db_rows(scored, ORIGINAL_SQL[table])
        assert len(got) == len(want) > 0, table
        if table in ORDERED:
            assert got == want, table
        else:
            assert sorted(got) == sorted(want), table
    tri = _load_split(original / "trigrams", "trigrams", tmp_path / "t2")
    assert {k: str(tri.features[k].dtype) for k in ["id0", "count", "id0_chunk"]} == {
        "id0": "uint16", "count": "uint64", "id0_chunk": "int32"}
    scan = _load_split(original / "scan_4", "scan", tmp_path / "s2")
    assert {k: str(scan.features[k].dtype) for k in ["JS", "short_max_id", "start"]} == {
        "JS": "float32", "short_max_id": "int64", "start": "int64"}  # the original's types
    # Code written against the original: filter on a score, read the text.
    top = _load_split(original / "top_trigrams", "top_trigrams", tmp_path / "t3").to_pandas()
    best = top.loc[top["p_12b"] > 0.5, ["seq", "p_70m", "p_12b"]]
    assert ", or common" in set(best["seq"])


def test_original_layout_files_and_cards(scored, original):
    assert sorted(p.name for p in original.iterdir()) == sorted(list(ORIGINAL) + ["README.md"])
    for c in range(CHUNKS):  # the n-gram tables in one file per id0 chunk, id0_chunk kept as a column
        t = pq.read_table(original / "trigrams" / "data" / f"trigrams-{c:05d}-of-{CHUNKS:05d}.parquet")
        assert set(t.column("id0_chunk").to_pylist()) == {c}
        assert all(i % CHUNKS == c for i in t.column("id0").to_pylist())
    assert [p.name for p in (original / "scan_4" / "data").iterdir()] == ["scan-00000-of-00001.parquet"]
    for table, (split, columns) in ORIGINAL.items():
        assert sorted(p.name for p in (original / table).iterdir()) == ["README.md", "data"]
        header, body = _card(original / table)
        assert header["configs"] == [{"config_name": "default", "default": True,
                                      "data_files": [{"split": split, "path": f"data/{split}-*"}]}]
        described = re.findall(r"^\| `([\w.]+)` \| [^|]+ \| (.+) \|$", body, re.M)
        assert [d[0] for d in described] == columns
        assert all("not described" not in d[1] for d in described)
        assert "## Differences from the original" in body and "## Provenance" in body
    for table, words in [("top_bigrams", ["smallest id", "Exact token strings", "Tails of shards"]),
                         ("trigrams", [f"id0 % {CHUNKS}", "uint64", "Tails of shards"]),
                         ("scan_4", ["`JS`", "sym_kl", "short window", "docs/scan.md"])]:
        _, body = _card(original / table)
        assert all(w in body.split("## Differences from the original")[1] for w in words), table
    index = (original / "README.md").read_text()
    assert "| `scan_4/` | `scan` |" in index


def test_original_layout_uint32_counts_on_request_and_refused_when_they_do_not_fit(built, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["export", "-q", "--out", str(out), "--layout", "original", "--counts", "uint32",
            "--tables", "bigrams,top_bigrams"]
    assert main(args + ["--db", str(built)]) == 0
    top = _load_split(out / "top_bigrams", "top_bigrams", tmp_path / "c1")
    assert {k: str(top.features[k].dtype) for k in ["max_count", "sum_count"]} == {
        "max_count": "uint32", "sum_count": "uint64"}  # the original's types
    bi = _load_split(out / "bigrams", "bigrams", tmp_path / "c2")
    assert str(bi.features["count"].dtype) == "uint32"
    assert sorted(tuple(r.values()) for r in bi) == sorted(db_rows(built, ORIGINAL_SQL["bigrams"]))
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    big = _copy(built, tmp_path / "big.duckdb",
                "UPDATE bigrams SET count = 5000000000 WHERE (id0, id1) IN (SELECT (id0, id1) FROM bigrams LIMIT 1)")
    capsys.readouterr()
    assert main(args + ["--db", str(big)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bigrams.count reaches 5,000,000,000" in err[0] and "uint32" in err[0]
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # untouched
    # The default layout keeps uint64; asking it for uint32 is a mistake, said in one line.
    assert main(["export", "--db", str(built), "--out", str(tmp_path / "d"), "--counts", "uint32"]) == 2
    assert "--layout original" in capsys.readouterr().err and not (tmp_path / "d").exists()


def test_layouts_do_not_mix_in_one_folder(built, exported, original, tmp_path, capsys):
    assert main(["export", "--db", str(built), "--out", str(exported), "--layout", "original"]) == 2
    assert "--layout default" in capsys.readouterr().err
    assert main(["export", "--db", str(built), "--out", str(original), "--tables", "tokens"]) == 2
    assert "--layout original" in capsys.readouterr().err
    assert (original / "tokens" / "data").is_dir() and not (exported / "tokens" / "data").exists()


def test_hub_plan_one_repository_per_table(built, tmp_path):
    from ngram_dask.catalog.export import export_catalog
    from ngram_dask.catalog.hub import HubTarget, check_hub_name, hub_plan
    from ngram_dask.errors import UserError

    db = _copy(built, tmp_path / "empty.duckdb", "DELETE FROM top_trigrams")
    out = tmp_path / "pile"
    res = export_catalog(str(db), str(out), tables=["bigrams", "tokens", "top_bigrams", "top_trigrams"],
                         announce=lambda m: None, layout="original")
    assert hub_plan(res, "me/pile_") == [  # the empty table has no folder and no repository
        HubTarget(str(out / "bigrams"), "me/pile_bigrams"),
        HubTarget(str(out / "tokens"), "me/pile_tokens"),
        HubTarget(str(out / "top_bigrams"), "me/pile_top_bigrams"),
    ]
    default = export_catalog(str(db), str(tmp_path / "d"), tables=["tokens"], announce=lambda m: None)
    assert hub_plan(default, "me/ngrams") == [HubTarget(str(tmp_path / "d"), "me/ngrams")]
    check_hub_name("me/pile_", "original")
    for name, layout, words in [("me/bad prefix ", "original", "prefix 'me/bad prefix '"),
                                ("a/b/", "original", "prefix 'a/b/'"),
                                ("", "original", "needs a prefix"),
                                ("me/x" + "y" * 100, "original", "gives no valid repository id"),
                                ("me/ngrams/x", "default", "is not a repository id")]:
        with pytest.raises(UserError, match=re.escape(words)) as exc:
            check_hub_name(name, layout)
        assert "\n" not in str(exc.value)
    with pytest.raises(UserError, match="invalid id 'me/pile--bigrams'"):
        hub_plan(res, "me/pile--")


def test_push_errors_are_one_line_and_come_before_the_work(built, tmp_path, capsys, monkeypatch):
    from ngram_dask.catalog.hub import HubTarget, push_plan
    from ngram_dask.errors import UserError

    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    for name, words in [("me/bad prefix", "--push-to-hub prefix 'me/bad prefix'"),
                        ("me/pile_", "HF_HUB_OFFLINE=1")]:  # conftest keeps the hub offline
        out = tmp_path / name.replace("/", "_").replace(" ", "_")
        rc = main(["export", "--db", str(built), "--out", str(out), "--layout", "original", "--push-to-hub", name])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and words in err[0]
        assert not out.exists()
    # The real upload path, stopped by huggingface_hub's offline mode where the network would start.
    folder = tmp_path / "tokens"
    folder.mkdir()
    with pytest.raises(UserError) as exc:
        push_plan([HubTarget(str(folder), "me/pile_tokens")], "hf_not_a_real_token", announce=lambda m: None)
    assert str(exc.value).startswith(f"cannot push {folder} to the hub as me/pile_tokens: ")
    assert "\n" not in str(exc.value)
