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

import math
import os
import queue
import re
import threading
from contextlib import contextmanager
from typing import Any, Iterator, Mapping, Sequence

from ngram_dask.catalog.reader import open_catalog
from ngram_dask.db import columns as table_columns
from ngram_dask.errors import UserError
from ngram_dask.lm.models import model_size
from ngram_dask.schema import (
    CONTEXT_COUNTS,
    CONTEXTS,
    TOP_NGRAMS,
    id_columns,
    is_score_column,
    ngram_table,
    prefix_table,
    scan_length,
    score_column_model,
    scored_models,
    top_table,
)
from ngram_dask.tokenizer import DEFAULT_TOKENIZER

NUMERIC_TYPES = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT",
                 "UINTEGER", "UBIGINT", "FLOAT", "DOUBLE", "REAL"}
_NESTED = re.compile(r"\[\]$|^(STRUCT|MAP|UNION)\b|\[\d+\]$")


class EmptyPromptError(UserError):
    """The prompt has no tokens to look up."""


def resolve_tokenizer_name(flag: str | None, info: Mapping[str, str], configured: str) -> str:
    """``--tokenizer``, else the one the build recorded, else the configured one."""
    return flag or info.get("tokenizer") or configured


def _output(table, output: str):
    if output == "arrow":
        return table
    if output == "pandas":
        return table.to_pandas()
    raise UserError(f"output must be 'arrow' or 'pandas', got {output!r}")


class Catalog:
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
            return _output(cur.sql(statement, params=list(params)).to_arrow_table(), output)

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

    def _followers(self, n: int, context: list[int], k: int | None) -> tuple[int, list[tuple[int, int]]]:
        """(prefix count, the k most frequent followers as (id, count), ties: smaller id first).

        One scan: the prefix count is the sum over all followers, the same number as
        the prefix table's ``sum_count``. The ids are cast to the column's own type so
        DuckDB can skip row groups by their min/max (the table is sorted by id0, id1...).
        """
        ids = id_columns(n)
        typ = self._id_type(n)
        where = " AND ".join(f"{c} = CAST(? AS {typ})" for c in ids[:-1])
        last = ids[-1]
        limit = "" if k is None else " LIMIT ?"
        params = [*context] + ([] if k is None else [k])
        with self._cursor() as cur:
            rows = cur.execute(
                f"SELECT {last}, count, sum(count) OVER () FROM {ngram_table(n)} WHERE {where} "
                f"ORDER BY count DESC, {last}{limit}", params).fetchall()
        total = int(rows[0][2]) if rows else 0
        return total, [(int(i), int(c)) for i, c, _ in rows]

    def lookups(self, prompt: str | Sequence[int], top: int = 10) -> list[dict]:
        """One answer per n-gram table with n >= 2, longest context first (``query --json``'s
        ``lookups``): ``n, table, context, context_tokens, prefix_count, note`` and
        ``completions`` as ``rank, id, token, count, probability``."""
        if not isinstance(top, int) or top < 1:
            raise UserError(f"top must be >= 1, got {top}")
        ns = self.require_counts(min_n=2)
        ids = self._ids(prompt)
        out = []
        for n in sorted(ns, reverse=True):
            table = ngram_table(n)
            if len(ids) < n - 1:
                out.append({"n": n, "table": table, "context": None, "context_tokens": [], "prefix_count": 0,
                            "completions": [],
                            "note": f"needs {n - 1} tokens of context, the prompt has {len(ids)}"})
                continue
            context = ids[len(ids) - (n - 1):]
            total, rows = self._followers(n, context, top) if self._fits(context) else (0, [])
            texts = self.token_text([i for i, _ in rows])
            out.append({"n": n, "table": table, "context": context, "context_tokens": self.token_text(context),
                        "prefix_count": total,
                        "completions": [{"rank": r, "id": i, "token": t, "count": c, "probability": c / total}
                                        for r, ((i, c), t) in enumerate(zip(rows, texts), 1)],
                        "note": None if total else "the context never occurs in the corpus"})
        return out

    def next_tokens(self, prompt: str | Sequence[int], top: int = 10, output: str = "arrow"):
        """Exact next-token distribution after ``prompt`` (text or ids): trigram context first,
        then bigram. Columns: ``n, table, rank, id, token, count, share, prefix_count``
        (``share = count / prefix_count``); a context that never occurs has no rows."""
        import pyarrow as pa

        rows = [{"n": lk["n"], "table": lk["table"], **{k: c[k] for k in ("rank", "id", "token", "count")},
                 "share": c["probability"], "prefix_count": lk["prefix_count"]}
                for lk in self.lookups(prompt, top) for c in lk["completions"]]
        schema = pa.schema([("n", pa.int32()), ("table", pa.string()), ("rank", pa.int32()), ("id", pa.int64()),
                            ("token", pa.string()), ("count", pa.int64()), ("share", pa.float64()),
                            ("prefix_count", pa.int64())])
        return _output(pa.Table.from_pylist(rows, schema=schema), output)

    def count(self, text_or_ids: str | Sequence[int]) -> int:
        """How often the exact token sequence occurs in the corpus (its length picks the table)."""
        ids = self._ids(text_or_ids)
        n = len(ids)
        if n not in self.ngrams or ngram_table(n) not in self.tables:
            raise UserError(f"{text_or_ids!r} is {n} token(s); this catalog counts n-grams of "
                            f"n in {self.ngrams}")
        if not self._fits(ids):
            return 0
        typ = self._id_type(n)
        where = " AND ".join(f"{c} = CAST(? AS {typ})" for c in id_columns(n))
        with self._cursor() as cur:
            row = cur.execute(f"SELECT sum(count) FROM {ngram_table(n)} WHERE {where}", ids).fetchall()[0]
        return int(row[0]) if row and row[0] is not None else 0

    def prob(self, prompt: str | Sequence[int], next_token: str | int, output: str = "arrow"):
        """``P(next | context)`` for each n-gram table, longest context first. Columns:
        ``n, table, context, count, prefix_count, prob`` (``prob`` null when the context
        never occurs). ``next_token`` is an id or a text that is exactly one token."""
        import pyarrow as pa

        ns = self.require_counts(min_n=2)
        ids = self._ids(prompt)
        if isinstance(next_token, str):
            nxt = self.tokenize(next_token)
            if len(nxt) != 1:
                raise UserError(f"next {next_token!r} is {len(nxt)} tokens; give one token (or its id)")
            nxt_id = nxt[0]
        else:
            nxt_id = self._ids([next_token])[0]
        rows = []
        for n in sorted(ns, reverse=True):
            if len(ids) < n - 1:
                continue
            context = ids[len(ids) - (n - 1):]
            total, followers = self._followers(n, context, None) if self._fits(context) else (0, [])
            count = dict(followers).get(nxt_id, 0)
            rows.append({"n": n, "table": ngram_table(n), "context": context, "count": count,
                         "prefix_count": total, "prob": count / total if total else None})
        schema = pa.schema([("n", pa.int32()), ("table", pa.string()), ("context", pa.list_(pa.int64())),
                            ("count", pa.int64()), ("prefix_count", pa.int64()), ("prob", pa.float64())])
        return _output(pa.Table.from_pylist(rows, schema=schema), output)

    # --- tasks: the top and scan tables ---------------------------------------------------

    def browsable(self) -> list[str]:
        """Tables a person picks tasks from: the top tables, then the scan tables."""
        tops = sorted((t for t in self.tables if t.startswith("top_")), key=lambda t: (t != top_table(3), t))
        scans = sorted((t for t in self.tables if scan_length(t) is not None), key=scan_length)
        return tops + scans

    def _browsable(self, table: str) -> list[tuple[str, str]]:
        if table not in self.browsable():
            raise UserError(f"table {table!r} is not a top or scan table of this catalog "
                            f"(have: {', '.join(self.browsable()) or 'none'})")
        return self.columns(table)

    def numeric_columns(self, table: str) -> list[str]:
        return [c for c, t in self._browsable(table) if t.upper() in NUMERIC_TYPES or t.upper().startswith("DECIMAL")]

    def sortable_columns(self, table: str) -> list[str]:
        return [c for c, t in self._browsable(table) if not _NESTED.search(t.upper())]

    def key_columns(self, table: str) -> list[str]:
        """The context ids that name a task of a top table (``id0..id{n-2}``); [] for a scan table."""
        cols = [c for c, _ in self._browsable(table)]
        ids = [c for c in cols if re.fullmatch(r"id\d+", c)]
        return ids[:-1] if table.startswith("top_") else []

    def text_column(self, table: str) -> str | None:
        cols = [c for c, _ in self._browsable(table)]
        return next((c for c in ("seq", "text") if c in cols), None)

    def models(self, table: str) -> list[dict]:
        """The ``p_<model>`` columns of a table, smallest model first: ``column, model, size``
        (size in parameters, None when the name does not tell)."""
        scored = scored_models(self.info)
        out = []
        for c, _ in self._browsable(table):
            if not is_score_column(c) or not table.startswith("top_"):
                continue
            model = str(scored.get(c, {}).get("model") or score_column_model(c))
            size = model_size(model)
            if size is None:  # a recorded local path may not say; the column may
                size = model_size(c)
            out.append({"column": c, "model": model, "size": size})
        return sorted(out, key=lambda m: (m["size"] is None, m["size"] or 0, m["column"]))

    def default_order(self, table: str) -> list[str]:
        cols = [c for c, _ in self._browsable(table)]
        if table.startswith("top_"):
            return ["-frac_max", "-sum_count"]
        return ["-p_long"] if "p_long" in cols else []

    def _where(self, table: str, filters: Mapping[str, Any] | None) -> tuple[str, list]:
        numeric = set(self.numeric_columns(table))
        clauses, params = [], []
        for key, value in (filters or {}).items():
            if key == "contains":
                if value is None or value == "":
                    continue
                col = self.text_column(table)
                if col is None:
                    raise UserError(f"table {table} has no text column to search")
                clauses.append(f'contains("{col}", ?)')
                params.append(str(value))
                continue
            if key not in numeric:
                raise UserError(f"cannot filter {table} on {key!r}: use 'contains' or a numeric column "
                                f"({', '.join(sorted(numeric))})")
            if isinstance(value, Mapping):
                lo, hi = value.get("min"), value.get("max")
            else:
                try:
                    lo, hi = value
                except (TypeError, ValueError):
                    raise UserError(f"filter {key!r} takes (min, max); use None for an open end") from None
            for bound, op in ((lo, ">="), (hi, "<=")):
                if bound is None:
                    continue
                try:
                    x = float(bound)
                except (TypeError, ValueError):
                    raise UserError(f"filter {key!r}: {bound!r} is not a number") from None
                if math.isnan(x):
                    raise UserError(f"filter {key!r}: NaN is not a bound")
                clauses.append(f'"{key}" {op} ?')
                params.append(x)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params

    def _order(self, table: str, order: str | Sequence[str] | None) -> str:
        keys = self.default_order(table) if order is None or order == "" else (
            [k.strip() for k in order.split(",") if k.strip()] if isinstance(order, str) else list(order))
        sortable = set(self.sortable_columns(table))
        parts = []
        for k in keys:
            desc = k.startswith("-")
            col = k[1:] if desc or k.startswith("+") else k
            if col not in sortable:
                raise UserError(f"cannot sort {table} by {col!r}: sort keys are its columns "
                                f"({', '.join(self.sortable_columns(table))}), '-' first for descending")
            parts.append(f'"{col}" {"DESC" if desc else "ASC"} NULLS LAST')
        # A total order, so pages never repeat or skip a row.
        ids = [c for c, _ in self.columns(table) if re.fullmatch(r"id\d+", c)]
        parts += [f'"{c}"' for c in ids] if ids and table.startswith("top_") else ["rowid"]
        return " ORDER BY " + ", ".join(parts)

    def _select(self, table: str, filters, order, limit: int | None, offset: int) -> tuple[str, list]:
        where, params = self._where(table, filters)
        order_by = self._order(table, order)
        if not isinstance(offset, int) or offset < 0:
            raise UserError(f"offset must be an integer >= 0, got {offset!r}")
        if limit is None:
            sql = f'SELECT * FROM "{table}"{where}{order_by}'
            if offset:
                sql += " OFFSET ?"
                params.append(offset)
            return sql, params
        if not isinstance(limit, int) or limit < 0:
            raise UserError(f"limit must be an integer >= 0, got {limit!r}")
        # A page sorts only (sort keys, rowid) and reads whole rows for the page alone:
        # deep pages of a 1.6M-row table keep offset + limit narrow rows, not wide ones.
        sql = (f'WITH _page AS (SELECT rowid AS _r FROM "{table}"{where}{order_by} LIMIT ? OFFSET ?) '
               f'SELECT * FROM "{table}" SEMI JOIN _page ON "{table}".rowid = _page._r{order_by}')
        return sql, params + [limit, offset]

    def tasks(self, table: str = "top_trigrams", filters: Mapping[str, Any] | None = None,
              order: str | Sequence[str] | None = None, limit: int | None = 50, offset: int = 0,
              output: str = "arrow"):
        """Rows of a top (or scan) table, filtered and sorted in DuckDB.

        ``filters``: ``{"contains": text}`` (a substring of ``seq``, or ``text`` for a scan
        table, case-sensitive) and ``{column: (min, max)}`` for any numeric column, both
        ends inclusive, ``None`` for an open end. ``order``: column names, ``-`` first for
        descending (``"-p_pythia_12b_deduped,sum_count"``); ties are broken by the ids so
        pages are stable. ``limit=None`` returns every matching row.
        """
        sql, params = self._select(table, filters, order, limit, offset)
        with self._cursor() as cur:
            return _output(cur.sql(sql, params=params).to_arrow_table(), output)

    def count_tasks(self, table: str = "top_trigrams", filters: Mapping[str, Any] | None = None) -> int:
        """How many rows ``tasks`` would page through."""
        where, params = self._where(table, filters)
        if not where:
            return self.rows(table)
        # Paging through one selection asks for the same total on every page; the file
        # is opened read-only, so no writer can change the answer while it is open.
        key = (table, where, tuple(params))
        with self._pool_lock:
            if key in self._totals:
                return self._totals[key]
        with self._cursor() as cur:
            total = int(cur.execute(f'SELECT count(*) FROM "{table}"{where}', params).fetchall()[0][0])
        with self._pool_lock:
            if len(self._totals) >= 4096:
                self._totals.pop(next(iter(self._totals)))
            self._totals[key] = total
        return total

    def tasks_reader(self, table: str, filters=None, order=None, batch_rows: int = 65536):
        """Every matching row as a ``pyarrow.RecordBatchReader`` (for downloads of any size).
        The reader holds a cursor of its own until it is exhausted or closed."""
        sql, params = self._select(table, filters, order, None, 0)
        cur = self._cat.con.cursor()
        reader = cur.sql(sql, params=params).to_arrow_reader(batch_rows)
        return reader, cur

    def task(self, table: str, context: Sequence[int], top: int = 20) -> dict:
        """One task of a top table, by its context ids: its row, the exact follower
        distribution of the context, and ``p`` per model, smallest model first."""
        keys = self.key_columns(table)
        if not keys:
            raise UserError(f"{table} has no tasks by context: pick a top table")
        context = self._ids(context)
        if len(context) != len(keys):
            raise UserError(f"a task of {table} is named by {len(keys)} id(s) ({', '.join(keys)}), got {len(context)}")
        row = None
        if self._fits(context):
            typ = dict(self.columns(table))[keys[0]]
            where = " AND ".join(f'"{c}" = CAST(? AS {typ})' for c in keys)
            with self._cursor() as cur:
                rows = cur.sql(f'SELECT * FROM "{table}" WHERE {where}', params=context).to_arrow_table().to_pylist()
            row = rows[0] if rows else None
        if row is None:
            raise UserError(f"no task with context {context} in {table}")
        n = len(keys) + 1
        total, followers = self._followers(n, context, top) if ngram_table(n) in self.tables else (0, [])
        texts = self.token_text([i for i, _ in followers])
        return {
            "table": table, "n": n, "context": context, "context_tokens": self.token_text(context), "row": row,
            "prefix_count": total, "followers_table": ngram_table(n),
            "followers": [{"rank": r, "id": i, "token": t, "count": c, "share": c / total}
                          for r, ((i, c), t) in enumerate(zip(followers, texts), 1)],
            "models": [{**m, "p": row.get(m["column"])} for m in self.models(table)],
        }

    # --- contexts: real examples of a task --------------------------------------------------

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

    def contexts(self, prompt: str | Sequence[int], limit: int | None = None) -> dict:
        """Real examples of the task whose prompt is ``prompt`` (text or ids: one id is a
        ``top_bigrams`` prompt, two a ``top_trigrams`` one), as ``ngram-dask contexts`` kept
        them, best rank first: ``table, prompt, prompt_tokens, row`` (the task, or None),
        ``occurrences`` (counted in the input), ``examples`` and a ``note`` when there are none.

        Each example: ``rank``, where it is (``shard, shard_file, sample, pos``), ``expected``
        and ``actual`` (id and text) and ``matches``, ``tokens`` (every id of the window with
        its text and ``role``: before, prompt, next, after) and the decoded ``before``,
        ``prompt_text``, ``next_text`` and ``after`` text.
        """
        ids = self._ids(prompt)
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise UserError(f"limit must be an integer >= 1, got {limit!r}")
        n = len(ids) + 1
        if n not in TOP_NGRAMS:
            raise UserError(f"a task's prompt is 1 token (top_bigrams) or 2 tokens (top_trigrams); "
                            f"{prompt!r} is {len(ids)}")
        table = top_table(n)
        out = {"table": table, "n": n, "prompt": ids, "prompt_tokens": self.token_text(ids), "row": None,
               "occurrences": None, "examples": [], "note": None}
        row = None
        if table in self.tables and self._fits(ids):
            try:
                row = self.task(table, ids, top=1)["row"]
            except UserError:
                row = None
        out["row"] = row
        if row is None:
            out["note"] = f"{out['prompt_tokens']!r} is not a prompt of {table}: it has no examples"
            return out
        if CONTEXTS not in self.tables:
            out["note"] = (f"this catalog has no examples yet: run `ngram-dask contexts --db {self.path}` "
                           "to find them in the input")
            return out
        typ = dict(self.columns(CONTEXTS))["id0"]
        id1 = f"id1 = CAST(? AS {typ})" if n == 3 else "id1 IS NULL"
        params = [n, ids[0]] + ([ids[1]] if n == 3 else [])
        with self._cursor() as cur:
            sql = f"SELECT * FROM {CONTEXTS} WHERE n = ? AND id0 = CAST(? AS {typ}) AND {id1} ORDER BY rank"
            sql += " LIMIT ?" if limit else ""
            rows = cur.sql(sql, params=params + ([limit] if limit else [])).to_arrow_table().to_pylist()
            if CONTEXT_COUNTS in self.tables:
                got = cur.execute(f"SELECT occurrences FROM {CONTEXT_COUNTS} WHERE n = ? AND id0 = CAST(? AS {typ}) "
                                  f"AND {id1}", params).fetchall()
                out["occurrences"] = int(got[0][0]) if got else 0
        out["examples"] = [self._example(r, n) for r in rows]
        if not rows:
            out["note"] = f"no examples of {out['prompt_tokens']!r} were kept (the input has none inside a sample)"
        return out

    def _example(self, r: dict, n: int) -> dict:
        window, at = [int(i) for i in r["window_ids"]], int(r["prompt_at"])
        nxt = at + n - 1
        roles = ["before"] * at + ["prompt"] * (n - 1) + ["next"] + ["after"] * (len(window) - nxt - 1)
        texts = self.token_text(window)
        expected, actual = int(r["expected"]), int(r["actual"])
        return {
            "rank": r["rank"], "shard": r["shard"], "shard_file": r["shard_file"], "sample": r["sample"],
            "pos": r["pos"], "window_start": r["window_start"],
            "expected": {"id": expected, "token": self.token_text([expected])[0]},
            "actual": {"id": actual, "token": texts[nxt]}, "matches": expected == actual,
            "tokens": [{"id": i, "token": t, "role": role} for i, t, role in zip(window, texts, roles)],
            "before": self.decode(window[:at]), "prompt_text": self.decode(window[at:nxt]),
            "next_text": texts[nxt], "after": self.decode(window[nxt + 1:]),
        }

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
