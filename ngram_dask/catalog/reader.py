"""Opening a finished catalog for reading: ``open_catalog`` checks it, in one line, first.

The readers (``query``, ``serve``, ``export``, ``report``, ``frames``) never see a
database they cannot read: no such file, not a DuckDB file, another tool's database
(no ``catalog_info``), another schema version, or a build whose chunks are not all
loaded are each refused with a ``DatabaseError`` naming the command that fixes it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from ngram_dask.db import check_owner, columns, connect, read_info, scalar, table_names
from ngram_dask.errors import DatabaseError, UserError
from ngram_dask.schema import INFO, LEDGER, ngram_table, prefix_table

BUILD_FIRST = "run `ngram-dask build` first"
CATALOG_FIRST = "run `ngram-dask build --tokenizer ...` first (its top step writes it)"


@dataclass
class CatalogConnection:
    """A finished catalog database, opened read-only, with its ``catalog_info``."""

    path: str
    con: object
    info: dict[str, str]
    tables: set[str] = field(default_factory=set)

    @property
    def ngrams(self) -> list[int]:
        return sorted(int(n) for n in json.loads(self.info.get("ngrams", "[]")))

    @property
    def chunks(self) -> int:
        return int(self.info.get("chunks", "1"))

    @property
    def vocab_size(self) -> int | None:
        v = self.info.get("vocab_size")
        return int(v) if v else None

    def require(self, *tables: str) -> None:
        """Refuse, naming the first missing table and the command that writes it."""
        for t in tables:
            if t not in self.tables:
                hint = CATALOG_FIRST if t == "tokens" or t.startswith("top_") else BUILD_FIRST
                raise DatabaseError(f"database {self.path} has no table {t}: {hint}")

    def require_counts(self, min_n: int = 1) -> list[int]:
        """The n-gram (and prefix) tables the build recorded must all be there; returns the n >= min_n."""
        ns = [n for n in self.ngrams if n >= min_n]
        if not ns:
            raise DatabaseError(
                f"database {self.path} holds no n-gram table with n >= {min_n} "
                f"(built with ngrams {self.ngrams}): {BUILD_FIRST} with --ngrams 2,3"
            )
        for n in self.ngrams:
            self.require(ngram_table(n), *([prefix_table(n)] if n >= 2 else []))
        return ns

    def columns(self, table: str) -> list[tuple[str, str]]:
        return columns(self.con, table)

    def rows(self, table: str) -> int:
        return int(scalar(self.con, f'SELECT count(*) FROM "{table}"'))

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> "CatalogConnection":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_catalog(path: str | None) -> CatalogConnection:
    """Open a finished ngram-dask database read-only, or raise a one-line ``DatabaseError``.

    Refused: no such file, not a DuckDB file, a database of another tool (no
    ``catalog_info``), another schema version, a build whose chunks are not all loaded.
    """
    if not path:
        raise DatabaseError("--db is required (the catalog database written by `ngram-dask build`)")
    if not os.path.exists(path):
        raise DatabaseError(f"database {path} does not exist: {BUILD_FIRST}")
    if os.path.isdir(path):
        raise DatabaseError(f"--db {path} is a directory, not a database file")
    con = connect(path, read_only=True)
    try:
        tables = table_names(con)
        if INFO not in tables:
            shown = ", ".join(sorted(tables)[:5]) or "none"
            raise DatabaseError(
                f"database {path} was not written by ngram-dask (no {INFO} table; tables: {shown}): "
                f"{BUILD_FIRST}"
            )
        info = read_info(con)
        check_owner(path, info)
        cat = CatalogConnection(path=path, con=con, info=info, tables=tables)
        _check_complete(cat)
        return cat
    except BaseException:
        con.close()
        raise


def _check_complete(cat: CatalogConnection) -> None:
    if "ngrams" not in cat.info and LEDGER not in cat.tables:
        return  # no build yet (a scan table alone): the readers ask for the tables they need
    if LEDGER not in cat.tables:
        raise DatabaseError(f"database {cat.path} has no {LEDGER} table: {BUILD_FIRST}")
    want = {(n, c) for n in cat.ngrams for c in range(cat.chunks)}
    got = set(cat.con.execute(f"SELECT n, chunk FROM {LEDGER}").fetchall())
    if want - got:
        raise DatabaseError(
            f"database {cat.path} is an unfinished build ({len(want & got)} of {len(want)} chunks "
            "loaded): rerun `ngram-dask build` to finish it"
        )


def as_output(table, output: str):
    """A query's Arrow table as the caller asked: ``arrow`` or ``pandas``."""
    if output == "arrow":
        return table
    if output == "pandas":
        return table.to_pandas()
    raise UserError(f"output must be 'arrow' or 'pandas', got {output!r}")
