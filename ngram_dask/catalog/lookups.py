"""``Catalog`` lookups: the followers of a prompt, an n-gram's count, a next token's
probability (exact: a share is ``count / prefix count``).

A mixin of ``catalog.api.Catalog``: it uses the catalog's cursor pool (``_cursor``),
its prompt parsing (``_ids``) and its schema cache.
"""

from __future__ import annotations

from typing import Sequence

from ngram_dask.catalog.reader import as_output
from ngram_dask.errors import UserError
from ngram_dask.schema import (
    id_columns,
    ngram_table,
)


class Lookups:
    """Part of ``Catalog`` (``catalog.api``)."""

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
        return as_output(pa.Table.from_pylist(rows, schema=schema), output)

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
        return as_output(pa.Table.from_pylist(rows, schema=schema), output)

    # --- tasks: the top and scan tables ---------------------------------------------------
