"""The ``learning`` table: when each task was learned, from its scores across checkpoints.

Per model and prompt, over the scored revisions that name a step (``step<N>``), in step
order, with ``t = score.learned_threshold`` (``p >= t`` counts as above, so a score equal
to the threshold is learned):

* ``learned_step``: the first scored step from which ``p >= t`` at that step and every
  later scored one; NULL when the last scored step is below ``t``;
* ``first_step_above``: the first scored step with ``p >= t`` (NULL if none);
* ``peak_p``, ``peak_step``: the largest ``p`` and the earliest step that reached it;
* ``final_p``: ``p`` at the last scored step;
* ``forgotten``: above ``t`` at some scored step, below it at the last one;
* ``steps``: how many scored steps the row summarises.

One SQL statement in DuckDB (a suffix minimum per prompt): it runs out of core for
millions of prompts x 154 checkpoints. ``tests/lm/test_learning.py`` checks it against
the definition above, written as a Python loop.
"""

from __future__ import annotations

from ngram_dask.db import table_names, transaction
from ngram_dask.schema import LEARNING, SCORES, learning_columns, typed_create_sql

_KEY = "n, id0, id1"


def learning_select(threshold: float) -> str:
    """SELECT of the learning rows of the model bound to ``$model`` (one row per prompt)."""
    t = float(threshold)
    return f"""
        WITH s AS (
            SELECT {_KEY}, step, p FROM {SCORES} WHERE model = $model AND step IS NOT NULL
        ), w AS (
            SELECT *,
                   min(p) OVER (PARTITION BY {_KEY} ORDER BY step DESC
                                ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS rest_min,
                   max(p) OVER (PARTITION BY {_KEY}) AS peak
            FROM s
        )
        SELECT $model AS model, {_KEY},
               min(step) FILTER (WHERE rest_min >= {t!r}) AS learned_step,
               min(step) FILTER (WHERE p >= {t!r}) AS first_step_above,
               max(p) AS peak_p,
               min(step) FILTER (WHERE p = peak) AS peak_step,
               arg_max(p, step) AS final_p,
               bool_or(p >= {t!r}) AND arg_max(p, step) < {t!r} AS forgotten,
               count(*) AS steps
        FROM w GROUP BY {_KEY}"""


def write_learning(con, model: str, threshold: float, vocab_size: int) -> int:
    """Replace ``model``'s rows of the learning table from its scores; returns the rows written."""
    with transaction(con):
        if LEARNING not in table_names(con):
            con.execute(typed_create_sql(LEARNING, learning_columns(vocab_size)))
        con.execute(f"DELETE FROM {LEARNING} WHERE model = ?", [model])
        con.execute(f"INSERT INTO {LEARNING} SELECT * FROM ({learning_select(threshold)}) "
                    f"ORDER BY {_KEY}", {"model": model})
        return int(con.execute(f"SELECT count(*) FROM {LEARNING} WHERE model = ?", [model]).fetchall()[0][0])
