"""The top step: tokens(id, token) and the top tables, checked against oracles of their own."""

from __future__ import annotations

import duckdb
import pytest

from ngram_dask.catalog.reader import open_catalog
from ngram_dask.config import TopConfig
from ngram_dask.errors import DatabaseError
from ngram_dask.ngrams.top import build_top_tables, decode_vocab
from ngram_dask.schema import catalog_tables, top_table

from catalog_corpus import CHUNKS, RES, TELOME, VOCAB_SIZE
from helpers import db_rows, oracle, oracle_prefixes

pytestmark = pytest.mark.slow  # builds a catalog with the real tokenizer


@pytest.fixture(scope="module")
def tok(neox_tokenizer_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(neox_tokenizer_path)


def test_table_names():
    assert top_table(2) == "top_bigrams"
    assert top_table(3) == "top_trigrams"
    assert catalog_tables([1, 2, 3, 4]) == ["tokens", "top_bigrams", "top_trigrams"]


def test_tokens_table_decodes_every_id(built, tok):
    db, _ = built
    rows = db_rows(db, "SELECT id, token FROM tokens ORDER BY id")
    assert [r[0] for r in rows] == list(range(VOCAB_SIZE))
    tokens = dict(rows)
    assert tokens[TELOME] == " telome" and tokens[RES] == "res"
    assert tokens[0] == "<|endoftext|>"
    for i in [1, 13, 253, 1000, 12345, 50000, 50276]:
        assert tokens[i] == tok.decode([i], clean_up_tokenization_spaces=False)
    assert tokens[13] == ","  # no clean-up: " ," would lose its space
    # Pythia pads GPT-NeoX's 50277 ids to 50432: the padding decodes to ''.
    assert all(tokens[i] == "" for i in range(50277, VOCAB_SIZE))
    assert db_rows(db, "SELECT data_type FROM information_schema.columns "
                       "WHERE table_name = 'tokens' AND column_name = 'id'") == [("USMALLINT",)]


def _expected_top(samples, n, tok_strings, min_frac, min_count):
    rows = []
    for prefix, (follower, total, best, frac) in oracle_prefixes(oracle(samples, n)).items():
        if frac > min_frac and total > min_count:
            ids = (*prefix, follower)
            toks = [tok_strings[i] for i in ids]
            rows.append((*ids, total, best, frac, *toks, "".join(toks)))
    # frac_max desc, sum_count desc, then ids
    rows.sort(key=lambda r: (-r[n + 2], -r[n], *r[:n]))
    return rows


def test_top_bigrams_match_python_oracle(built):
    db, samples = built
    tok_strings = dict(db_rows(db, "SELECT id, token FROM tokens"))
    got = db_rows(db, "SELECT * FROM top_bigrams")  # the table's own order
    want = _expected_top(samples, 2, tok_strings, 0.5, 0)
    assert len(got) == len(want) > 10
    for g, w in zip(got, want):
        assert g[:5] == w[:5] and g[6:] == w[6:]
        assert g[4] == pytest.approx(w[4], abs=1e-12)
    assert (TELOME, RES, 1000, 998) == tuple(next(r for r in got if r[0] == TELOME)[:4])
    # a prefix tied at exactly 0.5 is not "> 0.5"
    assert all(r[4] > 0.5 for r in got)


def test_top_trigrams_match_independent_sql(built):
    db, samples = built
    # Written from SPEC.md without the build's SQL: group the trigrams, keep the follower
    # with the largest count (smallest id on ties), filter sum > 1000 and frac > 0.5.
    want = db_rows(db, """
        WITH g AS (
            SELECT id0, id1, id2, count,
                   sum(count) OVER (PARTITION BY id0, id1) AS s,
                   row_number() OVER (PARTITION BY id0, id1 ORDER BY count DESC, id2 ASC) AS r
            FROM trigrams)
        SELECT g.id0, g.id1, g.id2, g.s, g.count, g.count::DOUBLE / g.s::DOUBLE,
               a.token, b.token, c.token, a.token || b.token || c.token
        FROM g JOIN tokens a ON a.id = g.id0 JOIN tokens b ON b.id = g.id1 JOIN tokens c ON c.id = g.id2
        WHERE g.r = 1 AND g.s > 1000 AND g.count::DOUBLE / g.s::DOUBLE > 0.5
        ORDER BY 6 DESC, 4 DESC, 1, 2, 3""")
    got = db_rows(db, "SELECT * FROM top_trigrams")
    assert got == want
    assert len(got) >= 5
    # ("," " or") -> " common" 1100 of 1200
    comma_or = [r for r in got if r[:2] == (13, 390)]
    assert comma_or == [(13, 390, 1846, 1200, 1100, 1100 / 1200, ",", " or", " common", ", or common")]
    # and the Python oracle agrees
    tok_strings = dict(db_rows(db, "SELECT id, token FROM tokens"))
    assert [r[:5] for r in got] == [r[:5] for r in _expected_top(samples, 3, tok_strings, 0.5, 1000)]


def test_top_tables_columns_and_rules(built):
    db, _ = built
    cols = [r[0] for r in db_rows(db, "SELECT column_name FROM information_schema.columns "
                                      "WHERE table_name = 'top_trigrams' ORDER BY ordinal_position")]
    assert cols == ["id0", "id1", "id2", "sum_count", "max_count", "frac_max", "token0", "token1", "token2", "seq"]
    info = dict(db_rows(db, "SELECT key, value FROM catalog_info"))
    assert info["top_bigrams_rule"] == "frac_max > 0.5 AND sum_count > 0"
    assert info["top_trigrams_rule"] == "frac_max > 0.5 AND sum_count > 1000"


def test_thresholds_come_from_config(tok):
    con = duckdb.connect()
    con.execute("CREATE TABLE catalog_info (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL)")
    con.execute("CREATE TABLE bigram_prefixes (id0 USMALLINT, id1 USMALLINT, sum_count UBIGINT, "
                "max_count UBIGINT, frac_max DOUBLE)")
    con.execute("INSERT INTO bigram_prefixes VALUES (1, 2, 10, 9, 0.9), (3, 4, 100, 60, 0.6), "
                "(5, 6, 4, 4, 1.0), (7, 8, 50, 25, 0.5)")
    cfg = TopConfig(top_bigram_min_frac=0.55, top_bigram_min_count=5)
    rows = build_top_tables(con, tok, 300, [2], cfg)
    assert rows == {"tokens": 300, "top_bigrams": 2}
    got = con.execute("SELECT id0, id1, token0, token1, seq FROM top_bigrams").fetchall()
    t = decode_vocab(tok, 300)
    assert got == [(1, 2, t[1], t[2], t[1] + t[2]), (3, 4, t[3], t[4], t[3] + t[4])]
    assert dict(con.execute("SELECT * FROM catalog_info").fetchall()) == {
        "top_bigrams_rule": "frac_max > 0.55 AND sum_count > 5"}


def test_decode_vocab_pads_missing_ids(bpe_tokenizer_path):
    from transformers import AutoTokenizer

    small = AutoTokenizer.from_pretrained(bpe_tokenizer_path)
    known = len(small)
    out = decode_vocab(small, known + 7)
    assert out[:known] == [small.decode([i], clean_up_tokenization_spaces=False) for i in range(known)]
    assert out[known:] == [""] * 7
    assert decode_vocab(small, 10) == out[:10]


def test_open_catalog_reads_a_finished_build(built):
    db, _ = built
    with open_catalog(str(db)) as cat:
        assert cat.ngrams == [2, 3] and cat.chunks == CHUNKS and cat.vocab_size == VOCAB_SIZE
        assert {"bigrams", "trigrams", "tokens", "top_bigrams"} <= cat.tables
        assert cat.require_counts(min_n=3) == [3]
        with pytest.raises(DatabaseError, match="run `ngram-dask build"):
            cat.require("fourgrams")
        with pytest.raises(DatabaseError, match="--tokenizer"):
            cat.require("top_fourgrams")
