"""`ngram-dask score --revisions`: the scores and learning tables across training checkpoints.

Three tiny random GPT-NeoX models stand for three checkpoints of one model, saved as the
subfolders step0, step2 and step8 of one folder (and as a hub-cache layout with refs,
loaded offline). Every p must equal a direct forward pass of that checkpoint; the
learning table must equal its definition written as a Python loop; a killed run resumes
with the missing units only; a revision added later scores only itself.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers import db_rows, run_cli, write_mds

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]

TABLES = {"top_bigrams": 2, "top_trigrams": 3}
UNREACHABLE = "tcp://127.0.0.1:9"
REVISIONS = ("step0", "step2", "step8")
THRESHOLD = "0.002"  # random tiny models give p near 1/512: about half of the prompts cross it


def phrase_corpus(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    perm = rng.permutation(np.arange(1, 360))
    phrases = [perm[i * 5:(i + 1) * 5] for i in range(40)]
    return [np.concatenate([phrases[k] for k in rng.integers(0, 40, size=30)]) for _ in range(20)]


@pytest.fixture(scope="module")
def procs(tmp_path_factory):
    from conftest import DaskProcesses

    p = DaskProcesses(tmp_path_factory.mktemp("revisions-procs"), workers=1, nthreads=1, resources="GPU=1")
    try:
        yield p
    finally:
        p.close()


@pytest.fixture(scope="module")
def catalog(tmp_path_factory, bpe_tokenizer_path, procs) -> Path:
    from ngram_dask.cli import main

    root = tmp_path_factory.mktemp("revisions-catalog")
    write_mds(root / "mds", phrase_corpus())
    (root / "catalog.yaml").write_text("catalog:\n  top_trigram_min_count: 3\n")
    assert main(["build", "--input", str(root / "mds"), "--work-dir", str(root / "work"),
                 "--db", str(root / "ngrams.duckdb"), "--tokenizer", bpe_tokenizer_path, "--vocab-size", "512",
                 "--chunks", "2", "--config", str(root / "catalog.yaml"), "--scheduler", procs.address,
                 "-q"]) == 0
    return root / "ngrams.duckdb"


@pytest.fixture(scope="module")
def ckpts(make_tiny_model, tmp_path_factory) -> Path:
    """One folder whose subfolders step0, step2, step8 are three different tiny models."""
    root = tmp_path_factory.mktemp("revisions-models") / "tiny-neox"
    for k, rev in enumerate(REVISIONS):
        shutil.copytree(make_tiny_model(vocab_size=512, hidden=32, layers=2, heads=4, seed=10 + k), root / rev)
    return root


def prompts_of(db) -> dict[str, list[tuple]]:
    return {t: [tuple(r) for r in db_rows(db, f"SELECT {', '.join(f'id{j}' for j in range(n))} FROM {t}")]
            for t, n in TABLES.items()}


@pytest.fixture(scope="module")
def reference(catalog, ckpts) -> dict[str, dict[tuple, float]]:
    """revision -> {(n, id0, id1): p}: one unbatched fp32 forward pass per prompt."""
    import torch
    from transformers import GPTNeoXForCausalLM

    out = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for rev in REVISIONS:
            model = GPTNeoXForCausalLM.from_pretrained(ckpts / rev).float().eval()
            ref = {}
            with torch.no_grad():
                for rows in prompts_of(catalog).values():
                    for row in rows:
                        logits = model(input_ids=torch.tensor([list(row[:-1])])).logits[0, -1]
                        key = (len(row), row[0], row[1] if len(row) == 3 else None)
                        ref[key] = torch.softmax(logits, dim=-1)[row[-1]].item()
            out[rev] = ref
    finally:
        torch.set_num_threads(threads)
    return out


def score(*args: str) -> tuple[int, str]:
    from ngram_dask.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(["score", *args])
    return rc, out.getvalue()


def scores_of(db, model: str) -> dict[str, dict[tuple, float]]:
    out: dict[str, dict] = {}
    for rev, step, n, id0, id1, p in db_rows(db, "SELECT revision, step, n, id0, id1, p FROM scores "
                                                 "WHERE model = ?", [model]):
        assert step == int(rev.removeprefix("step"))
        key = (n, id0, id1)
        assert key not in out.setdefault(rev, {}), f"{rev} {key} scored twice"
        out[rev][key] = p
    return out


def assert_scores(db, model: str, reference, revisions=REVISIONS) -> None:
    got = scores_of(db, model)
    assert sorted(got) == sorted(revisions)
    for rev in revisions:
        assert got[rev].keys() == reference[rev].keys()
        keys = sorted(reference[rev], key=str)
        np.testing.assert_allclose([got[rev][k] for k in keys], [reference[rev][k] for k in keys],
                                   rtol=1e-5, atol=1e-9, err_msg=rev)


def brute_learning(curves: dict[tuple, list[tuple[int, float]]], t: float) -> dict[tuple, tuple]:
    """The learning table's definition, one prompt at a time."""
    out = {}
    for key, curve in curves.items():
        curve = sorted(curve)
        steps = [s for s, _ in curve]
        ps = [p for _, p in curve]
        learned = None
        for i in range(len(curve)):
            if all(p >= t for p in ps[i:]):
                learned = steps[i]
                break
        above = [s for s, p in curve if p >= t]
        peak = max(ps)
        out[key] = (learned, above[0] if above else None, peak, steps[ps.index(peak)], ps[-1],
                    bool(above) and ps[-1] < t, len(curve))
    return out


def learning_of(db, model: str) -> dict[tuple, tuple]:
    return {(r[0], r[1], r[2]): tuple(r[3:]) for r in db_rows(
        db, "SELECT n, id0, id1, learned_step, first_step_above, peak_p, peak_step, final_p, forgotten, steps "
            "FROM learning WHERE model = ?", [model])}


def assert_learning(db, model: str, threshold: float) -> None:
    curves: dict[tuple, list] = {}
    for n, id0, id1, step, p in db_rows(db, "SELECT n, id0, id1, step, p FROM scores WHERE model = ? "
                                            "AND step IS NOT NULL", [model]):
        curves.setdefault((n, id0, id1), []).append((step, p))
    assert learning_of(db, model) == brute_learning(curves, threshold)


def label(path) -> str:
    from ngram_dask.schema import score_model

    return score_model(str(path))


# --- pure ----------------------------------------------------------------------------------

def test_revision_lists():
    from ngram_dask.errors import ConfigError
    from ngram_dask.lm.revisions import expand_revisions

    pythia = expand_revisions(["pythia"])
    assert len(pythia) == 154 and pythia[:3] == ["step0", "step1", "step2"] and pythia[-1] == "step143000"
    assert pythia[10:12] == ["step512", "step1000"]
    log = expand_revisions(["pythia-log"])
    assert log[:11] == ["step0"] + [f"step{2 ** k}" for k in range(10)]
    assert log[11:] == [f"step{k * 10000}" for k in range(1, 15)] + ["step143000"]
    assert expand_revisions(["step1000:143000:4000"]) == [f"step{s}" for s in range(1000, 143001, 4000)]
    assert expand_revisions(["step1000:9000:4000"]) == ["step1000", "step5000", "step9000"]  # stop included
    # not increasing: sorted, not refused; duplicates once; names without a step last, in order
    assert expand_revisions(["step8", "main", "step2", "step8", "step0:4:2"]) == \
        ["step0", "step2", "step4", "step8", "main"]
    for bad in (["step9:1:2"], ["a:b:c"], ["step1:9"], ["step1:9:0"], ["step1", "step01"]):
        with pytest.raises(ConfigError, match="score.revisions"):
            expand_revisions(bad)


def test_learning_sql_equals_its_definition():
    """Random curves over 1 to 6 steps with many values exactly at the threshold (ties)."""
    from ngram_dask.db import memory
    from ngram_dask.lm.learning import learning_select
    from ngram_dask.schema import SCORES, scores_columns, typed_create_sql

    rng = np.random.default_rng(3)
    t = 0.5
    rows, curves = [], {}
    for k in range(400):
        n = 2 + k % 2
        key = (n, k, (k * 7) % 50 if n == 3 else None)
        steps = sorted(rng.choice([0, 1, 2, 4, 1000, 2000, 143000], size=1 + k % 6, replace=False).tolist())
        ps = rng.choice([0.0, 0.2, 0.5, 0.5, 0.7, 1.0], size=len(steps)).tolist()
        curves[key] = list(zip(steps, ps))
        rows += [("m", f"step{s}", s, n, key[1], key[2], p) for s, p in zip(steps, ps)]
    rows.append(("m", "main", None, 2, 0, None, 0.99))  # no step: not part of the curve
    rows.append(("other", "step0", 0, 2, 0, None, 0.99))  # another model
    with memory() as con:
        con.execute(typed_create_sql(SCORES, scores_columns(512)))
        con.executemany(f"INSERT INTO {SCORES} VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        got = {(r[1], r[2], r[3]): tuple(r[4:]) for r in con.execute(learning_select(t), {"model": "m"}).fetchall()}
    want = brute_learning(curves, t)
    assert got == want
    singles = [k for k, c in curves.items() if len(c) == 1]
    assert singles and all(got[k][6] == 1 for k in singles)
    assert any(v[5] for v in want.values()) and any(v[0] is None and v[1] is not None for v in want.values())


# --- through the runtime -------------------------------------------------------------------

@pytest.fixture(scope="module")
def scored(catalog, ckpts, procs, tmp_path_factory):
    """The three checkpoints scored in 40-prompt units (step2 given first: sorted, not refused)."""
    from distributed import Client

    from ngram_dask.lm.models import revision_loads

    db = tmp_path_factory.mktemp("revisions-scored") / "ngrams.duckdb"
    shutil.copy(catalog, db)
    with Client(procs.address) as c:
        before = next(iter(c.run(revision_loads).values()))
    rc, out = score("--db", str(db), "--models", str(ckpts), "--revisions", "step2,step0,step8",
                    "--final-revision", "step8", "--learned-threshold", THRESHOLD, "--device", "cpu",
                    "--rows-per-unit", "40", "--batch-size", "16", "--scheduler", procs.address)
    assert rc == 0, out
    with Client(procs.address) as c:
        after = next(iter(c.run(revision_loads).values()))
    loads = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    return db, out, loads


def test_every_revision_scores_like_a_direct_forward_pass(scored, ckpts, reference):
    db, out, loads = scored
    model = label(ckpts)
    assert_scores(db, model, reference)
    # one worker, units ordered revision by revision: each checkpoint is loaded once
    assert loads == {f"{ckpts}@{rev}": 1 for rev in REVISIONS}
    types = dict(db_rows(db, "SELECT column_name, data_type FROM information_schema.columns "
                             "WHERE table_name = 'scores'"))
    assert types == {"model": "VARCHAR", "revision": "VARCHAR", "step": "UINTEGER", "n": "UTINYINT",
                     "id0": "USMALLINT", "id1": "USMALLINT", "p": "DOUBLE"}
    assert_learning(db, model, float(THRESHOLD))
    learned = db_rows(db, "SELECT count(learned_step), count(*), sum(forgotten::INT) FROM learning")[0]
    assert 0 < learned[0] < learned[1]  # the threshold splits the prompts: the test can fail both ways
    # the final revision fills p_<model> as a plain score of that checkpoint would
    from ngram_dask.lm.models import column_name

    col = column_name(str(ckpts))
    for table, n in TABLES.items():
        for row in db_rows(db, f"SELECT {', '.join(f'id{j}' for j in range(n))}, {col} FROM {table}"):
            key = (n, row[0], row[1] if n == 3 else None)
            assert math.isclose(row[-1], reference["step8"][key], rel_tol=1e-5, abs_tol=1e-9)
    info = dict(db_rows(db, "SELECT key, value FROM catalog_info"))
    rec = json.loads(info["scored_revisions"])[model]
    assert rec["revisions"] == list(REVISIONS) and rec["threshold"] == float(THRESHOLD)
    assert "prompts/s" in out and "learned by the last step" in out


def test_verify_checks_the_tables(scored, tmp_path, ckpts):
    from ngram_dask.cli import main

    db = tmp_path / "ngrams.duckdb"
    shutil.copy(scored[0], db)
    assert main(["verify", "--db", str(db)]) == 0
    import duckdb

    con = duckdb.connect(str(db))
    con.execute("UPDATE learning SET peak_p = peak_p + 0.25 WHERE id0 = (SELECT min(id0) FROM learning)")
    con.close()
    assert main(["verify", "--db", str(db)]) != 0


def test_kill_and_rerun_then_an_added_revision_scores_only_itself(catalog, ckpts, procs, reference, tmp_path):
    db = tmp_path / "ngrams.duckdb"
    shutil.copy(catalog, db)
    model = label(ckpts)
    common = ["--models", str(ckpts), "--device", "cpu", "--rows-per-unit", "40", "--batch-size", "16",
              "--learned-threshold", THRESHOLD, "--scheduler", procs.address]
    # killed after the first unit of step2 was written: step0 complete, step2 one unit
    res = run_cli("score", "--db", str(db), "--revisions", "step0,step2", *common,
                  env={"NGRAM_DASK_CRASH_IN_SCORE": f"{model}:step2"})
    assert res.returncode == 86, res.stdout + res.stderr
    got = scores_of(db, model)
    total = len(reference["step0"])
    assert len(got["step0"]) == total and len(got["step2"]) == 40
    rc, out = score("--db", str(db), "--revisions", "step0,step2", *common)
    assert rc == 0, out
    sizes = {t: len(rows) for t, rows in prompts_of(db).items()}
    left = -(-(sizes["top_bigrams"] - 40) // 40) + -(-sizes["top_trigrams"] // 40)  # the first unit is kept
    assert f"1 revision(s) to score (step2 .. step2), {left} unit(s)" in out and "1 revision(s) scored earlier" in out
    assert_scores(db, model, reference, revisions=("step0", "step2"))
    assert_learning(db, model, float(THRESHOLD))
    # a revision added later: only step8 is scored; learning is recomputed over the three
    rc, out = score("--db", str(db), "--revisions", "step0,step2,step8", *common)
    assert rc == 0, out
    assert "1 revision(s) to score (step8 .. step8)" in out and "2 revision(s) scored earlier" in out
    assert_scores(db, model, reference)
    assert_learning(db, model, float(THRESHOLD))
    assert {r[0] for r in db_rows(db, "SELECT DISTINCT steps FROM learning")} == {3}
    # nothing left: no cluster is contacted
    rc, out = score("--db", str(db), "--revisions", "step0,step2,step8", *common[:-2], "--scheduler", UNREACHABLE)
    assert rc == 0 and "already scored" in out


def _bad(db: Path, capsys, *args: str) -> str:
    before = db.read_bytes()
    from ngram_dask.cli import main

    rc = main(["score", "--db", str(db), *args, "--scheduler", UNREACHABLE])
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ngram-dask: error: "), err
    assert db.read_bytes() == before
    return lines[0]


def test_bad_revisions_are_one_line(catalog, ckpts, tmp_path, capsys):
    db = tmp_path / "ngrams.duckdb"
    shutil.copy(catalog, db)
    line = _bad(db, capsys, "--models", str(ckpts), "--revisions", "step0,step4")
    assert str(ckpts) in line and "'step4'" in line
    line = _bad(db, capsys, "--models", str(ckpts), "--revisions", "step4:1:1")
    assert "score.revisions" in line
    line = _bad(db, capsys, "--models", "tiny-org/nowhere", "--revisions", "step0")
    assert "tiny-org/nowhere" in line and "'step0'" in line


def hub_cache(root: Path, repo: str, folders: dict[str, Path]) -> Path:
    """The hub cache's layout for ``repo``: refs/<revision> names a snapshot holding the files."""
    base = root / ("models--" + repo.replace("/", "--"))
    for k, (rev, src) in enumerate(folders.items()):
        commit = f"{k + 1:040x}"
        (base / "refs").mkdir(parents=True, exist_ok=True)
        (base / "refs" / rev).write_text(commit)
        shutil.copytree(src, base / "snapshots" / commit)
    return root


def test_hub_revisions_load_offline_from_the_cache(catalog, ckpts, reference, tmp_path):
    cache = hub_cache(tmp_path / "hub", "tiny-org/tiny-neox", {r: ckpts / r for r in ("step0", "step8")})
    db = tmp_path / "ngrams.duckdb"
    shutil.copy(catalog, db)
    env = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    res = run_cli("score", "--db", str(db), "--models", "tiny-org/tiny-neox", "--revisions", "step8,step0",
                  "--device", "cpu", "--n-workers", "1", "--final-revision", "none", env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert_scores(db, "tiny_neox", reference, revisions=("step0", "step8"))
    res = run_cli("score", "--db", str(db), "--models", "tiny-org/tiny-neox", "--revisions", "step0,step2",
                  "--device", "cpu", env=env)
    assert res.returncode == 2 and "'step2'" in res.stderr and "tiny-org/tiny-neox" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


# --- API, export, report, page ---------------------------------------------------------------

def test_curve_api_export_and_report(scored, ckpts, tmp_path):
    import pyarrow.parquet as pq

    from ngram_dask.catalog.api import Catalog
    from ngram_dask.cli import main

    db, _, _ = scored
    model = label(ckpts)
    got = scores_of(db, model)
    n, id0, id1 = sorted(got["step0"], key=str)[0]
    ids = [id0] + ([id1] if n == 3 else [])
    with Catalog(db) as cat:
        res = cat.curve(ids)
    (m,) = res["models"]
    assert m["model"] == model and m["threshold"] == float(THRESHOLD)
    assert [(p["revision"], p["step"]) for p in m["points"]] == [(r, int(r[4:])) for r in REVISIONS]
    assert [p["p"] for p in m["points"]] == [got[r][n, id0, id1] for r in REVISIONS]
    assert m["learning"] == {**learning_row(db, model, n, id0, id1)}
    assert res["exposure"] == [] and res["expected"]["id"] == db_rows(
        db, f"SELECT id{n - 1} FROM {'top_bigrams' if n == 2 else 'top_trigrams'} WHERE id0 = ?"
            + (" AND id1 = ?" if n == 3 else ""), ids)[0][0]

    # the task browser filters and sorts by each model's learned_step and forgotten (top-table columns)
    with Catalog(db) as cat:
        early = cat.count_tasks("top_bigrams", {f"learned_step_{model}": (None, 2)})
        lost = cat.count_tasks("top_trigrams", {f"forgotten_{model}": (1, 1)})
        first = cat.tasks("top_bigrams", {f"learned_step_{model}": (0, None)}, f"-learned_step_{model}", limit=1)
    assert early == db_rows(db, "SELECT count(*) FROM learning WHERE n = 2 AND learned_step <= 2")[0][0]
    assert lost == db_rows(db, "SELECT count(*) FROM learning WHERE n = 3 AND forgotten")[0][0]
    assert first.column(f"learned_step_{model}")[0].as_py() == db_rows(
        db, "SELECT max(learned_step) FROM learning WHERE n = 2")[0][0]
    assert main(["export", "--db", str(db), "--out", str(tmp_path / "export")]) == 0
    for table in ("scores", "learning"):
        files = sorted((tmp_path / "export" / table).glob("*.parquet"))
        assert sum(pq.read_metadata(f).num_rows for f in files) == db_rows(db, f"SELECT count(*) FROM {table}")[0][0]
    card = (tmp_path / "export" / "README.md").read_text()
    assert "learned_step" in card and "training checkpoint" in card

    assert main(["report", "--db", str(db), "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "learned_share.png").stat().st_size > 1000
    assert (tmp_path / "report" / "learned_by_decile.png").stat().st_size > 1000
    html = (tmp_path / "report" / "index.html").read_text()
    learned = db_rows(db, "SELECT count(*) FROM learning WHERE learned_step <= 8")[0][0]
    assert "median learned_step" in html and f"<td>{learned:,}</td>" in html


def learning_row(db, model, n, id0, id1) -> dict:
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        res = con.execute("SELECT * FROM learning WHERE model = ? AND n = ? AND id0 = ? AND id1 IS NOT DISTINCT FROM ?",
                          [model, n, id0, id1])
        names = [d[0] for d in res.description]
        return dict(zip(names, res.fetchone()))
    finally:
        con.close()


def test_the_page_draws_the_curve(scored, tmp_path):
    import os
    import subprocess
    import sys

    chromium = "/usr/bin/chromium"
    if not os.path.exists(chromium):
        pytest.fail(f"{chromium} is missing: `apt-get install -y chromium` (scripts/test.sh does it as root)")
    from playwright.sync_api import expect, sync_playwright

    db = tmp_path / "ngrams.duckdb"
    shutil.copy(scored[0], db)
    proc = subprocess.Popen([sys.executable, "-m", "ngram_dask.cli", "serve", "--db", str(db), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})
    errors: list[str] = []
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving "), line + proc.stderr.read()
        url = line.split(" at ")[1].split()[0].rstrip("/")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"])
            try:
                page = browser.new_page(viewport={"width": 1300, "height": 1000})
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.goto(url + "/")
                page.wait_for_selector("body[data-ready='1']")
                page.select_option("#table", "top_bigrams")
                page.locator("#grid tbody tr").first.click()
                expect(page.locator("#curve-step path.curve")).to_have_count(1)
                expect(page.locator("#curve-step circle.point")).to_have_count(len(REVISIONS))
                expect(page.locator("#curves p")).to_contain_text("tiny_neox: ")
                assert page.locator("#curve-exposure").count() == 0  # no exposure table: no second chart
                # every view has its URL: table, filters, sort, page and the open task come back from a link
                page.check("#no-special")
                page.fill("input[name=min_frac_max]", "0.5")
                page.click("#apply")
                page.click("#grid th[data-col=sum_count]")
                page.locator("#grid tbody tr").nth(1).click()
                expect(page.locator("#curve-step path.curve")).to_have_count(1)
                link = page.url
                assert "table=top_bigrams" in link and "no_special=1" in link and "min_frac_max=0.5" in link
                assert "sort=-sum_count" in link and "task=" in link
                again = browser.new_page(viewport={"width": 1300, "height": 1000})
                again.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                again.on("pageerror", lambda e: errors.append(str(e)))
                again.goto(link)
                again.wait_for_selector("body[data-ready='1']")
                expect(again.locator("#curve-step circle.point")).to_have_count(len(REVISIONS))
                assert again.locator("#no-special").is_checked()
                assert again.input_value("input[name=min_frac_max]") == "0.5"
                assert again.url == link
            finally:
                browser.close()
    finally:
        proc.terminate()
        proc.wait(20)
    assert errors == []
