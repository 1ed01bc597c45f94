"""``ngram-dask report``: PNG plots and an index.html that shows them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ngram_dask.catalog.reader import open_catalog
from ngram_dask.catalog.report.data import counts_by_rank, coverage
from ngram_dask.cli import main

from catalog_corpus import _copy, bad_databases
from helpers import db_rows, oracle

pytestmark = pytest.mark.slow  # builds and scores a catalog, draws with matplotlib

BASE_PNGS = ["frac_max.png", "sum_count.png", "zipf.png", "coverage.png"]
MODELS = ["p_pythia_1_4b_deduped", "p_pythia_70m_deduped", "p_pythia_410m_deduped"]


def _pngs_ok(out: Path, names: list[str]) -> None:
    from matplotlib.image import imread

    for name in names:
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name
        h, w, _ = imread(out / name).shape
        assert h > 200 and w > 300, name


def _referenced(out: Path) -> list[str]:
    page = (out / "index.html").read_text()
    return re.findall(r'<img src="([^"]+)"', page)


def test_report_writes_pngs_and_a_page_that_shows_them(built, tmp_path, capsys):
    db, _ = built
    out = tmp_path / "report"
    assert main(["report", "--db", str(db), "--out", str(out)]) == 0
    assert "ngram-dask score" in capsys.readouterr().out  # no scores yet: says how to get them
    _pngs_ok(out, BASE_PNGS)
    assert _referenced(out) == BASE_PNGS
    page = (out / "index.html").read_text()
    assert "top_bigrams" in page and "top_trigrams" in page and "&#x27;res&#x27;" in page
    assert sorted(p.name for p in out.iterdir()) == sorted(BASE_PNGS + ["index.html"])


def test_model_plots_when_scores_exist(built, tmp_path):
    db, _ = built
    stmts = []
    for table in ["top_bigrams", "top_trigrams"]:
        for i, col in enumerate(MODELS):
            stmts += [f"ALTER TABLE {table} ADD COLUMN {col} DOUBLE",
                      f"UPDATE {table} SET {col} = frac_max * {0.5 + 0.2 * i}"]
    # as `ngram-dask score` records them: the panels are titled with the model's name
    stmts.append("""INSERT INTO catalog_info VALUES ('scored_models',
        '{"p_pythia_70m_deduped": {"model": "EleutherAI/pythia-70m-deduped", "tables": {}}}')""")
    scored = _copy(db, tmp_path / "scored.duckdb", *stmts)
    out = tmp_path / "report"
    assert main(["report", "-q", "--db", str(scored), "--out", str(out)]) == 0
    models = ["models_top_bigrams.png", "models_top_bigrams_mean.png",
              "models_top_trigrams.png", "models_top_trigrams_mean.png"]
    _pngs_ok(out, BASE_PNGS + models)
    assert _referenced(out) == BASE_PNGS + models
    page = (out / "index.html").read_text()
    # models by size in the example table: 70m, 410m, 1.4b
    head = page.split("top_bigrams: the 20 most frequent contexts")[1].split("</thead>")[0]
    assert head.index("EleutherAI/pythia-70m-deduped") < head.index("pythia_410m") < head.index("pythia_1_4b")


def test_numbers_behind_the_plots(built):
    db, samples = built
    with open_catalog(str(db)) as cat:
        ranks, counts = counts_by_rank(cat, "bigrams")
        want = sorted(oracle(samples, 2).values(), reverse=True)
        # a step per distinct count: the count at rank r is the r-th largest count
        assert ranks[-1] == len(want)
        for r0, r1, c in zip(ranks[0::2], ranks[1::2], counts[0::2]):
            assert want[r0 - 1] == want[r1 - 1] == c
        cv = coverage(cat, 2)
    total = sum(len(s) - 1 for s in samples)
    (s, m, rows), = db_rows(db, "SELECT sum(sum_count), sum(max_count), count(*) FROM top_bigrams")
    assert cv["total"] == total and cv["rows"] == rows
    assert cv["context_share"] == pytest.approx(s / total) and cv["predicted_share"] == pytest.approx(m / total)
    assert cv["x"][0] == 1.0 and cv["contexts"] == sorted(cv["contexts"])
    (exact,), = db_rows(db, "SELECT sum(sum_count) FROM top_bigrams WHERE frac_max >= 1")
    assert cv["contexts"][0] == pytest.approx(exact / total)


def test_missing_top_table(built, tmp_path, capsys):
    db, _ = built
    no_top = _copy(db, tmp_path / "no-top.duckdb", "DROP TABLE top_trigrams")
    assert main(["report", "--db", str(no_top), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no table top_trigrams" in err[0] and "--tokenizer" in err[0]


@pytest.fixture(scope="module")
def bad(built, tmp_path_factory):
    return bad_databases(built[0], tmp_path_factory.mktemp("report-bad"))


@pytest.mark.parametrize("case", ["missing", "not_duckdb", "other_tool", "old_schema", "unfinished", "no_bigrams"])
def test_bad_databases_are_refused(bad, tmp_path, capsys, case):
    path, words = bad[case]
    rc = main(["report", "--db", str(path), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and words in err[0]
    assert not (tmp_path / "r").exists()

