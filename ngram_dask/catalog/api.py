"""The catalog from Python: the one implementation behind ``query``, ``serve`` and notebooks.

>>> from ngram_dask import Catalog
>>> cat = Catalog("demo-output/catalog.duckdb")        # read-only
>>> cat.next_tokens(" telome", top=5)                     # pyarrow.Table (output="pandas" for a DataFrame)
>>> cat.count(" telomeres"), cat.prob(" telome", "res")
>>> cat.tasks("top_trigrams", {"frac_max": (0.9, None), "contains": " or"}, order="-sum_count", limit=20)

Contracts:

* The database is opened read-only through ``open_catalog`` (the same one-line
  refusals as ``query``); nothing here writes it.
* Counts are exact: a follower's ``share`` is ``count / prefix count``, where the
  prefix count is how often the context is followed by any token.
* Every SQL statement takes its values as parameters; table and column names come
  only from the database's own schema (an allow-list), never from the caller verbatim.
* One ``Catalog`` may be used from many threads at once: each call borrows its own
  DuckDB cursor (a DuckDB connection object is not thread-safe, its cursors are).
"""

from __future__ import annotations

import os
import queue
import threading
from contextlib import contextmanager
from typing import Any, Iterator, Mapping, Sequence

from ngram_dask.catalog.browse import TaskBrowser
from ngram_dask.catalog.curves import Curves
from ngram_dask.catalog.examples import Examples
from ngram_dask.catalog.lookups import Lookups
from ngram_dask.catalog.reader import as_output, open_catalog
from ngram_dask.db import columns as table_columns
from ngram_dask.errors import UserError
from ngram_dask.schema import (
    CONTEXTS,
    ngram_table,
    prefix_table,
)
from ngram_dask.tokenizer import DEFAULT_TOKENIZER


class EmptyPromptError(UserError):
    """The prompt has no tokens to look up."""


def resolve_tokenizer_name(flag: str | None, info: Mapping[str, str], configured: str) -> str:
    """``--tokenizer``, else the one the build recorded, else the configured one."""
    return flag or info.get("tokenizer") or configured


class Catalog(Lookups, TaskBrowser, Examples, Curves):
    """A finished catalog database, read-only, for lookups and task selection.

    ``tokenizer`` defaults to the one the build recorded in ``catalog_info``, then to
    ``configured_tokenizer``; it is loaded on first use (only text prompts need it).
    """

    def __init__(self, path: str | os.PathLike, tokenizer: str | None = None,
                 configured_tokenizer: str = DEFAULT_TOKENIZER):
        self._cat = open_catalog(os.fspath(path) if path is not None else None)
        self.path = self._cat.path
        self.info: dict[str, str] = dict(self._cat.info)
        self.tables: set[str] = set(self._cat.tables)
        self.tokenizer_name = resolve_tokenizer_name(tokenizer, self.info, configured_tokenizer)
        self._tokenizer = None
        # transformers re-applies truncation settings to the Rust tokenizer on every call,
        # which fails ("Already borrowed") when two threads do it at once.
        self._tok_lock = threading.Lock()
        self._pool: queue.LifoQueue = queue.LifoQueue()
        self._cursors: list = []
        self._pool_lock = threading.Lock()
        self._strings: list[str] | None = None
        self._schema: dict[str, list[tuple[str, str]]] = {}
        self._rows: dict[str, int] = {}
        self._totals: dict[tuple, int] = {}
        self._closed = False

    # --- plumbing -------------------------------------------------------------------------

    @contextmanager
    def _cursor(self) -> Iterator[Any]:
        if self._closed:
            raise UserError(f"catalog {self.path} is closed")
        try:
            cur = self._pool.get_nowait()
        except queue.Empty:
            with self._pool_lock:
                cur = self._cat.con.cursor()
                self._cursors.append(cur)
        try:
            yield cur
        except BaseException:
            # A failed statement may leave a result half-read, which blocks the cursor's
            # next statement: a fresh cursor replaces it.
            with self._pool_lock:
                self._cursors.remove(cur)
            cur.close()
            raise
        self._pool.put(cur)

    def sql(self, statement: str, params: Sequence[Any] = (), output: str = "arrow"):
        """Run one read-only statement with parameters (for notebooks); Arrow or pandas."""
        with self._cursor() as cur:
            return as_output(cur.sql(statement, params=list(params)).to_arrow_table(), output)

    def close(self) -> None:
        self._closed = True
        for cur in self._cursors:
            cur.close()
        self._cat.close()

    def __enter__(self) -> "Catalog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def ngrams(self) -> list[int]:
        return self._cat.ngrams

    @property
    def vocab_size(self) -> int | None:
        return self._cat.vocab_size

    def require_counts(self, min_n: int = 1) -> list[int]:
        """The n >= min_n whose n-gram tables exist; a one-line ``DatabaseError`` otherwise."""
        return self._cat.require_counts(min_n=min_n)

    def columns(self, table: str) -> list[tuple[str, str]]:
        """``[(name, DuckDB type), ...]`` of a table of the catalog (unknown table: UserError)."""
        if table not in self.tables:
            raise UserError(f"no table {table!r} in {self.path}")
        if table not in self._schema:
            with self._cursor() as cur:
                self._schema[table] = table_columns(cur, table)
        return self._schema[table]

    def rows(self, table: str) -> int:
        if table not in self._rows:
            self.columns(table)  # validates the name before it is quoted into SQL
            with self._cursor() as cur:
                self._rows[table] = int(cur.execute(f'SELECT count(*) FROM "{table}"').fetchall()[0][0])
        return self._rows[table]

    # --- tokens ---------------------------------------------------------------------------

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from ngram_dask.tokenizer import load_tokenizer

            with self._tok_lock:
                if self._tokenizer is None:
                    self._tokenizer = load_tokenizer(self.tokenizer_name)
        return self._tokenizer

    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens; an EmptyPromptError when there are none."""
        if not isinstance(text, str):
            raise UserError(f"a prompt is text or a list of token ids, got {type(text).__name__}")
        tok = self.tokenizer
        with self._tok_lock:
            ids = tok(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise EmptyPromptError(f"the prompt {text!r} tokenizes to nothing: give some text to complete")
        return [int(i) for i in ids]

    def _ids(self, prompt: str | Sequence[int]) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenize(prompt)
        try:
            ids = [int(i) for i in prompt]
        except (TypeError, ValueError):
            raise UserError("token ids must be integers") from None
        if not ids:
            raise EmptyPromptError("the prompt has no token ids: give some to complete")
        if any(i < 0 for i in ids):
            raise UserError("token ids must be >= 0")
        return ids

    def token_text(self, ids: Sequence[int]) -> list[str]:
        """Each id's text as the top tables show it (the ``tokens`` table), else the tokenizer's."""
        if self._strings is None:
            strings: list[str] = []
            if "tokens" in self.tables:
                with self._cursor() as cur:
                    strings = [t for (t,) in cur.execute("SELECT token FROM tokens ORDER BY id").fetchall()]
            self._strings = strings
        out = []
        for i in ids:
            i = int(i)
            if 0 <= i < len(self._strings):
                out.append(self._strings[i])
            else:
                with self._tok_lock:
                    out.append(self.tokenizer.decode([i], clean_up_tokenization_spaces=False))
        return out

    def _fits(self, ids: Sequence[int]) -> bool:
        """False when an id cannot be in the tables (beyond the build's vocabulary)."""
        vocab = self.vocab_size
        limit = vocab if vocab is not None else 1 << 32
        return all(0 <= i < limit for i in ids)

    def _id_type(self, n: int) -> str:
        return dict(self.columns(ngram_table(n))).get("id0", "UINTEGER")

    # --- lookups --------------------------------------------------------------------------

    def decode(self, ids: Sequence[int]) -> str:
        """The text of a run of ids: the tokenizer's decode (no space clean-up), else the ids'
        ``tokens`` strings joined (when the tokenizer cannot be loaded)."""
        ids = [int(i) for i in ids]
        if not ids:
            return ""
        try:
            tok = self.tokenizer
        except UserError:
            return "".join(self.token_text(ids))
        with self._tok_lock:
            return tok.decode(ids, clean_up_tokenization_spaces=False)

    def describe(self) -> dict:
        """What a client needs to build its forms: tables, columns, models, row counts."""
        tables = []
        for t in self.browsable():
            numeric = set(self.numeric_columns(t))
            sortable = set(self.sortable_columns(t))
            tables.append({
                "name": t, "kind": "top" if t.startswith("top_") else "scan", "rows": self.rows(t),
                "columns": [{"name": c, "type": typ, "numeric": c in numeric, "sortable": c in sortable}
                            for c, typ in self.columns(t)],
                "key": self.key_columns(t), "text_column": self.text_column(t),
                "default_order": self.default_order(t), "models": self.models(t),
            })
        ngram_tables = [ngram_table(n) for n in self.ngrams if ngram_table(n) in self.tables]
        return {"db": self.path, "tokenizer": self.tokenizer_name, "ngrams": self.ngrams,
                "contexts": CONTEXTS in self.tables,
                "ngram_tables": ngram_tables,
                "prefix_tables": [prefix_table(n) for n in self.ngrams if prefix_table(n) in self.tables],
                "tables": tables}
