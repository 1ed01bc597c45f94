"""The catalog step: tables for people, built from the counts in the database.

* ``tokens(id, token)``: ``tokenizer.decode([id])`` for every id below ``vocab_size``
  (ids the tokenizer lacks, such as Pythia's padding, decode to ''). Decoded without
  cleaning up spaces, so ``' ,'`` stays ``' ,'`` and ``seq`` is the exact text.
* ``top_<n-grams>``: prefixes that almost always predict one next token: rows of
  the prefix table with ``frac_max`` and ``sum_count`` above the configured
  thresholds, with each token as text and ``seq`` their concatenation, ordered by
  ``frac_max`` desc, ``sum_count`` desc (then the ids, so the order is deterministic).

The readers of a finished catalog (``query``, ``export``, ``report``) open it with
``open_catalog``, which refuses, in one line, a database they cannot read.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from .config import CatalogConfig
from .errors import DatabaseError
from .schema import id_columns, id_sql_type, ngram_table, prefix_table

# n -> (min frac_max, min sum_count) config fields; n without an entry gets no top table.
_THRESHOLDS = {2: ("top_bigram_min_frac", "top_bigram_min_count"),
               3: ("top_trigram_min_frac", "top_trigram_min_count")}

INFO = "catalog_info"
LEDGER = "load_ledger"


def top_table(n: int) -> str:
    return "top_" + prefix_table(n).replace("_prefixes", "s")


def rule_key(n: int) -> str:
    """catalog_info key holding the filter a top table was built with."""
    return f"{top_table(n)}_rule"


def decode_vocab(tokenizer, vocab_size: int) -> list[str]:
    """Each id decoded alone (``tokenizer.decode([id])`` without space clean-up); ids beyond
    the tokenizer's vocabulary become ''."""
    known = min(len(tokenizer), vocab_size)
    singles = [[i] for i in range(known)]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # a fast tokenizer: what its decode() calls, in one batch
        out = backend.decode_batch(singles, skip_special_tokens=False)
    else:
        out = tokenizer.batch_decode(singles, clean_up_tokenization_spaces=False)
    return list(out) + [""] * max(0, vocab_size - known)


def write_tokens(con, tokenizer, vocab_size: int) -> int:
    import pyarrow as pa

    strings = decode_vocab(tokenizer, vocab_size)
    table = pa.table({"id": pa.array(range(vocab_size), pa.uint32()), "token": pa.array(strings, pa.string())})
    con.register("_tokens_arrow", table)
    try:
        # Same id type as the n-gram tables (USMALLINT below 2^16 ids).
        con.execute(f"CREATE OR REPLACE TABLE tokens AS SELECT id::{id_sql_type(vocab_size)} AS id, token "
                    "FROM _tokens_arrow ORDER BY id")
    finally:
        con.unregister("_tokens_arrow")
    return vocab_size


def top_sql(n: int) -> str:
    """CREATE statement of the top table for n; parameters: (min frac_max, min sum_count)."""
    ids = id_columns(n)
    # LEFT JOIN: an id without a tokens row (cannot happen in a valid build) keeps its
    # n-gram with '' as text instead of silently dropping it.
    joins = " ".join(f"LEFT JOIN tokens t{j} ON t{j}.id = p.{c}" for j, c in enumerate(ids))
    token_cols = ", ".join(f"coalesce(t{j}.token, '') AS token{j}" for j in range(n))
    seq = " || ".join(f"coalesce(t{j}.token, '')" for j in range(n))
    return (
        f"CREATE OR REPLACE TABLE {top_table(n)} AS "
        f"SELECT p.*, {token_cols}, {seq} AS seq FROM {prefix_table(n)} p {joins} "
        f"WHERE p.frac_max > ? AND p.sum_count > ? "
        f"ORDER BY p.frac_max DESC, p.sum_count DESC, {', '.join('p.' + c for c in ids)}"
    )


def catalog_tables(ngrams: list[int]) -> list[str]:
    return ["tokens"] + [top_table(n) for n in ngrams if n in _THRESHOLDS]


def _thresholds(n: int, cfg: CatalogConfig) -> tuple[float, int]:
    frac_key, count_key = _THRESHOLDS[n]
    return float(getattr(cfg, frac_key)), int(getattr(cfg, count_key))


def top_rules(ngrams: list[int], cfg: CatalogConfig) -> dict[str, str]:
    """``{top_bigrams_rule: "frac_max > 0.5 AND sum_count > 0", ...}`` for this configuration."""
    rules = {}
    for n in ngrams:
        if n in _THRESHOLDS:
            min_frac, min_count = _thresholds(n, cfg)
            rules[rule_key(n)] = f"frac_max > {min_frac:g} AND sum_count > {min_count}"
    return rules


def build_catalog(con, tokenizer, vocab_size: int, ngrams: list[int], cfg: CatalogConfig) -> dict[str, int]:
    """Write ``tokens`` and the top tables in one transaction; returns rows per table.

    The filter of each top table is recorded in ``catalog_info`` (``top_bigrams_rule``...)
    so exports and reports can say what the table holds.
    """
    rows = {}
    rules = top_rules(ngrams, cfg)
    has_info = bool(con.execute(
        "SELECT 1 FROM information_schema.tables WHERE table_schema = 'main' AND table_name = ?", [INFO]
    ).fetchone())
    con.execute("BEGIN TRANSACTION")
    try:
        rows["tokens"] = write_tokens(con, tokenizer, vocab_size)
        for n in ngrams:
            if n not in _THRESHOLDS:
                continue
            con.execute(top_sql(n), list(_thresholds(n, cfg)))
            rows[top_table(n)] = con.execute(f"SELECT count(*) FROM {top_table(n)}").fetchone()[0]
            if has_info:
                con.execute(f"INSERT OR REPLACE INTO {INFO} VALUES (?, ?)", [rule_key(n), rules[rule_key(n)]])
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return rows


# --- reading a finished catalog ------------------------------------------------------------

BUILD_FIRST = "run `ngram-dask build` first"
CATALOG_FIRST = "run `ngram-dask build --tokenizer ...` first (its catalog step writes it)"


@dataclass
class Catalog:
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
        return [(r[0], r[1]) for r in self.con.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'main' AND table_name = ? ORDER BY ordinal_position", [table]
        ).fetchall()]

    def rows(self, table: str) -> int:
        return int(self.con.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0])

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> "Catalog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_catalog(path: str | None) -> Catalog:
    """Open a finished ngram-dask database read-only, or raise a one-line ``DatabaseError``.

    Refused: no such file, not a DuckDB file, a database of another tool (no
    ``catalog_info``), another schema version, a build whose chunks are not all loaded.
    """
    from .load import _connect, check_owner, read_info, table_names

    if not path:
        raise DatabaseError("--db is required (the catalog database written by `ngram-dask build`)")
    if not os.path.exists(path):
        raise DatabaseError(f"database {path} does not exist: {BUILD_FIRST}")
    if os.path.isdir(path):
        raise DatabaseError(f"--db {path} is a directory, not a database file")
    con = _connect(path, read_only=True)
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
        cat = Catalog(path=path, con=con, info=info, tables=tables)
        _check_complete(cat)
        return cat
    except BaseException:
        con.close()
        raise


def _check_complete(cat: Catalog) -> None:
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
