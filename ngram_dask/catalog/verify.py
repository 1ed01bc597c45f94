"""Check every invariant of SPEC.md against a built catalog database.

Each check is a name and a SQL query that returns the number of violating rows (or
a description of the first one); ``verify`` stops at the first broken invariant.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable, Iterator

from ngram_dask.db import read_info, read_only, scalar, table_names
from ngram_dask.errors import DatabaseError
from ngram_dask.schema import (
    CONTEXT_COUNTS,
    CONTEXTS,
    INFO,
    LEDGER,
    TOP_NGRAMS,
    id_columns,
    ngram_table,
    prefix_table,
    top_table,
)


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def checks(con) -> Iterator[Callable[[], Check]]:
    info = read_info(con)
    ngrams = json.loads(info["ngrams"])
    chunks = int(info["chunks"])

    def ledger_complete() -> Check:
        got = set(con.execute(f"SELECT n, chunk FROM {LEDGER}").fetchall())
        want = {(n, c) for n in ngrams for c in range(chunks)}
        missing = sorted(want - got)
        return Check("every chunk loaded", not missing,
                     f"{len(want)} chunks in {LEDGER}" if not missing
                     else f"missing n={missing[0][0]} chunk {missing[0][1]}")

    yield ledger_complete
    for n in ngrams:
        t, ids = ngram_table(n), id_columns(n)
        cols = ", ".join(ids)

        def total(n=n, t=t) -> Check:
            want = int(info[f"ngram_total_{n}"])
            got = int(scalar(con, f"SELECT coalesce(sum(count), 0) FROM {t}"))
            return Check(f"sum(count) of {t} = sum over samples of max(L-{n - 1}, 0)", got == want,
                         f"{got} vs {want}")

        def unique(t=t, cols=cols) -> Check:
            dup = scalar(con, f"SELECT count(*) FROM (SELECT {cols} FROM {t} GROUP BY {cols} HAVING count(*) > 1)")
            zero = scalar(con, f"SELECT count(*) FROM {t} WHERE count = 0")
            return Check(f"{t}: one row per n-gram, every count > 0", dup == 0 and zero == 0,
                         f"{dup} duplicated n-grams, {zero} zero counts")

        yield total
        yield unique
        if n < 2:
            continue
        p, head, last = prefix_table(n), ids[:-1], ids[-1]
        hc = ", ".join(head)
        on = " AND ".join(f"p.{c} = g.{c}" for c in head)

        def prefixes(t=t, p=p, hc=hc, on=on, last=last) -> Check:
            bad = scalar(con, f"""
                WITH g AS (
                    SELECT {hc}, sum(count) AS s, max(count) AS m,
                           min({last}) FILTER (WHERE count = mx) AS best
                    FROM (SELECT *, max(count) OVER (PARTITION BY {hc}) AS mx FROM {t})
                    GROUP BY {hc})
                SELECT count(*) FROM g FULL JOIN {p} p ON {on}
                WHERE p.sum_count IS DISTINCT FROM g.s OR p.max_count IS DISTINCT FROM g.m
                   OR p.{last} IS DISTINCT FROM g.best
                   OR abs(p.frac_max - g.m::DOUBLE / g.s::DOUBLE) > 1e-12""")
            return Check(f"{p}: sum_count, max_count, follower (smallest id on ties), frac_max match {t}",
                         bad == 0, f"{bad} prefix rows disagree")

        yield prefixes
        if n - 1 in ngrams:
            lower = ngram_table(n - 1)
            on2 = " AND ".join(f"l.{c} = h.{c}" for c in head)

            def nested(t=t, lower=lower, hc=hc, on2=on2) -> Check:
                bad = scalar(con, f"""
                    SELECT count(*) FROM (SELECT {hc}, sum(count) AS s, max(count) AS m FROM {t} GROUP BY {hc}) h
                    LEFT JOIN {lower} l ON {on2}
                    WHERE l.count IS NULL OR l.count < h.s""")
                return Check(f"the prefix of every {t[:-1]} is a {lower[:-1]} at least as frequent "
                             "(also summed over followers)", bad == 0, f"{bad} prefixes violate it")

            yield nested
    yield from context_checks(con)
    from ngram_dask.catalog.verify_revisions import revision_checks

    yield from revision_checks(con, Check)


def context_checks(con) -> Iterator[Callable[[], Check]]:
    """With ``contexts``: every prompt's counted occurrences are its ``sum_count``, and each
    prompt has ``min(per_task, occurrences)`` examples, each one an occurrence of it."""
    tables = table_names(con)
    if CONTEXT_COUNTS not in tables:
        return
    info = json.loads(read_info(con).get("contexts") or "{}")
    per_task = int(info.get("per_task", 0))
    tops = [n for n in TOP_NGRAMS if top_table(n) in tables]
    for n in tops:
        top = top_table(n)
        id1 = "t.id1" if n == 3 else "NULL"

        def counts(n=n, top=top, id1=id1) -> Check:
            rows = con.execute(f"""
                SELECT t.id0, {id1}, t.sum_count, c.occurrences FROM {top} t
                FULL JOIN (SELECT * FROM {CONTEXT_COUNTS} WHERE n = {n}) c
                  ON c.id0 = t.id0 AND c.id1 IS NOT DISTINCT FROM {id1}
                WHERE t.sum_count IS DISTINCT FROM c.occurrences
                ORDER BY 1, 2 LIMIT 1""").fetchall()
            total = scalar(con, f"SELECT count(*) FROM {top}")
            if not rows:
                return Check(f"{CONTEXT_COUNTS}: the occurrences contexts counted = sum_count of {top}", True,
                             f"{total} prompts")
            id0, i1, want, got = rows[0]
            prompt = [id0] + ([i1] if n == 3 else [])
            return Check(f"{CONTEXT_COUNTS}: the occurrences contexts counted = sum_count of {top}", False,
                         f"prompt {prompt} has sum_count {want} in {top} but {got} occurrences were counted in "
                         "the input: the database and the input disagree (rerun `ngram-dask contexts`)")

        def examples(n=n, top=top, id1=id1) -> Check:
            bad = scalar(con, f"""
                WITH k AS (SELECT id0, id1, count(*) AS k,
                                  count(*) FILTER (WHERE window_ids[prompt_at + 1] != id0
                                                   OR (n = 3 AND window_ids[prompt_at + 2] != id1)
                                                   OR window_ids[prompt_at + n] != actual) AS wrong
                           FROM {CONTEXTS} WHERE n = {n} GROUP BY ALL)
                SELECT count(*) FROM (SELECT * FROM {CONTEXT_COUNTS} WHERE n = {n}) c
                LEFT JOIN k ON k.id0 = c.id0 AND k.id1 IS NOT DISTINCT FROM c.id1
                WHERE coalesce(k.k, 0) != least(c.occurrences, {per_task}) OR coalesce(k.wrong, 0) > 0""")
            return Check(f"{CONTEXTS}: min(per_task, occurrences) examples per prompt of {top}, each holding it",
                         bad == 0, f"{bad} prompts disagree")

        yield counts
        yield examples


def verify(db_path: str, announce=print) -> list[Check]:
    """Run every check; returns them; raises ``DatabaseError`` on the first broken one."""
    import os

    if not os.path.exists(db_path):
        raise DatabaseError(f"database {db_path} does not exist: run `ngram-dask build` first")
    with read_only(db_path) as con:
        if INFO not in table_names(con):
            raise DatabaseError(f"{db_path} has no {INFO} table: not an ngram-dask catalog")
        done = []
        for make in checks(con):
            check = make()
            done.append(check)
            announce(f"  {'ok  ' if check.ok else 'FAIL'} {check.name} ({check.detail})")
            if not check.ok:
                raise DatabaseError(f"verify failed: {check.name}: {check.detail}")
        return done
