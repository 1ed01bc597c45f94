"""``ngram_dask.db``: the one module that opens DuckDB files, on real files."""

from __future__ import annotations

import os

import duckdb
import pytest

from ngram_dask.db import (
    check_existing,
    connect,
    ensure_info,
    memory,
    one,
    read_info,
    read_only,
    scalar,
    transaction,
    write_info,
    writer_lock,
)
from ngram_dask.errors import DatabaseError
from ngram_dask.schema import SCHEMA_VERSION, TOOL


def test_a_failed_transaction_leaves_nothing(tmp_path):
    db = str(tmp_path / "c.duckdb")
    con = connect(db)
    with transaction(con):
        ensure_info(con)
    with pytest.raises(RuntimeError), transaction(con):
        write_info(con, {"half": "written"})
        con.execute("CREATE TABLE t (x INTEGER)")
        raise RuntimeError("killed")
    con.close()
    with read_only(db) as ro:
        assert read_info(ro) == {"tool": TOOL, "schema_version": str(SCHEMA_VERSION)}
        assert ro.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 't'").fetchone()[0] == 0


def test_scalar_leaves_the_connection_free_for_register(tmp_path):
    """DuckDB 2.x refuses ``register`` after a ``fetchone()`` (an unfinished result): ``scalar`` reads to the end."""
    import pyarrow as pa

    con = connect(str(tmp_path / "c.duckdb"))
    con.execute("CREATE TABLE t AS SELECT range AS x FROM range(5)")
    assert scalar(con, "SELECT count(*) FROM t WHERE x >= ?", [2]) == 3
    con.register("part", pa.table({"x": [7]}))
    assert scalar(con, "SELECT sum(x) FROM part") == 7
    con.close()


def test_a_file_that_is_not_a_database_is_one_line(tmp_path):
    bad = tmp_path / "notes.duckdb"
    bad.write_text("not a database\n" * 100)
    with pytest.raises(DatabaseError) as info:
        connect(str(bad), read_only=True)
    assert "\n" not in str(info.value) and str(bad) in str(info.value)


def test_another_tools_database_and_another_build_are_refused_untouched(tmp_path):
    other = tmp_path / "other.duckdb"
    con = duckdb.connect(str(other))
    con.execute("CREATE TABLE users (name VARCHAR)")
    con.close()
    before = other.read_bytes()
    with pytest.raises(DatabaseError, match="was not written by ngram-dask"):
        check_existing(str(other))
    assert other.read_bytes() == before

    ours = str(tmp_path / "ours.duckdb")
    con = connect(ours)
    ensure_info(con)
    write_info(con, {"chunks": "64"})
    con.close()
    assert check_existing(ours, {"chunks": "64"})["chunks"] == "64"
    with pytest.raises(DatabaseError, match="was built with chunks=64, this build has chunks=8"):
        check_existing(ours, {"chunks": "8"})
    assert check_existing(str(tmp_path / "new.duckdb")) is None


def test_the_writer_lock_refuses_a_second_writer_at_once(tmp_path):
    db = str(tmp_path / "c.duckdb")
    with writer_lock(db):
        with pytest.raises(DatabaseError, match="is writing"):
            with writer_lock(db):
                pass
    with writer_lock(db):  # released on exit
        pass


def test_a_second_writer_is_told_which_stage_holds_the_database(tmp_path):
    from ngram_dask.db import writer

    db = str(tmp_path / "c.duckdb")
    with writer(db, "score") as w:
        assert not os.path.exists(db)  # the connection opens on first use, the lock at once
        with pytest.raises(DatabaseError, match=rf"^ngram-dask score \(pid {os.getpid()}\) is writing .*c\.duckdb"):
            with writer(db, "scan"):
                pass
        w.con.execute("CREATE TABLE t AS SELECT 1 AS x")
    with writer(db, "build", settings={"memory_limit": "256MiB", "preserve_insertion_order": False}) as w:
        assert w.con.execute("SELECT current_setting('preserve_insertion_order')").fetchone()[0] is False
        assert w.con.execute("SELECT x FROM t").fetchall() == [(1,)]


def test_a_reader_blocked_by_a_writing_stage_is_told_the_stage_not_duckdbs_lock(tmp_path):
    """A second build checks the database before taking the writer lock; while the first
    build's connection is open DuckDB refuses the file, and the message names the build."""
    import subprocess
    import sys

    db = str(tmp_path / "c.duckdb")
    child = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\n"
         "from ngram_dask.db import writer\n"
         f"with writer({db!r}, 'build') as w:\n"
         "    w.con.execute('CREATE TABLE t AS SELECT 1 AS x')\n"
         "    print('ready', flush=True)\n"
         "    sys.stdin.read()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        with pytest.raises(DatabaseError) as info:
            check_existing(db)
        assert str(info.value) == f"ngram-dask build (pid {child.pid}) is writing {db}; wait for it to finish"
    finally:
        child.communicate("", timeout=60)
    assert child.returncode == 0
    con = connect(db)  # DuckDB's own refusal when no stage holds the lock is unchanged
    try:
        other = subprocess.run([sys.executable, "-c", f"from ngram_dask.db import connect; connect({db!r})"],
                               capture_output=True, text=True)
        assert other.returncode != 0 and "is in use by another process" in other.stderr
    finally:
        con.close()


def test_one_and_scalar_leave_the_connection_free_for_arrow(tmp_path):
    """DuckDB 2 refuses ``register``/``unregister``/``sql`` on a connection whose last result
    was left half-read: ``.fetchone()`` of a SELECT leaves it so, even of one row (the
    contexts stage died on it). ``db.one`` and ``db.scalar`` read their result to the end."""
    import pyarrow as pa

    table = pa.table({"a": [1, 2, 3]})
    con = memory()
    try:
        con.execute("CREATE TABLE t AS SELECT range AS x FROM range(100000)")
        con.execute("SELECT count(*) FROM t").fetchone()
        with pytest.raises(duckdb.Error, match="unfinished result"):  # why the package never calls fetchone
            con.register("v", table)
        assert scalar(con, "SELECT count(*) FROM t") == 100000
        con.register("v", table)
        assert one(con, "SELECT x, x + 1 FROM t WHERE x >= ? ORDER BY x", [7]) == (7, 8)
        assert con.sql("SELECT sum(a) FROM v").fetchall() == [(6,)]
        assert one(con, "SELECT x FROM t WHERE x < 0") is None
        con.unregister("v")
    finally:
        con.close()
