"""``Catalog.contexts``: a task's real examples from the corpus (tables ``contexts`` and
``context_counts``, written by the contexts stage). A mixin of ``catalog.api.Catalog``.
"""

from __future__ import annotations

from typing import Sequence

from ngram_dask.errors import UserError
from ngram_dask.schema import (
    CONTEXT_COUNTS,
    CONTEXTS,
    TOP_NGRAMS,
    top_table,
)


class Examples:
    """Part of ``Catalog`` (``catalog.api``)."""

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
