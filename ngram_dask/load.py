"""Stage 3, load: append each aggregated chunk into the one catalog DuckDB file.

DuckDB allows one writer, so only the client process writes, one transaction per
chunk: delete any stray rows of the chunk, insert its n-grams and prefixes, and
record it in ``load_ledger``. A chunk already in the ledger is skipped, so a client
killed at any point resumes without counting a chunk twice or losing one.

Before anything is written, an existing database is inspected read-only: a file
from another tool, another schema version or another build is refused untouched.
"""

from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from typing import Iterator

from .errors import DatabaseError
from .schema import (
    SCHEMA_VERSION,
    TOOL,
    create_sql,
    ngram_columns,
    ngram_table,
    prefix_columns,
    prefix_table,
)

LEDGER = "load_ledger"
INFO = "catalog_info"

LOAD_MEMORY_LIMIT = "1GiB"

# Keys of catalog_info that must match for a build to resume into an existing database.
IDENTITY_KEYS = ("input", "chunks", "ngrams", "vocab_size", "drop_eos")


def _connect(path: str, read_only: bool):
    import duckdb

    try:
        return duckdb.connect(path, read_only=read_only)
    except duckdb.IOException as exc:
        msg = str(exc).splitlines()[0]
        if "lock" in msg.lower():
            raise DatabaseError(f"database {path} is in use by another process: {msg}") from None
        raise DatabaseError(f"{path} is not a DuckDB database this DuckDB can open: {msg}") from None
    except duckdb.Error as exc:
        raise DatabaseError(f"cannot open database {path}: {str(exc).splitlines()[0]}") from None


def read_info(con) -> dict[str, str]:
    return dict(con.execute(f"SELECT key, value FROM {INFO}").fetchall())


def table_names(con) -> set[str]:
    return {r[0] for r in con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'"
    ).fetchall()}


def check_owner(path: str, info: dict[str, str]) -> None:
    """Refuse a catalog_info written by another tool or another schema version."""
    if info.get("tool") != TOOL:
        raise DatabaseError(f"database {path} was written by {info.get('tool')!r}, not {TOOL}")
    if info.get("schema_version") != str(SCHEMA_VERSION):
        raise DatabaseError(
            f"database {path} has schema version {info.get('schema_version')}, this ngram-dask "
            f"uses version {SCHEMA_VERSION}: rebuild it with `ngram-dask build` into a new --db"
        )


def check_existing(path: str, identity: dict[str, str] | None = None) -> dict[str, str] | None:
    """Inspect an existing database read-only; refuse one this build must not touch.

    Returns its ``catalog_info`` (or None when there is no file yet).
    """
    if not os.path.exists(path):
        return None
    if os.path.isdir(path):
        raise DatabaseError(f"--db {path} is a directory, not a database file")
    con = _connect(path, read_only=True)
    try:
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
    finally:
        con.close()
    check_owner(path, info)
    if identity:
        for key in IDENTITY_KEYS:
            if key in info and key in identity and info[key] != identity[key]:
                raise DatabaseError(
                    f"database {path} was built with {key}={info[key]}, this build has "
                    f"{key}={identity[key]}; use a new --db to build it"
                )
    return info


@contextmanager
def writer_lock(db_path: str) -> Iterator[None]:
    """Hold ``<db>.lock`` for the whole build, so a second build is refused at once."""
    lock_path = db_path + ".lock"
    parent = os.path.dirname(os.path.abspath(db_path))
    os.makedirs(parent, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            raise DatabaseError(
                f"another ngram-dask build (pid {holder}) is writing {db_path}; wait for it to finish"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


class CatalogWriter:
    """The single writer of the catalog database."""

    def __init__(self, path: str, ngrams: list[int], vocab_size: int, chunks: int, info: dict,
                 work_dir: str | None = None):
        self.path = path
        self.ngrams = list(ngrams)
        self.vocab_size = vocab_size
        self.chunks = chunks
        self.con = _connect(path, read_only=False)
        # Rows need not keep the scan's order across threads: each thread appends whole
        # runs of a sorted chunk file, so zone maps on id0 still narrow lookups, and the
        # insert runs on every core. The memory limit keeps the client's footprint small
        # (an INSERT ... SELECT from Parquet streams; it needs no more).
        self.con.execute("SET preserve_insertion_order = false")
        self.con.execute(f"SET memory_limit = '{LOAD_MEMORY_LIMIT}'")
        if work_dir and "://" in work_dir and not work_dir.startswith("file://"):
            from .storage import get_fs

            self.con.register_filesystem(get_fs(work_dir)[0])  # chunk files live on remote storage
        # Tables and the build's identity appear together, so a database is never
        # left with ngram-dask tables but no catalog_info saying whose they are.
        self.con.execute("BEGIN TRANSACTION")
        self._ensure_schema()
        self.write_info(info)
        self.con.execute("COMMIT")
        # Rows the ledger does not account for (a ledger row deleted by hand) are found
        # once per build; only then does each chunk's load first delete its stray rows.
        self._stray = {n: self._stray_rows(n) for n in self.ngrams}

    def close(self) -> None:
        self.con.close()

    def _ensure_schema(self) -> None:
        c = self.con
        c.execute(f"CREATE TABLE IF NOT EXISTS {INFO} (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL)")
        c.execute(
            f"CREATE TABLE IF NOT EXISTS {LEDGER} (n INTEGER NOT NULL, chunk INTEGER NOT NULL, "
            "rows UBIGINT NOT NULL, prefix_rows UBIGINT NOT NULL, loaded_at TIMESTAMP NOT NULL, "
            "PRIMARY KEY (n, chunk))"
        )
        for n in self.ngrams:
            c.execute(create_sql(ngram_table(n), ngram_columns(n, self.vocab_size)))
            if n >= 2:
                c.execute(create_sql(prefix_table(n), prefix_columns(n, self.vocab_size)))

    def loaded(self) -> set[tuple[int, int]]:
        return {(n, c) for n, c in self.con.execute(f"SELECT n, chunk FROM {LEDGER}").fetchall()}

    def write_info(self, info: dict) -> None:
        rows = [(k, v if isinstance(v, str) else json.dumps(v)) for k, v in info.items()]
        self.con.executemany(f"INSERT OR REPLACE INTO {INFO} VALUES (?, ?)", rows)

    def _stray_rows(self, n: int) -> bool:
        """Rows of n not accounted for by the ledger (a ledger row deleted by hand)."""
        total = self.con.execute(f"SELECT count(*) FROM {ngram_table(n)}").fetchone()[0]
        ledger = self.con.execute(f"SELECT coalesce(sum(rows), 0) FROM {LEDGER} WHERE n = ?", [n]).fetchone()[0]
        return total != ledger

    def append_chunk(self, result: dict) -> bool:
        """Load one aggregated chunk in one transaction; False if it was already loaded."""
        return self.append_chunks([result]) == 1

    def append_chunks(self, results: list[dict]) -> int:
        """Load aggregated chunks in ONE transaction (their rows and their ledger rows
        together); chunks already in the ledger are skipped. Returns how many were loaded.

        The build passes every chunk of one n at once, so each table gets one large
        ``INSERT ... SELECT`` over all its chunk files (a commit per chunk cost ~40% more
        load time); atomicity per batch keeps reruns exact all the same.
        """
        c = self.con
        c.execute("BEGIN TRANSACTION")
        try:
            done = self.loaded()
            todo = [r for r in results if (int(r["n"]), int(r["chunk"])) not in done]
            for n in sorted({int(r["n"]) for r in todo}):
                mine = [r for r in todo if int(r["n"]) == n]
                tables = [(ngram_table(n), "ngrams")] + ([(prefix_table(n), "prefixes")] if n >= 2 else [])
                if self._stray[n]:
                    for table, _ in tables:
                        for r in mine:
                            c.execute(f"DELETE FROM {table} WHERE id0 % ? = ?", [self.chunks, int(r["chunk"])])
                for table, kind in tables:
                    urls = [r["files"][kind] for r in mine if r["files"].get(kind)]
                    if urls:
                        c.execute(f"INSERT INTO {table} SELECT * FROM read_parquet(?, hive_partitioning = false)",
                                  [urls])
            for r in todo:
                _crash_hook("NGRAM_DASK_CRASH_IN_LOAD", int(r["n"]), int(r["chunk"]))
            c.executemany(f"INSERT INTO {LEDGER} VALUES (?, ?, ?, ?, now())",
                          [[int(r["n"]), int(r["chunk"]), int(r["rows"]), int(r["prefix_rows"])] for r in todo])
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        for r in todo:
            _crash_hook("NGRAM_DASK_CRASH_AFTER_LOAD", int(r["n"]), int(r["chunk"]))
        return len(todo)


def _crash_hook(variable: str, n: int, chunk: int) -> None:
    """Fault tests kill the client at a chosen chunk, inside its load transaction
    (NGRAM_DASK_CRASH_IN_LOAD=n:chunk) or right after its commit (NGRAM_DASK_CRASH_AFTER_LOAD)."""
    if os.environ.get(variable) == f"{n}:{chunk}":
        os._exit(86)
