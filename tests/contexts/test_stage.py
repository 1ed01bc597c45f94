"""``ngram-dask contexts`` end to end: real MDS, a real Dask LocalCluster, real DuckDB,
checked against a brute-force oracle over the same samples."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ngram_dask.catalog.verify import verify
from ngram_dask.config import load_config
from ngram_dask.contexts import kernel
from ngram_dask.contexts.run import run_contexts
from ngram_dask.errors import BadInputError, DatabaseError
from ngram_dask.mds import list_shards
from ngram_dask.ngrams.pipeline import run_build

from helpers import db_rows, run_cli, table_dump, write_mds

pytestmark = pytest.mark.slow
VOCAB = 50432
TABLES = ["contexts", "context_counts"]


def markov_samples(seed: int, count: int = 160) -> list[list[int]]:
    """A Markov chain over 40 ids (each with a favourite follower), EOS (0) now and then;
    samples of every length from 1 to 300, so prompts sit at samples' edges."""
    rng = np.random.default_rng(seed)
    pool = rng.choice(np.arange(1, 50277), 40, replace=False)
    favourite = {int(t): int(rng.choice(pool)) for t in pool}
    favourite[0] = int(pool[0])
    samples = []
    for _ in range(count):
        t, s = int(rng.choice(pool)), []
        for _ in range(int(rng.integers(1, 300))):
            s.append(t)
            r = rng.random()
            t = favourite[t] if r < 0.7 else 0 if r < 0.75 else int(rng.choice(pool))
        samples.append(s)
    return samples


def build(root: Path, samples, scheduler: str, tokenizer: str, **over) -> Path:
    mds = write_mds(root / "mds", samples, size_limit=1 << 12)  # many small shards
    cfg = load_config(None, {"input": str(mds), "work_dir": str(root / "work"), "db": str(root / "catalog.duckdb"),
                             "tokenizer": tokenizer, "vocab_size": VOCAB, "build.chunks": 4,
                             "top.top_trigram_min_count": 20, "cluster.scheduler": scheduler, **over})
    run_build(cfg, announce=lambda m: None)
    return root / "catalog.duckdb"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, local_cluster, neox_tokenizer_path):
    root = tmp_path_factory.mktemp("contexts")
    samples = markov_samples(5)
    db = build(root, samples, local_cluster, neox_tokenizer_path)
    return root, db, samples


def fresh(corpus, tmp_path) -> Path:
    """A copy of the built database (contexts write into it)."""
    _, db, _ = corpus
    out = tmp_path / "catalog.duckdb"
    shutil.copy(db, out)
    return out


def cfg_for(db: Path, scheduler: str | None, **over):
    return load_config(None, {"db": str(db), "cluster.scheduler": scheduler, "contexts.per_task": 3,
                              "contexts.before": 6, "contexts.after": 2, "build.explode_unit_tokens": 4000, **over})


def oracle(root: Path, samples, db: Path, seed: int, per_task: int, drop_eos: bool = False):
    """prompt -> (sum_count, every occurrence as (priority, shard, sample, pos, actual))."""
    shards = list_shards(str(root / "mds"))
    where = [(ref.index, j) for ref in shards for j in range(ref.samples)]
    out = {}
    for n in (2, 3):
        table = "top_bigrams" if n == 2 else "top_trigrams"
        for row in db_rows(db, f"SELECT {', '.join(f'id{j}' for j in range(n))}, sum_count FROM {table}"):
            out[(n, tuple(row[:n - 1]))] = (row[-1], row[n - 1], [])
    for s, (shard, j) in zip(samples, where):
        for i in range(len(s) - 1):
            for n in (2, 3):
                if i + n > len(s) or (drop_eos and 0 in s[i:i + n]):
                    continue
                key = (n, tuple(s[i:i + n - 1]))
                if key in out:
                    prio = kernel.priority_int(seed, n, shard, j, i)
                    out[key][2].append((prio, shard, j, i, s[i + n - 1]))
    return out


@pytest.mark.parametrize("prune_rows, sigmas", [(1_000_000, 8.0), (1, 8.0), (1_000_000, 0.0)],
                         ids=["unpruned", "pruned", "rescanned"])
def test_examples_are_the_oracles_k_smallest(corpus, tmp_path, local_cluster, prune_rows, sigmas):
    """Also past the writer's prune threshold (set tiny): DuckDB 2.x refused the next part's
    ``register`` after the prune's ``fetchone`` (issue #30), and the cut must keep the k smallest.
    And with cutoffs so tight (0 sigmas) that some prompt keeps fewer than k under its own:
    the stage scans again without cutoffs, and the result is the same."""
    root, _, samples = corpus
    db = fresh(corpus, tmp_path)
    report = run_contexts(cfg_for(db, local_cluster, **{"contexts.seed": 7, "contexts.prune_rows": prune_rows,
                                                        "contexts.cutoff_sigmas": sigmas}),
                          announce=lambda m: None)
    assert report.groups > 3 and report.rows > 0
    assert (report.prunes >= 2) if prune_rows == 1 else (report.prunes == 0)
    assert (report.rescanned > 0) if sigmas == 0 else (report.rescanned == 0)
    assert set(report.phases) == {"read", "scan", "write"} and report.phases["scan"] > 0
    want = oracle(root, samples, db, 7, 3)
    assert sum(1 for k in want if k[0] == 3) > 0, "no trigram prompts: make the corpus larger"
    counts = {(n, (i0,) if n == 2 else (i0, i1)): c for n, i0, i1, c in db_rows(db, "SELECT * FROM context_counts")}
    assert counts == {k: len(v[2]) for k, v in want.items()}
    assert counts == {k: v[0] for k, v in want.items()}  # = sum_count
    rows = db_rows(db, "SELECT n, id0, id1, rank, expected, actual, shard, sample, pos, window_start, prompt_at, "
                       "window_ids, priority FROM contexts ORDER BY n, id0, id1, rank")
    got: dict = {}
    for n, i0, i1, _rank, expected, actual, shard, sample, pos, ws, at, window, prio in rows:
        key = (n, (i0,) if n == 2 else (i0, i1))
        got.setdefault(key, []).append((prio, shard, sample, pos, actual))
        assert expected == want[key][1] and at == pos - ws
        s = samples[[(r.index, j) for r in list_shards(str(root / "mds")) for j in range(r.samples)]
                    .index((shard, sample))]
        assert window == s[max(0, pos - 6):min(len(s), pos + n + 2)] and ws == max(0, pos - 6)
        assert tuple(window[at:at + n - 1]) == key[1] and window[at + n - 1] == actual
    for key, (_, _, occ) in want.items():
        assert got.get(key, []) == sorted(occ)[:3]  # the 3 smallest priorities: min(3, count) of them
    assert db_rows(db, "SELECT count(*) FROM contexts WHERE expected != actual")[0][0] > 0
    checks = verify(str(db), announce=lambda m: None)
    assert sum("context" in c.name for c in checks) == 4


def test_same_examples_with_one_worker_another_grouping_and_a_rerun(corpus, tmp_path, local_cluster):
    a = fresh(corpus, tmp_path / "a") if (tmp_path / "a").mkdir() is None else None
    run_contexts(cfg_for(a, local_cluster), announce=lambda m: None)
    b = fresh(corpus, tmp_path / "b") if (tmp_path / "b").mkdir() is None else None
    report = run_contexts(cfg_for(b, None, **{"cluster.n_workers": 1, "build.explode_unit_tokens": 50_000,
                                              "cluster.dashboard_address": "127.0.0.1:0"}),
                          announce=lambda m: None)
    assert report.groups == 1
    assert table_dump(a, TABLES) == table_dump(b, TABLES)
    before = table_dump(a, TABLES + ["contexts_ledger"])
    lines: list[str] = []
    again = run_contexts(cfg_for(a, local_cluster), announce=lines.append)
    assert again.present and "nothing to do" in lines[-1]
    assert table_dump(a, TABLES + ["contexts_ledger"]) == before
    other = run_contexts(cfg_for(a, local_cluster, **{"contexts.seed": 1}), announce=lambda m: None)
    assert not other.present and table_dump(a, ["context_counts"]) == {"context_counts": before["context_counts"]}
    assert table_dump(a, ["contexts"]) != {"contexts": before["contexts"]}


def test_drop_eos_counts_what_sum_count_counts(tmp_path, local_cluster, neox_tokenizer_path):
    samples = markov_samples(9, 60)
    db = build(tmp_path, samples, local_cluster, neox_tokenizer_path, **{"build.drop_eos": True})
    run_contexts(cfg_for(db, local_cluster), announce=lambda m: None)
    want = oracle(tmp_path, samples, db, 0, 3, drop_eos=True)
    counts = {(n, (i0,) if n == 2 else (i0, i1)): c for n, i0, i1, c in db_rows(db, "SELECT * FROM context_counts")}
    assert counts == {k: len(v[2]) for k, v in want.items()} == {k: v[0] for k, v in want.items()}
    assert db_rows(db, "SELECT count(*) FROM contexts WHERE list_contains(window_ids[prompt_at + 1:prompt_at + n], 0)"
                   )[0][0] == 0
    verify(str(db), announce=lambda m: None)


def test_verify_fails_on_a_tampered_count(corpus, tmp_path, local_cluster):
    import duckdb

    db = fresh(corpus, tmp_path)
    run_contexts(cfg_for(db, local_cluster), announce=lambda m: None)
    con = duckdb.connect(str(db))
    i0, i1 = con.execute("SELECT id0, id1 FROM context_counts WHERE n = 3 ORDER BY id0, id1 LIMIT 1").fetchone()
    con.execute("UPDATE context_counts SET occurrences = occurrences + 1 WHERE n = 3 AND id0 = ? AND id1 = ?",
                [i0, i1])
    con.close()
    with pytest.raises(DatabaseError, match=rf"prompt \[{i0}, {i1}\] has sum_count \d+ in top_trigrams .*disagree"):
        verify(str(db), announce=lambda m: None)
    r = run_cli("verify", "--db", str(db))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "disagree" in r.stderr


def test_bad_input_is_one_line_and_exit_2(corpus, tmp_path, local_cluster):
    root, _, samples = corpus
    db = fresh(corpus, tmp_path)
    other = write_mds(tmp_path / "other", samples[:10])
    with pytest.raises(DatabaseError, match="was built from input .* not "):
        run_contexts(cfg_for(db, local_cluster, input=str(other)), announce=lambda m: None)
    r = run_cli("contexts", "--db", str(db), "--input", str(other), "--scheduler", local_cluster)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "was built from input" in r.stderr
    # the same path, other data (a shard rewritten): the counts disagree, nothing is written
    changed = tmp_path / "changed"
    shutil.copytree(root / "mds", changed)
    import duckdb

    con = duckdb.connect(str(db))
    con.execute("UPDATE catalog_info SET value = ? WHERE key = 'input'", [str(changed)])
    con.close()
    flipped = [list(reversed(s)) for s in samples]
    shutil.rmtree(changed)
    write_mds(changed, flipped, size_limit=1 << 12)
    with pytest.raises(BadInputError, match="disagree"):
        run_contexts(cfg_for(db, local_cluster), announce=lambda m: None)
    assert "contexts" not in {t for (t,) in db_rows(db, "SELECT table_name FROM information_schema.tables")}
    # no top tables
    bare = tmp_path / "bare.duckdb"
    shutil.copy(corpus[1], bare)
    con = duckdb.connect(str(bare))
    con.execute("DROP TABLE top_bigrams")
    con.execute("DROP TABLE top_trigrams")
    con.close()
    r = run_cli("contexts", "--db", str(bare), "--scheduler", local_cluster)
    assert r.returncode == 2 and "has no top tables" in r.stderr and r.stderr.count("\n") == 1


def test_client_killed_in_the_write_then_rerun(corpus, tmp_path, local_cluster):
    clean = fresh(corpus, tmp_path / "clean") if (tmp_path / "clean").mkdir() is None else None
    run_contexts(cfg_for(clean, local_cluster), announce=lambda m: None)
    db = fresh(corpus, tmp_path)
    args = ["contexts", "--db", str(db), "--scheduler", local_cluster, "--per-task", "3", "--before", "6",
            "--after", "2", "--explode-unit-tokens", "4000"]
    r = run_cli(*args, env={"NGRAM_DASK_CRASH_IN_CONTEXTS": "write"})
    assert r.returncode == 86, r.stderr
    assert "contexts" not in {t for (t,) in db_rows(db, "SELECT table_name FROM information_schema.tables")}
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    assert "(0 already done)" not in r.stdout  # every piece's parts were kept
    assert table_dump(db, TABLES) == table_dump(clean, TABLES)
    verify(str(db), announce=lambda m: None)


def test_client_killed_mid_stage_then_rerun(corpus, tmp_path, local_cluster):
    clean = fresh(corpus, tmp_path / "clean") if (tmp_path / "clean").mkdir() is None else None
    run_contexts(cfg_for(clean, local_cluster), announce=lambda m: None)
    db = fresh(corpus, tmp_path)
    work = tmp_path / "work"
    args = [sys.executable, "-m", "ngram_dask.cli", "contexts", "--db", str(db), "--work-dir", str(work),
            "--scheduler", local_cluster, "--per-task", "3", "--before", "6", "--after", "2",
            "--explode-unit-tokens", "1500"]  # another grouping than the clean run's: the same result
    import os

    proc = subprocess.Popen(args, env={**os.environ, "NGRAM_DASK_CONTEXTS_TEST_DELAY": "0.5"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list(work.glob("contexts-*/_done/*.json")):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    done = len(list(work.glob("contexts-*/_done/*.json")))
    proc.wait(30)
    import json

    (manifest,) = work.glob("contexts-*/manifest.json")
    assert 1 <= done < len(json.loads(manifest.read_text())["pieces"]), "killed too late: make the stage longer"
    assert "contexts" not in {t for (t,) in db_rows(db, "SELECT table_name FROM information_schema.tables")}
    r = run_cli(*args[3:])
    assert r.returncode == 0, r.stderr
    assert table_dump(db, TABLES) == table_dump(clean, TABLES)
    pieces = db_rows(db, "SELECT count(*), count(DISTINCT piece) FROM contexts_ledger")[0]
    assert pieces[0] == pieces[1] > 1


def test_a_parquet_input_gives_the_same_counts_and_examples_at_its_own_locations(corpus, tmp_path, local_cluster,
                                                                                neox_tokenizer_path):
    """contexts reads the build's input through ngram_dask.inputs: the same samples as Parquet rows
    give the same occurrence counts, and the examples name (file 0, row) instead of (shard, sample)."""
    from helpers_formats import write_parquet

    root, mds_db, samples = corpus
    write_parquet(tmp_path / "rows.parquet", samples, row_group_size=9)
    cfg = load_config(None, {"input": str(tmp_path / "rows.parquet"), "work_dir": str(tmp_path / "work"),
                             "db": str(tmp_path / "pq.duckdb"), "tokenizer": neox_tokenizer_path,
                             "vocab_size": VOCAB, "build.chunks": 4, "top.top_trigram_min_count": 20,
                             "cluster.scheduler": local_cluster})
    run_build(cfg, announce=lambda m: None)
    db = tmp_path / "pq.duckdb"
    run_contexts(cfg_for(db, local_cluster, **{"contexts.seed": 7}), announce=lambda m: None)
    (tmp_path / "m").mkdir()
    mds = fresh(corpus, tmp_path / "m")
    run_contexts(cfg_for(mds, local_cluster, **{"contexts.seed": 7}), announce=lambda m: None)
    assert table_dump(db, ["context_counts"]) == table_dump(mds, ["context_counts"])
    rows = db_rows(db, "SELECT shard, shard_file, sample, pos, n, window_ids, prompt_at FROM contexts")
    assert rows and {r[0] for r in rows} == {0} and {r[1] for r in rows} == {"rows.parquet"}
    for _, _, sample, pos, n, window, at in rows:
        s = samples[sample]
        assert window == s[max(0, pos - 6):min(len(s), pos + n + 2)] and window[at:at + n - 1] == s[pos:pos + n - 1]
    checks = verify(str(db), announce=lambda m: None)
    assert all(c.ok for c in checks), [c for c in checks if not c.ok]
