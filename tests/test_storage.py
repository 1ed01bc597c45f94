"""``ngram_dask.storage``: paths and URLs, atomic writes, markers, globbing, storage options."""

from __future__ import annotations

import errno
import os

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ngram_dask import storage
from ngram_dask.storage import (
    apply_storage_options,
    atomic_write_arrow,
    atomic_write_bytes,
    atomic_write_parquet,
    atomic_write_path,
    check_access,
    glob,
    is_local,
    join,
    local_path,
    read_arrow,
    read_marker,
    redact_url,
    sql_identifier,
    sql_string,
    storage_options,
    use_storage,
    write_marker,
)


def test_join_local_and_urls():
    assert join("/data/work", "explode", "n=3") == os.path.join("/data/work", "explode", "n=3")
    assert join("s3://bucket/work/", "explode", "part.parquet") == "s3://bucket/work/explode/part.parquet"
    assert join("s3://bucket/work", "a") == "s3://bucket/work/a"
    assert join("memory://root") == "memory://root"


@pytest.mark.parametrize("url,local,path", [
    ("/data/x", True, "/data/x"),
    ("relative/x", True, "relative/x"),
    ("file:///data/x", True, "/data/x"),
    ("s3://bucket/x", False, "s3://bucket/x"),
    ("memory://x", False, "memory://x"),
])
def test_is_local_and_local_path(url, local, path):
    assert is_local(url) is local
    if local:
        assert local_path(url) == path


def _leftovers(folder) -> list[str]:
    return [p.name for p in folder.iterdir() if ".tmp-" in p.name]


def test_atomic_write_bytes_replaces_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "deep" / "er" / "f.bin"
    atomic_write_bytes(str(target), b"one")
    atomic_write_bytes(str(target), b"two", durable=False)
    assert target.read_bytes() == b"two" and _leftovers(target.parent) == []


@pytest.mark.parametrize("fails", ["fsync", "replace"])
def test_a_failed_atomic_write_keeps_the_old_file_and_no_temp_file(tmp_path, monkeypatch, fails):
    target = tmp_path / "marker.json"
    target.write_bytes(b"old")

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage.os, fails, full)
    with pytest.raises(OSError) as info:
        atomic_write_bytes(str(target), b"new")
    assert info.value.errno == errno.ENOSPC
    assert target.read_bytes() == b"old" and _leftovers(tmp_path) == []


def test_atomic_write_on_an_object_store():
    url = "memory://ngram-dask-test-storage/sub/f.bin"
    atomic_write_bytes(url, b"data")
    fs, path = storage.get_fs(url)
    assert fs.cat(path) == b"data"
    fs.rm("/ngram-dask-test-storage", recursive=True)


def _copy_to(path: str, rows: int) -> None:
    """DuckDB writes the file itself, as the aggregate does."""
    from ngram_dask.db import memory

    con = memory()
    try:
        con.execute(f"COPY (SELECT range AS x FROM range({rows})) TO {sql_string(path)} (FORMAT parquet)")
    finally:
        con.close()


def test_atomic_write_path_publishes_a_file_duckdb_wrote(tmp_path):
    target = tmp_path / "chunks" / "n=2" / "part.parquet"
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    for rows in (3, 5):  # a retried task replaces its own file
        with atomic_write_path(str(target), str(scratch)) as path:
            assert os.path.dirname(path) == str(target.parent)  # beside it: the publish is a rename
            _copy_to(path, rows)
            assert not target.exists() or pq.read_table(target).num_rows == 3
        assert pq.read_table(target).column("x").to_pylist() == list(range(rows))
    assert _leftovers(target.parent) == [] and list(scratch.iterdir()) == []


def test_a_failed_atomic_write_path_keeps_the_old_file_and_no_temp_file(tmp_path):
    target = tmp_path / "part.parquet"
    target.write_bytes(b"old")
    with pytest.raises(OSError, match="disk full"):
        with atomic_write_path(str(target), str(tmp_path)) as path:
            _copy_to(path, 10)
            raise OSError(errno.ENOSPC, "disk full")
    assert target.read_bytes() == b"old" and _leftovers(tmp_path) == []


def test_atomic_write_path_to_an_object_store_uploads_from_scratch(tmp_path):
    url = "memory://ngram-dask-test-storage/chunks/part.parquet"
    with atomic_write_path(url, str(tmp_path)) as path:
        assert os.path.dirname(path) == str(tmp_path)
        _copy_to(path, 4)
    fs, remote = storage.get_fs(url)
    with fs.open(remote, "rb") as f:
        assert pq.read_table(f).num_rows == 4
    assert list(tmp_path.iterdir()) == []
    fs.rm("/ngram-dask-test-storage", recursive=True)


def test_atomic_write_parquet_returns_its_size(tmp_path):
    table = pa.table({"id0": pa.array([3, 1, 2], pa.uint16()), "count": pa.array([5, 6, 7], pa.uint64())})
    target = tmp_path / "part.parquet"
    nbytes = atomic_write_parquet(str(target), table, compression="zstd")
    assert nbytes == target.stat().st_size and pq.read_table(target).equals(table)
    assert _leftovers(tmp_path) == []



@pytest.mark.parametrize("where", ["local", "memory"])
def test_arrow_parts_round_trip_with_their_size(tmp_path, where):
    table = pa.table({"id0": pa.array([3, 1, 2], pa.uint16()), "count": pa.array([5, 6, 7], pa.uint64()),
                      "window": pa.array([b"ab", b"", b"\x00\x01"], pa.binary()), "name": ["a", None, "c"]})
    url = str(tmp_path / "examples" / "g.arrow") if where == "local" else "memory://ngram-dask-test-arrow/g.arrow"
    nbytes = atomic_write_arrow(url, table)
    fs, path = storage.get_fs(url)
    assert nbytes == fs.size(path) and read_arrow(url).equals(table)
    assert read_arrow(url).schema == table.schema
    if where == "local":
        assert _leftovers(tmp_path / "examples") == []
    else:
        fs.rm("/ngram-dask-test-arrow", recursive=True)

def test_markers_round_trip_and_a_missing_or_torn_one_is_none(tmp_path):
    url = str(tmp_path / "_done" / "chunk-3.json")
    write_marker(url, {"rows": 3, "chunk": 3})
    assert read_marker(url) == {"chunk": 3, "rows": 3}
    assert read_marker(str(tmp_path / "_done" / "nope.json")) is None
    full = (tmp_path / "_done" / "chunk-3.json").read_bytes()
    (tmp_path / "_done" / "chunk-3.json").write_bytes(full[: len(full) // 2])  # a torn write
    assert read_marker(url) is None


def test_glob_local_is_sorted_paths_and_remote_keeps_the_protocol(tmp_path):
    for name in ("b.parquet", "a.parquet", "c.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert glob(str(tmp_path / "*.parquet")) == [str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet")]
    assert glob(str(tmp_path / "*.none")) == []
    fs = fsspec.filesystem("memory")
    for name in ("y.parquet", "x.parquet"):
        fs.pipe(f"/ngram-dask-test-glob/{name}", b"x")
    try:
        found = glob("memory://ngram-dask-test-glob/*.parquet")
        assert [u.rsplit("/", 1)[1] for u in found] == ["x.parquet", "y.parquet"]
        assert all(u.startswith("memory://") for u in found)
        assert [storage.get_fs(u)[0].cat(storage.get_fs(u)[1]) for u in found] == [b"x", b"x"]
    finally:
        fs.rm("/ngram-dask-test-glob", recursive=True)


def test_sql_quoting():
    assert sql_string("it's /a b") == "'it''s /a b'"
    assert sql_identifier('we"ird') == '"we""ird"'


@pytest.mark.parametrize("url,shown", [
    ("s3://key:secret@host:8333/bucket/k", "s3://***@host:8333/bucket/k"),
    ("https://user:p@ss@example.org", "https://***@example.org"),
    ("https://user@example.org/", "https://***@example.org/"),
    ("s3://bucket/key", "s3://bucket/key"),
    ("tcp://10.0.0.5:8786", "tcp://10.0.0.5:8786"),
    ("/local/path", "/local/path"),
    ("", ""),
    (None, None),
])
def test_redact_url(url, shown):
    assert redact_url(url) == shown


def test_storage_options_hold_endpoint_and_region_only():
    assert storage_options() == {}
    assert storage_options("http://127.0.0.1:8333") == {"s3": {"client_kwargs": {"endpoint_url": "http://127.0.0.1:8333"}}}
    assert storage_options(None, "eu-west-1") == {"s3": {"client_kwargs": {"region_name": "eu-west-1"}}}


def test_apply_storage_options_merges_into_what_fsspec_has(monkeypatch):
    monkeypatch.setattr(fsspec.config, "conf", {"s3": {"anon": False, "client_kwargs": {"verify": False,
                                                                                          "region_name": "a"}},
                                                "gcs": {"project": "p"}})
    apply_storage_options({"s3": {"client_kwargs": {"endpoint_url": "http://x"}}})
    assert fsspec.config.conf == {"s3": {"anon": False, "client_kwargs": {"verify": False, "region_name": "a",
                                                                          "endpoint_url": "http://x"}},
                                  "gcs": {"project": "p"}}
    assert use_storage(None, "b") == {"s3": {"client_kwargs": {"region_name": "b"}}}
    assert fsspec.config.conf["s3"]["client_kwargs"] == {"verify": False, "region_name": "b",
                                                         "endpoint_url": "http://x"}
    before = dict(fsspec.config.conf)
    apply_storage_options({})
    assert fsspec.config.conf == before


def test_check_access(tmp_path):
    (tmp_path / "in").mkdir()
    work = tmp_path / "work"
    work.mkdir()
    assert check_access(str(tmp_path / "in"), str(work)) is None
    assert list(work.iterdir()) == []  # the probe is gone
    assert "cannot see the input" in check_access(str(tmp_path / "missing"), str(work))
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert "cannot write to the work dir" in check_access(str(tmp_path / "in"), str(blocker / "work"))
