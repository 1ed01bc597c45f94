"""``Catalog`` task browser: which tables hold catalog tasks, their columns, and the
filtered, sorted, paged SELECT behind ``tasks``, ``count_tasks`` and ``task``.

Table and column names come only from the database's own schema (an allow-list); values
are parameters. A mixin of ``catalog.api.Catalog``.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping, Sequence

from ngram_dask.catalog.reader import as_output
from ngram_dask.errors import UserError
from ngram_dask.lm.models import model_size
from ngram_dask.schema import (
    is_score_column,
    ngram_table,
    scan_length,
    score_column_model,
    scored_models,
    top_table,
)

NUMERIC_TYPES = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT",
                 "UINTEGER", "UBIGINT", "FLOAT", "DOUBLE", "REAL"}
_NESTED = re.compile(r"\[\]$|^(STRUCT|MAP|UNION)\b|\[\d+\]$")


class TaskBrowser:
    """Part of ``Catalog`` (``catalog.api``)."""

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
            if key == "no_special":  # hide tasks whose prompt or next token is a special token
                ids = [c for c, _ in self.columns(table) if re.fullmatch(r"id\d+", c)] if value else []
                special = ", ".join(str(int(i)) for i in self.special_ids())
                clauses += [f'"{c}" NOT IN ({special})' for c in ids] if special else []
                continue
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
            return as_output(cur.sql(sql, params=params).to_arrow_table(), output)

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
