"""``ngram-dask serve`` as a person uses it: a real server process on 127.0.0.1, real HTTP,
and the page in Debian's headless Chromium driven by Playwright."""

from __future__ import annotations

import csv
import io
import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ngram_dask.catalog.api import Catalog

from catalog_corpus import RES, TELOME, build_catalog_db
from helpers import run_cli
from serve_catalog import MODELS, add_scores_and_scan

pytestmark = pytest.mark.slow  # a real server process and a real browser

CHROMIUM = "/usr/bin/chromium"
# Root in a container: no sandbox; offline: nothing that phones home.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


class Server:
    """``python -m ngram_dask.cli serve --db DB --port 0``; the URL comes from its first line."""

    def __init__(self, db: Path, *extra: str):
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "ngram_dask.cli", "serve", "--db", str(db),
                                      "--port", "0", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env)
        line = self.proc.stdout.readline()
        if not line.startswith("serving "):
            self.proc.kill()
            raise AssertionError(f"serve did not start: {line!r} {self.proc.stderr.read()}")
        self.url = line.split(" at ")[1].split()[0].rstrip("/")

    def get(self, path: str, **params):
        """(status, parsed JSON or raw bytes, headers)."""
        url = self.url + path + ("?" + urllib.parse.urlencode(params) if params else "")
        try:
            with urllib.request.urlopen(url, timeout=60) as r:
                body, status, headers = r.read(), r.status, r.headers
        except urllib.error.HTTPError as e:
            body, status, headers = e.read(), e.code, e.headers
        if headers.get("content-type", "").startswith("application/json"):
            return status, json.loads(body), headers
        return status, body, headers

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="module")
def db(tmp_path_factory, local_cluster, neox_tokenizer_path):
    root = tmp_path_factory.mktemp("serve")
    good, _ = build_catalog_db(root, local_cluster, neox_tokenizer_path)
    scored = add_scores_and_scan(good, root / "scored.duckdb")
    from ngram_dask.config import load_config
    from ngram_dask.contexts.run import run_contexts

    run_contexts(load_config(None, {"db": str(scored), "work_dir": str(root / "contexts-work"),
                                    "cluster.scheduler": local_cluster}), announce=lambda m: None)
    return scored


@pytest.fixture(scope="module")
def server(db):
    s = Server(db)
    try:
        yield s
    finally:
        s.close()


def test_binds_loopback_by_default(server):
    assert server.url.startswith("http://127.0.0.1:")
    status, body, headers = server.get("/")
    assert status == 200 and b"<script src=\"/static/app.js\">" in body
    status, body, _ = server.get("/static/app.js")
    assert status == 200 and b"http" not in body.replace(b"http://www.w3.org/2000/svg", b"")  # no CDN


def test_next_tokens_over_http(server):
    status, res, _ = server.get("/api/next", text=" telome")
    assert status == 200 and res["found"] is True
    assert res["tokens"] == [{"id": TELOME, "token": " telome"}]
    big = {lk["table"]: lk for lk in res["lookups"]}["bigrams"]
    first = big["completions"][0]
    assert (first["token"], first["count"], big["prefix_count"]) == ("res", 998, 1000)
    assert first["probability"] == pytest.approx(0.998)
    assert server.get("/api/next", ids=str(TELOME))[1]["lookups"] == res["lookups"]
    status, res, _ = server.get("/api/next", text=", or", top=2)
    tri = res["lookups"][0]
    assert tri["table"] == "trigrams" and [c["token"] for c in tri["completions"]] == [" common", " ice"]


def test_count_and_prob_over_http(server):
    assert server.get("/api/count", text=" telomeres")[1]["count"] == 998
    assert server.get("/api/count", ids=f"{TELOME},{RES}")[1]["count"] == 998
    status, res, _ = server.get("/api/prob", text=", or", next=" common")
    assert status == 200 and res["next"]["token"] == " common"
    assert res["rows"][0]["table"] == "trigrams" and res["rows"][0]["prob"] == pytest.approx(1100 / 1200)
    assert server.get("/api/prob", ids=str(TELOME), next_id=str(RES))[1]["rows"][0]["prob"] == pytest.approx(0.998)


def test_rows_filter_sort_page_like_the_python_api(server, db):
    params = {"table": "top_bigrams", "max_p_pythia_70m_deduped": "0.1", "min_p_pythia_12b_deduped": "0.9",
              "min_frac_max": "0.55", "sort": "-sum_count"}
    with Catalog(db) as cat:
        want = cat.tasks("top_bigrams", {"p_pythia_70m_deduped": (None, 0.1), "p_pythia_12b_deduped": (0.9, None),
                                         "frac_max": (0.55, None)}, "-sum_count", limit=None).to_pylist()
    assert len(want) > 6
    got = []
    for offset in range(0, len(want), 5):
        status, page, _ = server.get("/api/rows", **params, limit=5, offset=offset)
        assert status == 200 and page["total"] == len(want) and page["sort"] == "-sum_count"
        got += page["rows"]
    assert got == json.loads(json.dumps(want))
    assert [r["sum_count"] for r in got] == sorted((r["sum_count"] for r in got), reverse=True)
    status, page, _ = server.get("/api/rows", table="top_trigrams", contains=" or")
    assert status == 200 and page["total"] >= 1 and all(" or" in r["seq"] for r in page["rows"])
    status, page, _ = server.get("/api/rows", table="scan_4", min_p_long="0.85", sort="-p_long", limit=3)
    assert page["total"] == 5 and [r["long_ids"][0] for r in page["rows"]] == [29, 28, 27]
    # hide special tokens: no task whose prompt or next token is <|endoftext|> (id 0) or another special
    with Catalog(db) as cat:
        special = set(cat.tokenizer.all_special_ids)
        every = cat.tasks("top_bigrams", limit=None).to_pylist()
    plain = [r for r in every if r["id0"] not in special and r["id1"] not in special]
    assert 0 in special and 0 < len(plain) < len(every)
    status, page, _ = server.get("/api/rows", table="top_bigrams", no_special="1", limit=500)
    assert page["total"] == len(plain) and {r["id0"] for r in page["rows"]} == {r["id0"] for r in plain}


def test_task_view_over_http(server):
    status, t, _ = server.get("/api/rows", table="top_trigrams", contains=", or common")
    row = t["rows"][0]
    status, task, _ = server.get("/api/task", table="top_trigrams", ids=f"{row['id0']},{row['id1']}")
    assert status == 200 and task["prefix_count"] == 1200
    assert [(f["token"], f["count"]) for f in task["followers"]] == [(" common", 1100), (" ice", 100)]
    assert [m["column"] for m in task["models"]] == list(MODELS)
    assert [m["p"] for m in task["models"]] == [row[c] for c in MODELS]


def test_contexts_over_http(server):
    status, t, _ = server.get("/api/rows", table="top_trigrams", contains=", or common")
    row = t["rows"][0]
    status, res, _ = server.get("/api/contexts", ids=f"{row['id0']},{row['id1']}", limit=3)
    assert status == 200 and res["table"] == "top_trigrams" and res["occurrences"] == 1200
    assert [e["rank"] for e in res["examples"]] == [1, 2, 3] and res["note"] is None
    for e in res["examples"]:
        assert e["prompt_text"] == ", or" and e["next_text"] in (" common", " ice")
        assert e["matches"] == (e["actual"]["id"] == e["expected"]["id"] == row["id2"])
        assert [t["role"] for t in e["tokens"]].count("next") == 1
    assert server.get("/api/contexts", prompt=" telome")[1]["occurrences"] == 1000
    status, res, _ = server.get("/api/contexts", ids="7,7")  # not a task: a note, no examples
    assert status == 200 and res["examples"] == [] and "is not a prompt of top_trigrams" in res["note"]
    status, res, _ = server.get("/api/contexts", ids="1,2,3")
    assert status == 400 and "1 token (top_bigrams) or 2 tokens" in res["error"]


def test_downloads_hold_the_whole_selection(server):
    sel = {"table": "top_bigrams", "min_frac_max": "0.6", "sort": "-sum_count"}
    total = server.get("/api/rows", **sel)[1]["total"]
    status, body, headers = server.get("/api/download", **sel, format="csv")
    assert status == 200 and "top_bigrams.csv" in headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(body.decode())))
    assert len(rows) == total and "p_pythia_12b_deduped" in rows[0]
    assert [int(r["sum_count"]) for r in rows] == sorted((int(r["sum_count"]) for r in rows), reverse=True)
    import pyarrow.parquet as pq

    status, body, _ = server.get("/api/download", **sel, format="parquet")
    table = pq.read_table(io.BytesIO(body))
    assert table.num_rows == total and table.column("sum_count").to_pylist() == [int(r["sum_count"]) for r in rows]
    status, body, _ = server.get("/api/download", table="scan_4", format="csv")
    first = next(csv.DictReader(io.StringIO(body.decode())))
    assert status == 200 and json.loads(first["long_ids"])[1:] == [1, 2, 3, 4]


@pytest.mark.parametrize("path,params,words", [
    ("/api/rows", {"table": "tokens"}, "not a top or scan table"),
    ("/api/rows", {"sort": "frac_max; DROP TABLE tokens"}, "cannot sort"),
    ("/api/rows", {"min_seq": "1"}, "no numeric column 'seq'"),
    ("/api/rows", {"min_frac_max": "abc"}, "must be a number"),
    ("/api/rows", {"limit": "100000"}, "limit must be between"),
    ("/api/rows", {"offset": "-1"}, "offset must be between"),
    ("/api/rows", {"colour": "red"}, "unknown parameter 'colour'"),
    ("/api/next", {}, "is required"),
    ("/api/next", {"text": ""}, "tokenizes to nothing"),
    ("/api/next", {"ids": "1,x"}, "comma-separated token ids"),
    ("/api/next", {"text": "a", "top": "0"}, "top must be between"),
    ("/api/count", {"ids": "1,2,3,4,5"}, "counts n-grams of n in"),
    ("/api/prob", {"text": " telome", "next": " chromosome ends"}, "give one token"),
    ("/api/task", {"table": "top_trigrams", "ids": "1"}, "named by 2 id(s)"),
    ("/api/download", {"format": "xlsx"}, "format must be csv or parquet"),
    ("/api/download", {"limit": "5"}, "unknown parameter 'limit'"),  # a download is the whole selection
])
def test_bad_parameters_get_400_and_one_line(server, path, params, words):
    status, body, _ = server.get(path, **params)
    assert status == 400, body
    assert list(body) == ["error"] and "\n" not in body["error"] and words in body["error"]


def test_sixteen_concurrent_requests_are_answered_correctly(server):
    want_next = server.get("/api/next", text=" telome")[1]
    want_rows = server.get("/api/rows", table="top_bigrams", min_frac_max="0.7", sort="-sum_count", limit=7)[1]
    want_dl = server.get("/api/download", table="top_bigrams", format="csv")[1]

    def one(i):
        kind = i % 3
        if kind == 0:
            return server.get("/api/next", text=" telome")[1] == want_next
        if kind == 1:
            got = server.get("/api/rows", table="top_bigrams", min_frac_max="0.7", sort="-sum_count", limit=7)[1]
            return got == want_rows
        return server.get("/api/download", table="top_bigrams", format="csv")[1] == want_dl

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(48)))
    assert all(results)


def test_cli_errors_are_one_line(db, tmp_path):
    r = run_cli("serve", "--db", str(tmp_path / "nope.duckdb"), "--port", "0", timeout=60)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "does not exist" in r.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        r = run_cli("serve", "--db", str(db), "--port", str(port), timeout=60)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and f"port {port} on 127.0.0.1 is in use" in r.stderr


def test_the_page_in_a_real_browser(server, tmp_path):
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install -y chromium` (scripts/test.sh does it as root)")
    from playwright.sync_api import expect, sync_playwright

    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 1000})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(server.url + "/")
            page.wait_for_selector("body[data-ready='1']")

            # completions while typing, with token boundaries
            page.locator("#prompt").press_sequentially(" telome", delay=30)
            first = page.locator("#completions table[data-table=bigrams] tbody tr").first
            expect(first.locator(".tok")).to_have_text("res")
            expect(first.locator(".share")).to_have_text("99.8%")
            # whitespace is visible: a leading space is a mark, the exact string is on hover
            expect(page.locator("#tokens .tok")).to_have_text(["·telome"])
            expect(page.locator("#tokens .tok").first).to_have_attribute("title", f'id {TELOME}: " telome"')
            assert page.evaluate("() => tok('    ', 50270).textContent") == "····"
            assert page.evaluate("() => tok('\\n\\t x', 1).textContent") == "↵⇥·x"
            assert page.evaluate("() => tok('    ', 50270).title") == 'id 50270: "    "'
            assert page.evaluate("() => tok('', 7).textContent") == "∅"
            first.click()  # a completion appends itself to the prompt
            expect(page.locator("#prompt")).to_have_value(" telomeres")
            expect(page.locator("#tokens .tok")).to_have_count(2)

            # filter, sort and page the top bigrams
            page.select_option("#table", "top_bigrams")
            page.fill("input[name=min_frac_max]", "0.55")
            page.click("#apply")
            total = server.get("/api/rows", table="top_bigrams", min_frac_max="0.55")[1]["total"]
            page.select_option("#pagesize", "25")
            expect(page.locator("#pageinfo")).to_have_text(f"rows 1–25 of {total}")
            page.click("#grid th[data-col=sum_count]")
            expect(page.locator("#grid th[data-col=sum_count]")).to_have_class("sortable sorted-desc ")
            want = server.get("/api/rows", table="top_bigrams", min_frac_max="0.55", sort="-sum_count",
                              limit=25, offset=25)[1]["rows"]
            page.click("#next")
            expect(page.locator("#pageinfo")).to_have_text(f"rows 26–{min(50, total)} of {total}")
            cells = page.locator("#grid tbody td[data-col=sum_count]")
            expect(cells).to_have_text([f"{r['sum_count']:,}" for r in want])

            # open a task: the followers and p against model size
            page.select_option("#table", "top_trigrams")
            page.fill("#contains", ", or common")
            page.press("#contains", "Enter")
            expect(page.locator("#pageinfo")).to_have_text("rows 1–1 of 1")
            page.locator("#grid tbody tr").first.click()
            expect(page.locator("#followers tbody tr").first.locator(".tok")).to_have_text("·common")
            expect(page.locator("#followers tbody tr").first.locator(".share")).to_have_text("91.7%")
            expect(page.locator("#models svg circle")).to_have_count(len(MODELS))
            # where the eye is: beside the table, in the window, not below the rows
            task = page.locator("#task-section").bounding_box()
            grid = page.locator("#browse-section .scroll").bounding_box()
            assert task["x"] >= grid["x"] + grid["width"] and 0 <= task["y"] < 1000, (task, grid)
            # its examples from the corpus: the prompt and its next token highlighted
            examples = page.locator("#examples li.example")
            expect(examples).to_have_count(5)
            expect(page.locator("#examples h3")).to_contain_text("5 of 1,200 occurrences")
            for i in range(5):
                ex = examples.nth(i)
                expect(ex.locator(".context .tok.prompt")).to_have_text([",", "·or"])
                # the text around reads as prose: no token boxes, no whitespace marks
                assert ex.locator(".context .tok").count() == 3 and ex.locator(".context .plain .ws").count() == 0
                assert ex.locator(".context .plain").count() > 0
                nxt = ex.locator(".context .tok.next").inner_text()
                assert nxt in ("·common", "·ice")
                assert ("miss" in ex.get_attribute("class")) == (nxt == "·ice")
                expect(ex.locator(".where")).to_contain_text("shard.00000.mds.zstd, sample ")
            expect(page.locator("#dl-parquet")).to_have_attribute("href", "/api/download?table=top_trigrams"
                                                                         "&contains=%2C+or+common&sort=-frac_max%2C-sum_count&format=parquet")

            # the scan table is there too
            page.select_option("#table", "scan_4")
            expect(page.locator("#pageinfo")).to_have_text("rows 1–25 of 30")
            page.screenshot(path=str(tmp_path / "serve.png"), full_page=True)
        finally:
            browser.close()
    assert (tmp_path / "serve.png").stat().st_size > 10_000
    assert errors == []
