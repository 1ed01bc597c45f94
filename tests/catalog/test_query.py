"""``ngram-dask query``: top completions of a text, read-only, against oracles over the corpus."""

from __future__ import annotations

import hashlib
import json

import pytest

from ngram_dask.cli import main

from catalog_corpus import RES, TELOME, bad_databases
from helpers import oracle, run_cli

pytestmark = pytest.mark.slow  # builds a catalog with the real tokenizer


@pytest.fixture(scope="module")
def bad(built, tmp_path_factory):
    return bad_databases(built[0], tmp_path_factory.mktemp("query-bad"))


def _query(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(["query", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_telome_is_followed_by_res_as_a_user_runs_it(built):
    db, _ = built
    before = _sha(db)
    r = run_cli("query", "--db", str(db), " telome")
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if "'res'" in ln)
    assert "99.8%" in line and "998" in line and "1,000" in line
    assert line.split()[0] == "1"  # ranked first
    assert "' telome'" in r.stdout
    assert _sha(db) == before  # read-only: the file is untouched


def test_json_answer(built, capsys):
    db, _ = built
    rc, out, _ = _query(capsys, "--db", str(db), "--json", " telome")
    assert rc == 0
    res = json.loads(out)
    assert res["tokens"] == [{"id": TELOME, "token": " telome"}]
    by_table = {lk["table"]: lk for lk in res["lookups"]}
    assert by_table["trigrams"]["completions"] == [] and "needs 2 tokens" in by_table["trigrams"]["note"]
    big = by_table["bigrams"]
    assert big["context"] == [TELOME] and big["prefix_count"] == 1000
    first = big["completions"][0]
    assert (first["id"], first["token"], first["count"]) == (RES, "res", 998)
    assert first["probability"] == pytest.approx(0.998)
    assert res["found"] is True


def _expected(samples, n, context, k):
    counts = oracle(samples, n)
    followers = [(gram[-1], c) for gram, c in counts.items() if list(gram[:-1]) == list(context)]
    total = sum(c for _, c in followers)
    return total, sorted(followers, key=lambda t: (-t[1], t[0]))[:k]


@pytest.mark.parametrize("prompt", [", or", "sodium chloride, or common", " telome is", "water"])
def test_completions_match_the_oracle(built, capsys, prompt):
    db, samples = built
    rc, out, _ = _query(capsys, "--db", str(db), "--json", "--top", "3", prompt)
    res = json.loads(out)
    ids = [t["id"] for t in res["tokens"]]
    for lk in res["lookups"]:
        n = lk["n"]
        if lk["context"] is None:
            assert len(ids) < n - 1 and lk["completions"] == []
            continue
        context = ids[-(n - 1):]
        total, want = _expected(samples, n, context, 3)
        assert lk["context"] == context
        assert lk["prefix_count"] == total
        assert [(c["id"], c["count"]) for c in lk["completions"]] == want
        for c in lk["completions"]:
            assert c["probability"] == pytest.approx(c["count"] / total)
    assert rc == (0 if res["found"] else 1)


def test_trigram_context_is_used(built, capsys):
    db, _ = built
    rc, out, _ = _query(capsys, "--db", str(db), ", or")
    assert rc == 0
    tri = out.split("trigrams:")[1].split("bigrams:")[0]
    assert "' common'" in tri and "91.7%" in tri and "1,100" in tri and "1,200" in tri


def test_top_k_limits_the_rows(built, capsys):
    db, _ = built
    rc, out, _ = _query(capsys, "--db", str(db), "--json", "-k", "1", " telome")
    assert [len(lk["completions"]) for lk in json.loads(out)["lookups"]] == [0, 1]
    rc, _, err = _query(capsys, "--db", str(db), "--top", "0", " telome")
    assert rc == 2 and "query.top must be >= 1" in err


def test_a_context_that_never_occurs_says_so(built, capsys):
    db, _ = built
    rc, out, err = _query(capsys, "--db", str(db), " the")
    assert rc == 1  # like grep: nothing found is not an error, but scripts can tell
    assert "never occur" in out and err == ""
    rc, out, _ = _query(capsys, "--db", str(db), "--json", " the")
    assert rc == 1 and json.loads(out)["found"] is False


def test_tokenizer_defaults_to_the_one_recorded_by_the_build(built, capsys, monkeypatch, bpe_tokenizer_path):
    db, _ = built
    # The configured default (EleutherAI/gpt-neox-20b) is unreachable offline: the
    # recorded local copy must be the one used.
    rc, out, _ = _query(capsys, "--db", str(db), "--json", " telome")
    assert rc == 0 and json.loads(out)["tokenizer"].endswith("gpt-neox-20b")
    # --tokenizer wins, and the mismatch is noted on stderr
    rc, out, err = _query(capsys, "--db", str(db), "--json", "--tokenizer", bpe_tokenizer_path, "telomeres")
    assert json.loads(out)["tokenizer"] == bpe_tokenizer_path
    assert "was built with tokenizer" in err


def test_empty_prompt_is_one_clear_line(built, capsys):
    db, _ = built
    rc, out, err = _query(capsys, "--db", str(db), "")
    assert rc == 2 and out == ""
    assert err.strip().count("\n") == 0 and "tokenizes to nothing" in err


@pytest.mark.parametrize("case", ["missing", "not_duckdb", "other_tool", "old_schema", "unfinished", "no_bigrams"])
def test_bad_databases_are_refused(bad, capsys, case):
    path, words = bad[case]
    rc, out, err = _query(capsys, "--db", str(path), " telome")
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ngram-dask: error:") and words in lines[0]


def test_query_runs_while_another_reader_holds_the_db(built, capsys):
    import duckdb

    db, _ = built
    other = duckdb.connect(str(db), read_only=True)
    try:
        rc, out, _ = _query(capsys, "--db", str(db), " telome")
    finally:
        other.close()
    assert rc == 0 and "99.8%" in out


def test_a_reader_that_stops_early_ends_the_query_quietly(built):
    """``query --json | head``: the reader is gone before the answer is written (a real pipe
    whose read end is closed), which ends the command without a BrokenPipeError traceback."""
    import subprocess
    import sys

    db, _ = built
    proc = subprocess.Popen([sys.executable, "-m", "ngram_dask.cli", "query", "--db", str(db), "--json", " telome"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # long before the command has its answer (it imports and opens the catalog first)
    err = proc.stderr.read().decode()
    assert proc.wait(120) == 141, err  # as a process killed by SIGPIPE (128 + 13) reports it
    assert err == ""
