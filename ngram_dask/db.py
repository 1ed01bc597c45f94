"""The one module that opens DuckDB catalog files.

Every stage that reads or writes the catalog database goes through here:

* ``connect`` / ``read_only`` / ``writer``: open a file, turning DuckDB's errors (a lock
  held by another process, a file that is not a database) into one-line
  ``DatabaseError``\\ s; ``writer`` also holds the writer lock for the stage that writes;
* ``memory``: an in-memory DuckDB for a computation (counting, aggregating, deduplicating);
* ``transaction``: BEGIN, then COMMIT, or ROLLBACK on any exception (a killed or
  failing writer leaves nothing half-written);
* ``check_owner`` / ``check_existing``: refuse, untouched, a database of another tool,
  another schema version or another build;
* ``writer_lock``: ``<db>.lock``, held by the one process that writes the database
  (DuckDB allows a single writer), so a second writer is refused at once with a message
  naming the stage and process that hold it;
* ``catalog_info`` helpers: the key/value table that says whose database it is.
"""

from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from typing import Iterator, Mapping

from ngram_dask.errors import DatabaseError
from ngram_dask.schema import INFO, SCHEMA_VERSION, TOOL


def connect(path: str, read_only: bool = False):
    """A DuckDB connection to ``path``; a one-line ``DatabaseError`` if it cannot be opened."""
    import duckdb

    try:
        return duckdb.connect(path, read_only=read_only)
    except duckdb.IOException as exc:
        msg = str(exc).splitlines()[0]
        if "lock" in msg.lower():
            # Our own writer holds <db>.lock: name the stage, not DuckDB's lock message.
            raise DatabaseError(_writing(path) or f"database {path} is in use by another process: {msg}") from None
        raise DatabaseError(f"{path} is not a DuckDB database this DuckDB can open: {msg}") from None
    except duckdb.Error as exc:
        raise DatabaseError(f"cannot open database {path}: {str(exc).splitlines()[0]}") from None


@contextmanager
def read_only(path: str) -> Iterator:
    """``with read_only(db) as con:`` a read-only connection, closed on exit."""
    con = connect(path, read_only=True)
    try:
        yield con
    finally:
        con.close()


class Writer:
    """The one read-write connection of a stage, opened on first use (``con``)."""

    def __init__(self, path: str, settings: Mapping[str, object] | None = None):
        self.path, self.settings, self._con = path, dict(settings or {}), None

    @property
    def con(self):
        if self._con is None:
            self._con = connect(self.path)
            for key, value in self.settings.items():
                self._con.execute(f"SET {key} = {_sql_value(value)}")
        return self._con

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None


@contextmanager
def writer(path: str, holder: str = "ngram-dask", settings: Mapping[str, object] | None = None) -> Iterator[Writer]:
    """``with writer(db, "build") as w: w.con...``: the database's single writer.

    The writer lock is taken at once and held for the block (``holder`` names the stage
    in the message a second writer gets); the connection opens on first use of ``w.con``
    (``settings``: DuckDB ``SET`` options for it) and closes with the block.
    """
    with writer_lock(path, holder):
        w = Writer(path, settings)
        try:
            yield w
        finally:
            w.close()


def memory(**config):
    """An in-memory DuckDB connection (``config``: DuckDB settings such as threads)."""
    import duckdb

    return duckdb.connect(config=config)


def _sql_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


@contextmanager
def transaction(con) -> Iterator:
    """All statements of the block commit together, or none does."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield con
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


def one(con, sql: str, params=None) -> tuple | None:
    """The first row of a query, its result read to the end (None: no row).

    A result left half-read (``.fetchone()`` of a SELECT, which leaves the end unread even
    for one row) makes DuckDB 2 refuse the connection's next ``register``, ``unregister``,
    ``sql`` or ``from_arrow`` (``ResourceInUseException``: "connection has an unfinished
    result"), so a connection that is used again reads whole results only."""
    rows = con.execute(sql, params or []).fetchall()
    return rows[0] if rows else None


def scalar(con, sql: str, params=None):
    """The one value of a one-value query (``SELECT count(*) ...``), its result read to the end."""
    return one(con, sql, params)[0]


def table_names(con) -> set[str]:
    return {r[0] for r in con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'"
    ).fetchall()}


def columns(con, table: str) -> list[tuple[str, str]]:
    """``[(name, type), ...]`` of a table, in order."""
    return [(r[0], r[1]) for r in con.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = 'main' AND table_name = ? ORDER BY ordinal_position", [table]
    ).fetchall()]


def read_info(con) -> dict[str, str]:
    return dict(con.execute(f"SELECT key, value FROM {INFO}").fetchall())


def ensure_info(con) -> None:
    """Create ``catalog_info`` if missing, stamped with this tool and schema version."""
    con.execute(f"CREATE TABLE IF NOT EXISTS {INFO} (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL)")
    con.executemany(f"INSERT OR IGNORE INTO {INFO} VALUES (?, ?)",
                    [("tool", TOOL), ("schema_version", str(SCHEMA_VERSION))])


def write_info(con, info: Mapping[str, object]) -> None:
    """Set keys of ``catalog_info``; values that are not strings are stored as JSON."""
    rows = [(k, v if isinstance(v, str) else json.dumps(v)) for k, v in info.items()]
    if rows:  # DuckDB's executemany refuses an empty list
        con.executemany(f"INSERT OR REPLACE INTO {INFO} VALUES (?, ?)", rows)


def check_owner(path: str, info: Mapping[str, str]) -> None:
    """Refuse a catalog_info written by another tool or another schema version."""
    if info.get("tool") != TOOL:
        raise DatabaseError(f"database {path} was written by {info.get('tool')!r}, not {TOOL}")
    if info.get("schema_version") != str(SCHEMA_VERSION):
        raise DatabaseError(
            f"database {path} has schema version {info.get('schema_version')}, this ngram-dask "
            f"uses version {SCHEMA_VERSION}: rebuild it with `ngram-dask build` into a new --db"
        )


def check_existing(path: str, identity: Mapping[str, str] | None = None) -> dict[str, str] | None:
    """Inspect an existing database read-only; refuse one the caller must not touch.

    ``identity`` (the build's input, chunks, n, ...) must match what the database
    recorded. Returns its ``catalog_info``; ``{}`` for an empty database; None when
    there is no file yet.
    """
    if not os.path.exists(path):
        return None
    if os.path.isdir(path):
        raise DatabaseError(f"--db {path} is a directory, not a database file")
    with read_only(path) as con:
        tables = table_names(con)
        if not tables:
            return {}
        if INFO not in tables:
            shown = ", ".join(sorted(tables)[:5])
            raise DatabaseError(
                f"database {path} was not written by ngram-dask (tables: {shown}); "
                "choose another --db"
            )
        info = read_info(con)
    check_owner(path, info)
    for key, value in (identity or {}).items():
        if key in info and info[key] != value:
            raise DatabaseError(
                f"database {path} was built with {key}={info[key]}, this build has "
                f"{key}={value}; use a new --db to build it"
            )
    return info


def _holder_message(fd: int, db_path: str) -> str:
    pid, _, who = os.pread(fd, 256, 0).decode(errors="replace").strip().partition(" ")
    return f"ngram-dask {who or 'ngram-dask'} (pid {pid or '?'}) is writing {db_path}; wait for it to finish"


def _writing(db_path: str) -> str | None:
    """The refusal ``writer_lock`` would give while another stage holds ``<db>.lock``, else None."""
    try:
        fd = os.open(db_path + ".lock", os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder_message(fd, db_path)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


@contextmanager
def writer_lock(db_path: str, holder: str = "ngram-dask") -> Iterator[None]:
    """Hold ``<db>.lock`` while writing, so a second writer is refused at once (not blocked).

    The lock file holds ``<pid> <holder>``: the refusal names the stage writing now.
    """
    lock_path = db_path + ".lock"
    parent = os.path.dirname(os.path.abspath(db_path))
    os.makedirs(parent, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DatabaseError(_holder_message(fd, db_path)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {holder}".encode(), 0)
        yield
    finally:
        os.close(fd)
