"""``verify`` of the tables across training checkpoints: ``scores``, ``learning``, ``exposure``.

* ``scores``: every (model, revision) holds exactly one row per prompt of the top tables,
  ``0 <= p <= 1``, and ``step`` is the revision's step (NULL for a revision not ``step<N>``);
* ``learning``: equal, row for row, to its definition recomputed from ``scores``
  (``lm.learning``) with the threshold recorded in ``catalog_info['scored_revisions']``;
* ``exposure``: per prompt, the counts never decrease with the step, ``task_seen <=
  prompt_seen``, and the pass's totals (``catalog_info['exposure']``) equal the last
  step's counts plus what came after it: the per-step sums telescope.
"""

from __future__ import annotations

import json
from typing import Callable, Iterator

from ngram_dask.db import read_info, table_names
from ngram_dask.lm.learning import learning_select
from ngram_dask.lm.revisions import scored_revisions
from ngram_dask.schema import EXPOSURE, EXPOSURE_INFO, LEARNING, SCORES, TOP_NGRAMS, revision_step, top_table


def revision_checks(con, check: Callable) -> Iterator[Callable]:
    """``check(name, ok, detail)`` builds a verify ``Check``; yields the checks that apply."""
    tables = table_names(con)
    tops = [n for n in TOP_NGRAMS if top_table(n) in tables]
    if SCORES in tables:
        def complete():
            bad = []
            pairs = con.execute(f"SELECT DISTINCT model, revision, step FROM {SCORES} ORDER BY ALL").fetchall()
            for model, revision, step in pairs:
                if step != revision_step(revision):
                    bad.append(f"{model} {revision}: step {step}")
                for n in tops:
                    id1 = "t.id1" if n == 3 else "NULL"
                    wrong = con.execute(f"""
                        SELECT count(*) FROM {top_table(n)} t FULL JOIN
                            (SELECT id0, id1, count(*) AS k, min(p) AS lo, max(p) AS hi FROM {SCORES}
                             WHERE model = ? AND revision = ? AND n = {n} GROUP BY ALL) s
                          ON s.id0 = t.id0 AND s.id1 IS NOT DISTINCT FROM {id1}
                        WHERE t.id0 IS NULL OR s.k IS DISTINCT FROM 1 OR s.lo < 0 OR s.hi > 1""",
                                        [model, revision]).fetchall()[0][0]
                    if wrong:
                        bad.append(f"{model} {revision} {top_table(n)}: {wrong} prompts without exactly one p "
                                   "in [0, 1]")
            return check(f"{SCORES}: one p in [0, 1] per model, revision and prompt of the top tables",
                         not bad, bad[0] if bad else f"{len(pairs)} model revisions")

        yield complete
    if LEARNING in tables and SCORES in tables:
        recorded = scored_revisions(read_info(con))

        def learning():
            bad = []
            models = [r[0] for r in con.execute(f"SELECT DISTINCT model FROM {LEARNING} UNION "
                                                f"SELECT DISTINCT model FROM {SCORES} ORDER BY 1").fetchall()]
            for model in models:
                threshold = (recorded.get(model) or {}).get("threshold")
                if threshold is None:
                    bad.append(f"{model}: no threshold recorded in catalog_info")
                    continue
                wrong = con.execute(f"""
                    WITH want AS ({learning_select(threshold)}),
                         got AS (SELECT * FROM {LEARNING} WHERE model = $model)
                    SELECT count(*) FROM (
                        (SELECT * FROM want EXCEPT ALL SELECT * FROM got) UNION ALL
                        (SELECT * FROM got EXCEPT ALL SELECT * FROM want))""", {"model": model}).fetchall()[0][0]
                if wrong:
                    bad.append(f"{model}: {wrong} rows differ from the learning recomputed from {SCORES}")
            return check(f"{LEARNING}: equal to its definition over {SCORES}", not bad,
                         bad[0] if bad else f"{len(models)} model(s)")

        yield learning
    if EXPOSURE in tables:
        totals = json.loads(read_info(con).get(EXPOSURE_INFO) or "{}").get("totals") or {}

        def exposure():
            bad = con.execute(f"""
                SELECT count(*) FROM (
                    SELECT prompt_seen, task_seen,
                           lag(prompt_seen) OVER w AS p0, lag(task_seen) OVER w AS t0
                    FROM {EXPOSURE} WINDOW w AS (PARTITION BY n, id0, id1 ORDER BY step))
                WHERE task_seen > prompt_seen OR prompt_seen < p0 OR task_seen < t0""").fetchall()[0][0]
            last = con.execute(f"""
                SELECT coalesce(sum(prompt_seen), 0), coalesce(sum(task_seen), 0) FROM {EXPOSURE}
                WHERE step = (SELECT max(step) FROM {EXPOSURE})""").fetchall()[0]
            after = totals.get("after_last_step", [0, 0])
            whole = totals.get("pass", [None, None])
            sums = [int(last[0]) + int(after[0]), int(last[1]) + int(after[1])]
            ok = bad == 0 and sums == whole
            return check(f"{EXPOSURE}: counts grow with the step and telescope to the pass's totals", ok,
                         f"{bad} rows decrease or exceed their prompt; last step + after = {sums}, pass {whole}")

        yield exposure
