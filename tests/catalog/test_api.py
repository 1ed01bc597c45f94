"""The Python API (``ngram_dask.api.Catalog``) on a real catalog, against oracles over the corpus."""

from __future__ import annotations

import hashlib
import threading

import pytest

from ngram_dask.catalog.api import Catalog
from ngram_dask.errors import UserError

from catalog_corpus import RES, TELOME
from helpers import oracle
from serve_catalog import MODELS, add_scores_and_scan

pytestmark = pytest.mark.slow  # builds a catalog with the real tokenizer


@pytest.fixture(scope="module")
def built(built, tmp_path_factory):
    """The shared catalog with model scores and a scan table added: ``(db, samples)``."""
    db, samples = built
    return add_scores_and_scan(db, tmp_path_factory.mktemp("api-scored") / "scored.duckdb"), samples


@pytest.fixture(scope="module")
def cat(built):
    with Catalog(built[0]) as c:
        yield c


def test_next_tokens_is_exact_trigram_first_then_bigram(cat, built):
    _, samples = built
    res = cat.next_tokens(" telome", top=5)
    rows = res.to_pylist()
    assert res.column_names == ["n", "table", "rank", "id", "token", "count", "share", "prefix_count"]
    assert [r["table"] for r in rows] == ["bigrams", "bigrams"]  # one token: no trigram context
    assert (rows[0]["id"], rows[0]["token"], rows[0]["count"], rows[0]["prefix_count"]) == (RES, "res", 998, 1000)
    assert rows[0]["share"] == pytest.approx(0.998)
    assert cat.next_tokens([TELOME], top=5).to_pylist() == rows  # ids give the same answer

    ids = cat.tokenize("sodium chloride, or")
    tri = oracle(samples, 3)
    want = sorted(((g[2], c) for g, c in tri.items() if list(g[:2]) == ids[-2:]), key=lambda t: (-t[1], t[0]))
    got = cat.next_tokens(ids, top=3, output="pandas")
    assert list(got["table"].unique()) == ["trigrams", "bigrams"]  # longest context first
    t = got[got["table"] == "trigrams"]
    assert list(zip(t["id"], t["count"])) == want[:3]
    assert t["prefix_count"].iloc[0] == sum(c for _, c in want) == 1200
    assert t["share"].iloc[0] == pytest.approx(1100 / 1200)


def test_count_matches_the_oracle(cat, built):
    _, samples = built
    for n in (2, 3):
        counts = oracle(samples, n)
        for gram, c in list(counts.most_common(5)) + list(counts.items())[-3:]:
            assert cat.count(list(gram)) == c
    assert cat.count(" telomeres") == 998
    assert cat.count([TELOME, 50420]) == 0  # beyond the tokenizer: never occurs
    with pytest.raises(UserError, match="counts n-grams of n in"):
        cat.count([1, 2, 3, 4])


def test_prob(cat):
    rows = cat.prob(" telome", "res").to_pylist()
    assert [(r["table"], r["count"], r["prefix_count"]) for r in rows] == [("bigrams", 998, 1000)]
    assert rows[0]["prob"] == pytest.approx(0.998)
    tri = cat.prob(", or", " common", output="pandas")
    assert tri["table"].iloc[0] == "trigrams" and tri["prob"].iloc[0] == pytest.approx(1100 / 1200)
    assert cat.prob(" telome", RES).to_pylist() == rows  # an id works as the next token
    never = cat.prob(" the", "res").to_pylist()
    assert all(r["prob"] is None and r["prefix_count"] == 0 for r in never)
    with pytest.raises(UserError, match="give one token"):
        cat.prob(" telome", " chromosome ends")


def _all_rows(cat, table):
    return cat.tasks(table, limit=None).to_pylist()


def test_tasks_filter_sort_and_page_like_python_would(cat):
    everything = _all_rows(cat, "top_bigrams")
    assert len(everything) == cat.rows("top_bigrams") > 30
    # the default order is the table's own: frac_max desc, sum_count desc, then the ids
    assert everything == sorted(everything, key=lambda r: (-r["frac_max"], -r["sum_count"], r["id0"], r["id1"]))
    # 70m fails and 12b succeeds
    filters = {"p_pythia_70m_deduped": (None, 0.1), "p_pythia_12b_deduped": (0.9, None), "frac_max": (0.6, 1.0)}
    want = [r for r in everything if r["p_pythia_70m_deduped"] <= 0.1 and r["p_pythia_12b_deduped"] >= 0.9
            and 0.6 <= r["frac_max"] <= 1.0]
    want.sort(key=lambda r: (-r["sum_count"], r["id0"], r["id1"]))
    assert 5 < len(want) < len(everything)
    assert cat.count_tasks("top_bigrams", filters) == len(want)
    pages = [cat.tasks("top_bigrams", filters, order="-sum_count", limit=4, offset=o).to_pylist()
             for o in range(0, len(want) + 4, 4)]
    assert [r for p in pages for r in p] == want  # pages neither repeat nor skip a row
    # text filter: a substring of seq, case-sensitive, taken as a parameter
    contains = [r for r in everything if " telome" in r["seq"]]
    assert [r["seq"] for r in cat.tasks("top_bigrams", {"contains": " telome"}, limit=None).to_pylist()] == \
        [r["seq"] for r in contains] == [" telomeres"]
    assert cat.tasks("top_bigrams", {"contains": "' OR 1=1 --"}).num_rows == 0
    asc = cat.tasks("top_bigrams", order=["token1", "-sum_count"], limit=None).to_pylist()
    assert [r["token1"] for r in asc] == sorted(r["token1"] for r in everything)


def test_tasks_refuse_names_outside_the_schema(cat):
    for bad in ("frac_max; DROP TABLE tokens", "nope", '"frac_max"'):
        with pytest.raises(UserError, match="cannot sort"):
            cat.tasks("top_bigrams", order=bad)
        with pytest.raises(UserError, match="cannot filter"):
            cat.tasks("top_bigrams", {bad: (0, 1)})
    with pytest.raises(UserError, match="not a top or scan table"):
        cat.tasks("tokens")
    with pytest.raises(UserError, match="not a number"):
        cat.tasks("top_bigrams", {"frac_max": ("x", None)})
    with pytest.raises(UserError, match="limit"):
        cat.tasks("top_bigrams", limit=-1)


def test_task_view_and_models_by_size(cat):
    ids = cat.tokenize(", or")
    t = cat.task("top_trigrams", ids)
    assert t["context"] == ids and t["prefix_count"] == 1200
    assert t["followers"][0]["token"] == " common" and t["followers"][0]["count"] == 1100
    assert [m["column"] for m in t["models"]] == list(MODELS)  # smallest first
    assert [m["size"] for m in t["models"]] == [7e7, 1.4e9, 1.2e10]
    assert [m["p"] for m in t["models"]] == [t["row"][c] for c in MODELS]
    with pytest.raises(UserError, match="no task"):
        cat.task("top_trigrams", [1, 2])


def test_scan_tables_are_browsable(cat):
    assert cat.browsable() == ["top_trigrams", "top_bigrams", "scan_4"]
    rows = cat.tasks("scan_4", {"p_long": (0.8, None)}, order="-sym_kl", limit=5).to_pylist()
    assert [r["sym_kl"] for r in rows] == [30.0, 29.0, 28.0, 27.0, 26.0]
    assert cat.count_tasks("scan_4", {"contains": "tok1"}) == 11  # tok1, tok10..tok19


def test_one_catalog_serves_many_threads(cat):
    want_next = cat.next_tokens(" telome").to_pylist()
    want_page = cat.tasks("top_bigrams", {"frac_max": (0.7, None)}, "-sum_count", 20, 10).to_pylist()
    got, errors = [], []

    def work(i):
        try:
            for _ in range(5):
                if i % 2:
                    got.append(cat.next_tokens(" telome").to_pylist() == want_next)
                else:
                    got.append(cat.tasks("top_bigrams", {"frac_max": (0.7, None)}, "-sum_count", 20, 10)
                               .to_pylist() == want_page)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == [] and len(got) == 80 and all(got)


def test_read_only(built):
    db, _ = built
    before = hashlib.sha256(open(db, "rb").read()).hexdigest()
    with Catalog(db) as c:
        c.next_tokens(" telome")
        c.tasks("top_trigrams", {"contains": " or"})
        with pytest.raises(Exception, match="read-only"):
            c.sql("CREATE TABLE x (a INTEGER)")
    assert hashlib.sha256(open(db, "rb").read()).hexdigest() == before


def test_bad_database_is_one_line(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        Catalog(tmp_path / "nope.duckdb")
