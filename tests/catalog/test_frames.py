"""`ngram_dask.counts`: the final counts as Dask DataFrames, one partition per id0 chunk,
computed on a LocalCluster and on `dask scheduler` + `dask worker` processes, checked
against the DuckDB catalog and a brute-force oracle."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

import ngram_dask
from ngram_dask.config import load_config
from ngram_dask.errors import UserError
from ngram_dask.ngrams.pipeline import run_build

from helpers import db_rows, oracle, write_mds

pytestmark = pytest.mark.slow  # builds catalogs on a LocalCluster and on dask processes

CHUNKS = 5


@pytest.fixture(scope="module")
def built(tmp_path_factory, local_cluster):
    tmp = tmp_path_factory.mktemp("frames")
    rng = np.random.default_rng(11)
    # a few frequent trigrams among random ones, so the top 100 has clear and tied counts
    samples = [rng.integers(0, 300, 400).tolist() for _ in range(30)] + [[7, 8, 9] * 100, [65535, 0, 65535] * 40]
    mds = write_mds(tmp / "mds", samples, size_limit=1 << 12)
    cfg = load_config(None, {"input": str(mds), "work_dir": str(tmp / "work"), "db": str(tmp / "catalog.duckdb"),
                             "vocab_size": 65536, "build.chunks": CHUNKS, "cluster.scheduler": local_cluster,
                             "build.steps": "explode,aggregate,load"})
    run_build(cfg, announce=lambda m: None)
    return cfg, samples


def _top100(frame) -> list[tuple]:
    top = frame.nlargest(100, "count").compute()
    return sorted((int(r.count), int(r.id0), int(r.id1), int(r.id2)) for r in top.itertuples())


@pytest.mark.parametrize("source", ["work_dir", "db"])
def test_top_trigrams_and_totals_per_id0_match_the_catalog(built, local_cluster, source):
    from distributed import Client

    cfg, samples = built
    with Client(local_cluster):
        tri = ngram_dask.counts(getattr(cfg, source), 3)
        assert tri.npartitions == CHUNKS
        got = _top100(tri)
        per_id0 = tri.groupby("id0")["count"].sum().compute()
        parts = [tri.get_partition(c).compute() for c in range(CHUNKS)]
    want_rows = db_rows(cfg.db, "SELECT count, id0, id1, id2 FROM trigrams ORDER BY count DESC, id0, id1, id2")
    cutoff = want_rows[99][0]
    assert [r[0] for r in got][::-1][:1] == [want_rows[0][0]]
    # the 100 largest counts agree; rows tied at the cutoff may be any of the tied ones
    assert sorted(r[0] for r in got) == sorted(r[0] for r in want_rows[:100])
    assert all(r in set(map(tuple, want_rows)) for r in got) and all(r[0] >= cutoff for r in got)
    want_totals = Counter()
    for (a, _, _), c in oracle(samples, 3).items():
        want_totals[a] += c
    assert {int(k): int(v) for k, v in per_id0.items()} == dict(want_totals)
    # the partitioning contract: partition c holds id0 % K == c, sorted by the ids
    for c, part in enumerate(parts):
        assert (part["id0"] % CHUNKS == c).all()
        keys = list(zip(part["id0"], part["id1"], part["id2"]))
        assert keys == sorted(keys)
        assert str(part["id0"].dtype) == "uint16" and str(part["count"].dtype) == "uint64"


def test_prefix_frames_on_dask_processes(built, dask_processes):
    from distributed import Client

    cfg, _ = built
    with Client(dask_processes.address):
        pre = ngram_dask.counts(cfg.work_dir, 2, table="prefixes").compute()
        tri = ngram_dask.counts(cfg.db, 3).compute()
    want = db_rows(cfg.db, "SELECT id0, id1, sum_count, max_count, frac_max FROM bigram_prefixes ORDER BY id0")
    got = sorted((int(r.id0), int(r.id1), int(r.sum_count), int(r.max_count), float(r.frac_max))
                 for r in pre.itertuples())
    assert got == [tuple(r) for r in want]
    assert int(tri["count"].sum()) == db_rows(cfg.db, "SELECT sum(count) FROM trigrams")[0][0]


def test_bad_sources_are_one_line_errors(built, tmp_path):
    cfg, _ = built
    with pytest.raises(UserError, match="neither a catalog"):
        ngram_dask.counts(str(tmp_path), 3)
    with pytest.raises(UserError, match="table must be one of"):
        ngram_dask.counts(cfg.work_dir, 3, table="trigrams")
    with pytest.raises(UserError, match="no table fourgrams"):
        ngram_dask.counts(cfg.db, 4)
