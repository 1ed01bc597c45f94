"""End to end: real MDS -> Dask -> Parquet -> DuckDB, every table checked against a Counter oracle."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ngram_dask.catalog.verify import verify
from ngram_dask.config import load_config
from ngram_dask.errors import DatabaseError
from ngram_dask.ngrams import counting, explode
from ngram_dask.ngrams.pipeline import run_build
from ngram_dask.schema import id_columns, ngram_table, prefix_table

from helpers import db_rows, oracle, oracle_prefixes, run_cli, table_dump, write_mds, write_mds_subfolders

CORE_TABLES = ["bigrams", "bigram_prefixes", "trigrams", "trigram_prefixes"]


def make_cfg(tmp: Path, mds: Path, scheduler: str, **over):
    overrides = {"input": str(mds), "work_dir": str(tmp / "work"), "db": str(tmp / "catalog.duckdb"),
                 "vocab_size": 65536, "build.chunks": 7, "build.steps": "explode,aggregate,load",
                 "cluster.scheduler": scheduler}
    overrides.update(over)
    return load_config(None, overrides)


def build(tmp: Path, samples, scheduler: str, size_limit: int = 1 << 12, **over):
    mds = write_mds(tmp / "mds", samples, size_limit=size_limit)
    cfg = make_cfg(tmp, mds, scheduler, **over)
    report = run_build(cfg, announce=lambda m: None)
    return cfg, report


def assert_matches_oracle(db: str, samples, ngrams=(2, 3), exclude=None):
    for n in ngrams:
        want = oracle(samples, n, exclude)
        cols = ", ".join(id_columns(n))
        got = {tuple(r[:-1]): r[-1] for r in db_rows(db, f"SELECT {cols}, count FROM {ngram_table(n)}")}
        assert got == dict(want), f"{ngram_table(n)} differs from the oracle"
        if n < 2:
            continue
        want_p = oracle_prefixes(want)
        rows = db_rows(db, f"SELECT {cols}, sum_count, max_count, frac_max FROM {prefix_table(n)}")
        got_p = {tuple(r[: n - 1]): (r[n - 1], r[n], r[n + 1], r[n + 2]) for r in rows}
        assert got_p.keys() == want_p.keys()
        for k, (f, s, m, frac) in want_p.items():
            gf, gs, gm, gfrac = got_p[k]
            assert (gf, gs, gm) == (f, s, m), k
            assert gfrac == pytest.approx(frac, rel=1e-15)


def column_types(db: str, table: str) -> dict[str, str]:
    return dict(db_rows(db, "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = ?",
                        [table]))


token_lists = st.lists(st.lists(st.integers(0, 65535), max_size=50), min_size=1, max_size=15)
tie_lists = st.lists(st.lists(st.integers(0, 2), max_size=50), min_size=1, max_size=15)


@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
@given(samples=st.one_of(token_lists, tie_lists), chunks=st.sampled_from([1, 7, 64]),
       unit_tokens=st.sampled_from([1, 300, 10**9]), engine=st.sampled_from(["auto", "duckdb", "numpy"]))
def test_random_streams_match_oracle(tmp_path_factory, local_cluster, samples, chunks, unit_tokens, engine):
    if sum(len(s) for s in samples) == 0:
        samples = samples + [[1]]
    tmp = tmp_path_factory.mktemp("hyp")
    # unit_tokens 1: a task per shard; 300: a few shards per task; 1e9: one task for all.
    cfg, report = build(tmp, samples, local_cluster, size_limit=1 << 9,
                        **{"build.chunks": chunks, "build.explode_unit_tokens": unit_tokens,
                           "build.count_engine": engine})
    assert_matches_oracle(cfg.db, samples)
    assert report.tokens == sum(len(s) for s in samples)
    verify(cfg.db, announce=lambda m: None)
    used = {json.loads(p.read_text())["count_engine"] for p in (tmp / "work" / "explode" / "_done").glob("*.json")}
    assert used <= set(counting.COUNT_ENGINES) and (engine == "auto" or used == {engine})


def test_auto_engine_follows_this_machines_sort_speed():
    """auto counts with numpy where numpy's sort is vectorised (~30 ns a key) and with DuckDB
    where it is not (~65 ns a key, docs/performance.md); an engine named is kept."""
    assert explode.engine_for_sort_speed(30.0) == "numpy"
    assert explode.engine_for_sort_speed(65.0) == "duckdb"
    assert 0 < explode.sort_ns_per_key() < 10_000
    assert explode.resolved_engine("auto") == explode.engine_for_sort_speed(explode.sort_ns_per_key())
    assert explode.resolved_engine("duckdb") == "duckdb" and explode.resolved_engine("numpy") == "numpy"


@pytest.mark.parametrize("chunks,unit_tokens", [(1, 10**9), (7, 5000), (64, 1)])
def test_adversarial_samples(tmp_path, local_cluster, chunks, unit_tokens):
    rng = np.random.default_rng(chunks)
    samples = [[], [0], [65535, 0], [0, 65535, 0], [7] * 2048,
               rng.integers(2000, 65536, 2048).tolist(),
               [0, 0, 0, 65535, 65535, 65535] * 50,
               # heavy ties: every follower of 1001 seen equally often, the smallest id must win
               [1001, 9, 1001, 5, 1001, 3, 1001, 7] * 20,
               rng.integers(0, 3, 500).tolist()]
    cfg, _ = build(tmp_path, samples, local_cluster, size_limit=1 << 12,
                   **{"build.chunks": chunks, "build.explode_unit_tokens": unit_tokens})
    assert_matches_oracle(cfg.db, samples)
    assert db_rows(cfg.db, "SELECT id1, max_count, sum_count FROM bigram_prefixes WHERE id0 = 1001") == [(3, 20, 80)]
    groups = list((tmp_path / "work" / "explode" / "_done").glob("*.json"))
    shards = len(list((tmp_path / "mds").glob("*.mds*")))
    want = {1: shards, 5000: (shards + 1) // 2, 10**9: 1}[unit_tokens]  # ~2,000 tokens per shard
    assert shards > 2 and len(groups) == want
    types = column_types(cfg.db, "trigrams")
    assert types == {"id0": "USMALLINT", "id1": "USMALLINT", "id2": "USMALLINT", "count": "UBIGINT"}
    assert column_types(cfg.db, "bigram_prefixes")["frac_max"] == "DOUBLE"
    info = dict(db_rows(cfg.db, "SELECT key, value FROM catalog_info"))
    assert info["chunks"] == str(chunks) and info["tokens"] == str(sum(map(len, samples)))
    assert int(info["ngram_total_2"]) == sum(max(len(s) - 1, 0) for s in samples)


def test_fourgrams_and_eos_dropping_by_configuration(tmp_path, local_cluster):
    rng = np.random.default_rng(4)
    samples = [rng.integers(0, 6, 300).tolist() for _ in range(5)]
    cfg, _ = build(tmp_path, samples, local_cluster, **{"build.ngrams": "2,3,4", "build.drop_eos": True,
                                                        "build.eos_id": 0, "vocab_size": 50432})
    assert_matches_oracle(cfg.db, samples, ngrams=(2, 3, 4), exclude=0)
    verify(cfg.db, announce=lambda m: None)


def test_rerun_is_a_no_op_and_a_deleted_ledger_row_restores_its_chunk(tmp_path, local_cluster):
    rng = np.random.default_rng(5)
    samples = [rng.integers(0, 40, 200).tolist() for _ in range(20)]
    cfg, first = build(tmp_path, samples, local_cluster)
    before = table_dump(cfg.db, CORE_TABLES)
    second = run_build(cfg, announce=lambda m: None)
    assert second.did_nothing and second.loaded_chunks == 0
    assert table_dump(cfg.db, CORE_TABLES) == before

    con = duckdb.connect(cfg.db)
    con.execute("DELETE FROM load_ledger WHERE n = 3 AND chunk = 2")
    con.close()
    third = run_build(cfg, announce=lambda m: None)
    assert third.loaded_chunks == 1
    assert table_dump(cfg.db, CORE_TABLES) == before
    assert_matches_oracle(cfg.db, samples)


def test_chunk_rows_lost_with_their_ledger_row_are_restored(tmp_path, local_cluster):
    rng = np.random.default_rng(6)
    samples = [rng.integers(0, 40, 200).tolist() for _ in range(10)]
    cfg, _ = build(tmp_path, samples, local_cluster)
    before = table_dump(cfg.db, CORE_TABLES)
    con = duckdb.connect(cfg.db)
    con.execute("DELETE FROM load_ledger WHERE n = 2 AND chunk = 4")
    con.execute("DELETE FROM bigrams WHERE id0 % 7 = 4 AND id1 < 20")
    con.close()
    run_build(cfg, announce=lambda m: None)
    assert table_dump(cfg.db, CORE_TABLES) == before


def test_scheduler_and_worker_processes_give_the_identical_database(tmp_path, local_cluster, dask_processes):
    rng = np.random.default_rng(7)
    samples = [rng.integers(0, 300, int(rng.integers(0, 400))).tolist() for _ in range(40)]
    a, _ = build(tmp_path / "a", samples, local_cluster)
    b, _ = build(tmp_path / "b", samples, dask_processes.address)
    assert table_dump(a.db, CORE_TABLES) == table_dump(b.db, CORE_TABLES)
    assert_matches_oracle(b.db, samples)


def test_subfolder_dataset_is_read_completely(tmp_path, local_cluster):
    rng = np.random.default_rng(8)
    parts = [[rng.integers(0, 50, 100).tolist() for _ in range(6)] for _ in range(3)]
    root = write_mds_subfolders(tmp_path / "mds", parts, size_limit=1 << 11)
    cfg = make_cfg(tmp_path, root, local_cluster)
    report = run_build(cfg, announce=lambda m: None)
    samples = [s for p in parts for s in p]
    assert report.samples == len(samples)
    assert_matches_oracle(cfg.db, samples)


def test_verify_fails_on_an_altered_count(tmp_path, local_cluster):
    samples = [list(range(50)) * 3, [1, 2, 3, 1, 2, 4]]
    cfg, _ = build(tmp_path, samples, local_cluster)
    assert len(verify(cfg.db, announce=lambda m: None)) >= 8
    r = run_cli("verify", "--db", cfg.db)
    assert r.returncode == 0, r.stderr
    con = duckdb.connect(cfg.db)
    con.execute("UPDATE trigrams SET count = count + 1 WHERE id0 = 1 AND id1 = 2 AND id2 = 4")
    con.close()
    with pytest.raises(DatabaseError, match="verify failed"):
        verify(cfg.db, announce=lambda m: None)
    r = run_cli("verify", "--db", cfg.db)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [r.stderr.strip()]
    assert "sum(count) of trigrams" in r.stderr


def test_paths_with_spaces_quotes_and_semicolons(tmp_path, local_cluster):
    odd = tmp_path / "it's a \"dir\"; DROP TABLE x"
    samples = [[1, 2, 3, 4, 1, 2, 3], [5, 6]]
    mds = write_mds(odd / "in put", samples)
    cfg = make_cfg(odd, mds, local_cluster, work_dir=str(odd / "wo'rk; dir"), db=str(odd / "cat'a; log.duckdb"))
    run_build(cfg, announce=lambda m: None)
    assert_matches_oracle(cfg.db, samples)


# --- bad input: one line, exit 2, nothing changed ---------------------------------------

def _cli_build(tmp: Path, mds: Path, scheduler: str, *extra: str, db: Path | None = None):
    return run_cli("build", "--input", str(mds), "--work-dir", str(tmp / "work"),
                   "--db", str(db or tmp / "catalog.duckdb"), "--vocab-size", "50432", "--chunks", "4",
                   "--steps", "explode,aggregate,load", "--scheduler", scheduler, *extra)


def _assert_one_line_error(r, match: str):
    assert r.returncode == 2, (r.stdout, r.stderr)
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and match in err[0], r.stderr
    assert "Traceback" not in r.stderr


def test_bad_shards_fail_with_one_line_naming_shard_and_sample(tmp_path, local_cluster):
    from streaming import MDSWriter

    odd = tmp_path / "odd"
    with MDSWriter(out=str(odd), columns={"tokens": "bytes"}) as w:
        w.write({"tokens": b"\x01\x00"})
        w.write({"tokens": b"\x01\x00\x02"})
    big = write_mds(tmp_path / "big", [[1, 2], [3, 60000]])
    trunc = write_mds(tmp_path / "trunc", [[1, 2, 3]] * 10, compression=None)
    shard = next(trunc.glob("shard.*.mds"))
    shard.write_bytes(shard.read_bytes()[:-10])
    empty = write_mds(tmp_path / "empty", [])
    hashed = write_mds(tmp_path / "hashed", [[1, 2, 3]] * 10, hashes=["sha1"])
    zshard = next(hashed.glob("shard.*.mds.zstd"))
    data = bytearray(zshard.read_bytes())
    data[-1] ^= 0x01
    zshard.write_bytes(bytes(data))
    badindex = write_mds(tmp_path / "badindex", [[1, 2, 3]])
    (badindex / "index.json").write_text("{ not json")
    noindex = write_mds(tmp_path / "noindex", [[1, 2, 3]])
    (noindex / "index.json").unlink()
    from streaming import MDSWriter as _W

    with _W(out=str(tmp_path / "nocol"), columns={"ids": "bytes"}) as w:
        w.write({"ids": b"\x01\x00"})
    cases = [
        (hashed, "sha1 hash"),
        (badindex, "index.json is not valid JSON"),
        (noindex, "has no index.json"),
        (tmp_path / "nocol", "has no 'tokens' column"),
        (odd, "sample 1: 'tokens' holds 3 bytes"),
        (big, "sample 1: token id 60000 at position 1 is >= vocab_size 50432"),
        (trunc, "truncated or corrupt"),
        (empty, "is empty"),
        (tmp_path / "missing", "input dataset not found"),
    ]
    for i, (mds, match) in enumerate(cases):
        r = _cli_build(tmp_path / f"case{i}", mds, local_cluster)
        _assert_one_line_error(r, match)
        if "shard" in match or "sample" in match:
            assert "shard" in r.stderr  # found late, in a task: still names the shard
        assert not (tmp_path / f"case{i}" / "catalog.duckdb").exists()


def test_existing_database_of_another_tool_or_schema_is_untouched(tmp_path, local_cluster):
    mds = write_mds(tmp_path / "mds", [[1, 2, 3, 4]] * 3)
    for name, statements, error in [
        ("other", ["CREATE TABLE bigrams (a INTEGER, b INTEGER)", "INSERT INTO bigrams VALUES (1, 2)"],
         "was not written by ngram-dask"),
        ("old", ["CREATE TABLE catalog_info (key VARCHAR, value VARCHAR)",
                 "INSERT INTO catalog_info VALUES ('tool', 'ngram-dask'), ('schema_version', '0')"],
         "schema version 0"),
    ]:
        db = tmp_path / f"{name}.duckdb"
        con = duckdb.connect(str(db))
        for sql in statements:
            con.execute(sql)
        con.close()
        before = db.read_bytes()
        r = _cli_build(tmp_path / name, mds, local_cluster, db=db)
        _assert_one_line_error(r, error)
        assert db.read_bytes() == before

    notdb = tmp_path / "notes.duckdb"
    notdb.write_text("just some text, not a database\n" * 10)
    r = _cli_build(tmp_path / "z", mds, local_cluster, db=notdb)
    _assert_one_line_error(r, "not a DuckDB database")
    assert notdb.read_text().startswith("just some text")


def test_database_of_another_build_is_refused(tmp_path, local_cluster):
    mds = write_mds(tmp_path / "mds", [[1, 2, 3, 4]] * 3)
    r = _cli_build(tmp_path / "a", mds, local_cluster)
    assert r.returncode == 0, r.stderr
    db = tmp_path / "a" / "catalog.duckdb"
    before = db.read_bytes()
    r = run_cli("build", "--input", str(mds), "--work-dir", str(tmp_path / "w2"), "--db", str(db),
                "--vocab-size", "50432", "--chunks", "5", "--steps", "explode,aggregate,load",
                "--scheduler", local_cluster)
    _assert_one_line_error(r, "was built with chunks=4")
    assert db.read_bytes() == before


def test_work_dir_of_another_input_is_refused(tmp_path, local_cluster):
    a = write_mds(tmp_path / "a", [[1, 2, 3]] * 3)
    b = write_mds(tmp_path / "b", [[4, 5, 6]] * 3)
    assert _cli_build(tmp_path, a, local_cluster).returncode == 0
    r = _cli_build(tmp_path, b, local_cluster, db=tmp_path / "other.duckdb")
    _assert_one_line_error(r, "holds results for different input")


def test_catalog_step_follows_thresholds_and_keeps_tables_otherwise(tmp_path, local_cluster, bpe_tokenizer_path):
    rng = np.random.default_rng(9)
    samples = [rng.integers(0, 30, 400).tolist() for _ in range(10)] + [[5, 6, 7] * 100]
    over = {"tokenizer": bpe_tokenizer_path, "vocab_size": 512, "build.steps": "explode,aggregate,load,top",
            "top.top_trigram_min_count": 50}
    cfg, first = build(tmp_path, samples, local_cluster, **over)
    want = {k for k, (f, s, m, frac) in oracle_prefixes(oracle(samples, 3)).items() if s > 50 and frac > 0.5}
    assert {tuple(r) for r in db_rows(cfg.db, "SELECT id0, id1 FROM top_trigrams")} == want
    again = run_build(cfg, announce=lambda m: None)
    assert again.did_nothing
    cfg2 = make_cfg(tmp_path, tmp_path / "mds", local_cluster, **{**over, "top.top_trigram_min_count": 0})
    third = run_build(cfg2, announce=lambda m: None)
    assert not third.did_nothing and third.loaded_chunks == 0
    want = {k for k, (f, s, m, frac) in oracle_prefixes(oracle(samples, 3)).items() if frac > 0.5}
    assert {tuple(r) for r in db_rows(cfg.db, "SELECT id0, id1 FROM top_trigrams")} == want
    assert dict(db_rows(cfg.db, "SELECT key, value FROM catalog_info"))["top_trigrams_rule"] == \
        "frac_max > 0.5 AND sum_count > 0"


def test_the_top_step_alone_builds_the_top_tables_of_loaded_counts(tmp_path, local_cluster, bpe_tokenizer_path):
    rng = np.random.default_rng(4)
    samples = [rng.integers(0, 30, 300).tolist() for _ in range(8)] + [[40, 41, 42] * 60]
    over = {"tokenizer": bpe_tokenizer_path, "vocab_size": 512, "build.steps": "explode,aggregate,load",
            "top.top_trigram_min_count": 20}
    cfg, _ = build(tmp_path, samples, local_cluster, **over)
    assert not {"tokens", "top_bigrams", "top_trigrams"} & {t for (t,) in db_rows(cfg.db, "SHOW TABLES")}
    # a database without the counts: refused in one line before anything is written
    fresh = tmp_path / "fresh.duckdb"
    r = _cli_build(tmp_path, tmp_path / "mds", local_cluster, "--tokenizer", bpe_tokenizer_path,
                   "--vocab-size", "512", "--chunks", "7", "--steps", "top", db=fresh)
    _assert_one_line_error(r, "run the load step first")
    assert not fresh.exists()

    said: list[str] = []
    report = run_build(make_cfg(tmp_path, tmp_path / "mds", local_cluster, **{**over, "build.steps": "top"}),
                       announce=said.append)
    assert not report.did_nothing and "top" in report.seconds, said
    for n, table, min_count in ((2, "top_bigrams", 0), (3, "top_trigrams", 20)):
        want = {k for k, (f, s, m, frac) in oracle_prefixes(oracle(samples, n)).items() if frac > 0.5 and s > min_count}
        ids = ", ".join(id_columns(n)[:-1])
        assert want and {tuple(r) for r in db_rows(cfg.db, f"SELECT {ids} FROM {table}")} == want
    assert db_rows(cfg.db, "SELECT count(*) FROM tokens") == [(512,)]
    again = run_build(make_cfg(tmp_path, tmp_path / "mds", local_cluster, **{**over, "build.steps": "top"}),
                      announce=lambda m: None)
    assert again.did_nothing  # nothing changed: the top tables are kept


def test_a_work_dir_of_another_explode_grouping_is_refused(tmp_path, local_cluster):
    samples = [list(range(i, i + 300)) for i in range(12)]
    cfg, _ = build(tmp_path, samples, local_cluster, **{"build.explode_unit_tokens": 1000})
    r = run_cli("build", "--input", cfg.input, "--work-dir", cfg.work_dir, "--db", str(tmp_path / "other.duckdb"),
                "--vocab-size", "65536", "--chunks", "7", "--steps", "explode,aggregate,load",
                "--explode-unit-tokens", "2000", "--scheduler", local_cluster)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        f"ngram-dask: error: work dir {cfg.work_dir} holds results for different piece groups "
        "(build.explode_unit_tokens 1000, not 2000); use a fresh --work-dir (or delete this one)"]
    assert not (tmp_path / "other.duckdb").exists()


@pytest.mark.parametrize("layout", [None, "unit-files-1"], ids=["per-chunk-files", "layout-1"])
def test_a_work_dir_of_an_old_layout_is_refused_in_one_line(tmp_path, local_cluster, layout):
    """A work dir whose explode wrote a file per (unit, n, chunk) (no explode_layout in its
    manifest), or part files without marks (layout 1): refused before any work, untouched."""
    import json

    samples = [list(range(i, i + 300)) for i in range(12)]
    cfg, _ = build(tmp_path, samples, local_cluster)
    manifest = Path(cfg.work_dir, "manifest.json")
    old = json.loads(manifest.read_text())
    if layout is None:
        del old["explode_layout"]
    else:
        old["explode_layout"] = layout
    manifest.write_text(json.dumps(old))
    old_part = Path(cfg.work_dir, "explode", "n=3", "id0_chunk=0", "part-x.parquet")
    old_part.parent.mkdir(parents=True)
    old_part.write_bytes(b"PAR1")
    before = sorted(str(p) for p in Path(cfg.work_dir).rglob("*"))
    r = run_cli("build", "--input", cfg.input, "--work-dir", cfg.work_dir, "--db", str(tmp_path / "other.duckdb"),
                "--vocab-size", "65536", "--chunks", "7", "--steps", "explode,aggregate,load",
                "--scheduler", local_cluster)
    _assert_one_line_error(r, "holds results for different explode layout (written by an older ngram-dask)")
    assert sorted(str(p) for p in Path(cfg.work_dir).rglob("*")) == before
    assert not (tmp_path / "other.duckdb").exists()


def test_auto_unit_size_follows_the_worker_memory_and_the_work_dir_keeps_it(tmp_path, local_cluster):
    """Without build.explode_unit_tokens the unit size comes from the worker's memory
    (cluster.memory_limit); a rerun with another limit resumes with the recorded size."""
    import json

    from ngram_dask.inputs import unit_tokens_for

    samples = [list(range(i, i + 300)) for i in range(12)]
    cfg, _ = build(tmp_path, samples, local_cluster, **{"cluster.memory_limit": "1GiB"})
    recorded = json.loads(Path(cfg.work_dir, "manifest.json").read_text())["explode_unit_tokens"]
    assert recorded == unit_tokens_for(1 << 30, 1) < unit_tokens_for(4 << 30, 1)
    again = make_cfg(tmp_path, Path(cfg.input), local_cluster, **{"cluster.memory_limit": "4GiB"})
    report = run_build(again, announce=lambda m: None)
    assert report.did_nothing
    assert_matches_oracle(cfg.db, samples)


def test_the_auto_unit_size_gives_every_local_core_units(tmp_path):
    """A build that starts its own LocalCluster lowers the memory-sized unit so that each
    core gets inputs.UNITS_PER_CORE units (here down to the floor: a tiny corpus); one that
    attaches to a scheduler cannot count its cores and keeps the memory size."""
    import json

    from ngram_dask.inputs import MIN_UNIT_TOKENS, balanced_unit_tokens, unit_tokens_for

    assert balanced_unit_tokens(1 << 27, 200_000_000, 2) == 33_333_334 < 1 << 27
    assert balanced_unit_tokens(1 << 27, 207e9, 64) == 1 << 27  # the Pile fills 64 cores with large units
    assert balanced_unit_tokens(1 << 27, 1000, 2) == MIN_UNIT_TOKENS
    assert balanced_unit_tokens(1 << 27, 200_000_000, None) == 1 << 27
    samples = [list(range(i, i + 300)) for i in range(12)]
    cfg, _ = build(tmp_path, samples, None, **{"cluster.memory_limit": "1GiB", "cluster.n_workers": 1,
                                               "cluster.dashboard_address": ":0"})
    recorded = json.loads(Path(cfg.work_dir, "manifest.json").read_text())["explode_unit_tokens"]
    assert recorded == MIN_UNIT_TOKENS < unit_tokens_for(1 << 30, 1)
    assert_matches_oracle(cfg.db, samples)


def test_chunks_cut_into_key_ranges_through_the_cli(tmp_path, local_cluster):
    """A tiny aggregate budget: every chunk in several key ranges, the database exact."""
    import json

    rng = np.random.default_rng(5)
    samples = [rng.zipf(1.3, 400).clip(max=60000).tolist() for _ in range(40)]
    mds = write_mds(tmp_path / "mds", samples, size_limit=1 << 12)
    r = _cli_build(tmp_path, mds, local_cluster, "--aggregate-budget-bytes", "20000", "--vocab-size", "65536",
                   "--block-rows", "64", "--mark-rows", "16")
    assert r.returncode == 0, r.stderr
    markers = [json.loads(p.read_text()) for p in (tmp_path / "work" / "aggregate" / "n=3" / "_done").glob("*.json")]
    assert markers and all(m["path"] == "numpy" for m in markers)
    assert max(m["ranges"] for m in markers) >= 3, [m["ranges"] for m in markers]
    assert_matches_oracle(str(tmp_path / "catalog.duckdb"), samples)
    verify(str(tmp_path / "catalog.duckdb"), announce=lambda m: None)


def _held_buffers() -> int:
    from ngram_dask.runtime import units

    return sum(b.nbytes for b in units._buffers.values())


def test_a_steps_thread_buffers_are_released_when_it_ends(tmp_path, local_cluster):
    """The explode's keys buffer (8 B a token of its unit) is kept between its tasks, not
    into the aggregate: on a 4 GiB worker at 80M tokens a unit it was 640 MB held on."""
    from distributed import Client

    samples = [list(range(i, i + 300)) for i in range(0, 3000, 300)]
    with Client(local_cluster) as client:
        client.run(lambda: __import__("ngram_dask.runtime.units", fromlist=["x"]).thread_buffer("probe", 1 << 20,
                                                                                               np.uint64))
        assert min(client.run(_held_buffers).values()) >= 8 << 20  # the probe is there before the build
        cfg, _ = build(tmp_path, samples, local_cluster, **{"build.count_engine": "numpy"})
        assert_matches_oracle(cfg.db, samples)
        assert set(client.run(_held_buffers).values()) == {0}
