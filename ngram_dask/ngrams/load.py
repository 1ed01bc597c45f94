"""Stage 3, load: append each aggregated chunk into the one catalog DuckDB file.

DuckDB allows one writer, so only the client process writes. Each batch of chunks (the
build passes all chunks of one n) is one transaction: delete any stray rows of its
chunks, insert their n-grams and prefixes, and record them in ``load_ledger``. A chunk
already in the ledger is skipped, so a client killed at any point resumes without
counting a chunk twice or losing one.

Before anything is written, the build inspects an existing database read-only
(``db.check_existing``): a file from another tool, another schema version or another
build is refused untouched.
"""

from __future__ import annotations

from ngram_dask import faults
from ngram_dask.db import ensure_info, scalar, transaction, write_info
from ngram_dask.schema import (
    LEDGER,
    create_sql,
    ngram_columns,
    ngram_table,
    prefix_columns,
    prefix_table,
)
from ngram_dask.storage import get_fs, is_local

# Rows need not keep the scan's order across threads: each thread appends whole runs of a
# sorted chunk file, so zone maps on id0 still narrow lookups, and the insert runs on every
# core. The memory limit keeps the client's footprint small (an INSERT ... SELECT from
# Parquet streams; it needs no more).
WRITER_SETTINGS = {"preserve_insertion_order": False, "memory_limit": "1GiB"}


class CountsWriter:
    """The single writer of the catalog database."""

    def __init__(self, con, ngrams: list[int], vocab_size: int, chunks: int, info: dict,
                 work_dir: str | None = None):
        """``con``: the stage's writer connection (``db.writer``), opened with ``WRITER_SETTINGS``."""
        self.ngrams = list(ngrams)
        self.vocab_size = vocab_size
        self.chunks = chunks
        self.con = con
        if work_dir and not is_local(work_dir):
            self.con.register_filesystem(get_fs(work_dir)[0])  # chunk files live on remote storage
        # Tables and the build's identity appear together, so a database is never
        # left with ngram-dask tables but no catalog_info saying whose they are.
        with transaction(self.con):
            self._ensure_schema()
            self.write_info(info)
        # Rows the ledger does not account for (a ledger row deleted by hand) are found
        # once per build; only then does each chunk's load first delete its stray rows.
        self._stray = {n: self._stray_rows(n) for n in self.ngrams}

    def _ensure_schema(self) -> None:
        c = self.con
        ensure_info(c)
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
        write_info(self.con, info)

    def _stray_rows(self, n: int) -> bool:
        """Rows of n not accounted for by the ledger (a ledger row deleted by hand)."""
        total = scalar(self.con, f"SELECT count(*) FROM {ngram_table(n)}")
        ledger = scalar(self.con, f"SELECT coalesce(sum(rows), 0) FROM {LEDGER} WHERE n = ?", [n])
        return total != ledger

    def append_chunks(self, results: list[dict]) -> int:
        """Load aggregated chunks in ONE transaction (their rows and their ledger rows
        together); chunks already in the ledger are skipped. Returns how many were loaded.

        The build passes every chunk of one n at once, so each table gets one large
        ``INSERT ... SELECT`` over all its chunk files (a commit per chunk cost ~40% more
        load time); atomicity per batch keeps reruns exact all the same.
        """
        c = self.con
        with transaction(c):
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
                faults.crash_point(faults.CRASH_IN_LOAD, f"{int(r['n'])}:{int(r['chunk'])}")
            c.executemany(f"INSERT INTO {LEDGER} VALUES (?, ?, ?, ?, now())",
                          [[int(r["n"]), int(r["chunk"]), int(r["rows"]), int(r["prefix_rows"])] for r in todo])
        for r in todo:
            faults.crash_point(faults.CRASH_AFTER_LOAD, f"{int(r['n'])}:{int(r['chunk'])}")
        return len(todo)
