"""Learning curves of one task, and the report's across-training plots.

``curve(cat, prompt)`` (``Catalog.curve``, ``/api/curve``) reads the ``scores``,
``learning`` and ``exposure`` tables (``lm.revisions``, ``contexts.exposure``) for one
prompt: per model its ``p`` at every scored revision, its learning row, and, when the
exposure table exists, how often the prompt (and the task) had been seen by each step.

``report_section(cat, out)``: the share of tasks learned against the step per model,
and the median ``learned_step`` per ``sum_count`` decile (are frequent tasks learned
first?), as PNG plots with their numbers as HTML tables.
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

from ngram_dask.errors import UserError
from ngram_dask.schema import EXPOSURE, LEARNING, SCORED_REVISIONS, SCORES, TOKENS, TOP_NGRAMS, top_table

DESCRIPTIONS = {
    SCORES: ("`score --revisions`: the probability each model gives the expected next token after each "
             "prompt of the top tables, at each training checkpoint (revision; `step` is N of step<N>)."),
    LEARNING: ("Per model and prompt, when `p` crossed the threshold for good: `learned_step` (the first "
               "scored step from which p >= threshold at every later one), `first_step_above`, `peak_p`, "
               "`peak_step`, `final_p`, `forgotten`."),
    EXPOSURE: ("Per prompt and checkpoint step: its occurrences in the training sequences before that step "
               "(`prompt_seen`), and those followed by the expected token (`task_seen`)."),
}
COLUMNS = {
    "model": "the model's name, as in its p_<model> column",
    "revision": "the checkpoint (hub revision or subfolder)",
    "step": "training step of the checkpoint (NULL for a revision not named step<N>)",
    "n": "2: a task of top_bigrams (prompt id0), 3: of top_trigrams (prompt id0, id1)",
    "p": "the model's probability of the expected next token after the prompt",
    "learned_step": "first scored step from which p >= threshold at every later scored step",
    "first_step_above": "first scored step with p >= threshold",
    "peak_p": "largest p over the scored steps",
    "peak_step": "earliest step reaching peak_p",
    "final_p": "p at the last scored step",
    "forgotten": "p >= threshold at some step, below it at the last",
    "steps": "scored steps summarised",
    "prompt_seen": "occurrences of the prompt in the sequences trained before the step",
    "task_seen": "of those, followed by the expected token",
}


class Curves:
    """Part of ``Catalog`` (``catalog.api``): curves across training, and the special tokens."""

    def curve(self, prompt: str | Sequence[int]) -> dict:
        """The task's curves across training: per model ``p`` at each scored revision (with
        the exposure by then) and its learning row (``curve`` below)."""
        return curve(self, prompt)

    def special_ids(self) -> list[int]:
        """The tokenizer's special tokens (``<|endoftext|>``...); without a loadable tokenizer,
        the ids whose ``tokens`` text looks like ``<|...|>``."""
        try:
            return sorted(set(int(i) for i in self.tokenizer.all_special_ids))
        except UserError:
            if TOKENS not in self.tables:
                return []
            with self._cursor() as cur:
                return [int(r[0]) for r in cur.execute(
                    f"SELECT id FROM {TOKENS} WHERE token LIKE '<|%|>' ORDER BY id").fetchall()]


def column_description(table: str, column: str) -> str | None:
    return COLUMNS.get(column) if table in DESCRIPTIONS else None


def _where(cat, table: str, n: int, ids: Sequence[int]) -> tuple[str, list]:
    typ = dict(cat.columns(table))["id0"]
    id1 = f"id1 = CAST(? AS {typ})" if n == 3 else "id1 IS NULL"
    return f"n = ? AND id0 = CAST(? AS {typ}) AND {id1}", [n, ids[0]] + ([ids[1]] if n == 3 else [])


def curve(cat, prompt: str | Sequence[int]) -> dict[str, Any]:
    """The task's curves: ``table, n, prompt, prompt_tokens, expected`` ({id, token} or None),
    ``models`` (each: ``model``, ``threshold``, ``points`` [{revision, step, p, prompt_seen,
    task_seen}] in step order, ``learning`` or None), ``exposure`` [{step, prompt_seen,
    task_seen}] and a ``note`` when there is nothing to draw."""
    ids = cat._ids(prompt)
    n = len(ids) + 1
    if n not in TOP_NGRAMS:
        raise UserError(f"a task's prompt is 1 token (top_bigrams) or 2 tokens (top_trigrams); "
                        f"{prompt!r} is {len(ids)}")
    table = top_table(n)
    out: dict[str, Any] = {"table": table, "n": n, "prompt": ids, "prompt_tokens": cat.token_text(ids),
                           "expected": None, "models": [], "exposure": [], "note": None}
    if table not in cat.tables or not cat._fits(ids):
        out["note"] = f"{out['prompt_tokens']!r} is not a prompt of {table}"
        return out
    typ = dict(cat.columns(table))["id0"]
    keys = " AND ".join(f"id{j} = CAST(? AS {typ})" for j in range(n - 1))
    try:
        recorded = json.loads(cat.info.get(SCORED_REVISIONS) or "{}")
    except ValueError:
        recorded = {}
    with cat._cursor() as cur:
        got = cur.execute(f"SELECT id{n - 1} FROM {table} WHERE {keys}", ids).fetchall()
        if not got:
            out["note"] = f"{out['prompt_tokens']!r} is not a prompt of {table}"
            return out
        expected = int(got[0][0])
        out["expected"] = {"id": expected, "token": cat.token_text([expected])[0]}
        exposure = {}
        if EXPOSURE in cat.tables:
            where, params = _where(cat, EXPOSURE, n, ids)
            for step, seen, task in cur.execute(f"SELECT step, prompt_seen, task_seen FROM {EXPOSURE} WHERE {where} "
                                                "ORDER BY step", params).fetchall():
                exposure[int(step)] = (int(seen), int(task))
        out["exposure"] = [{"step": s, "prompt_seen": a, "task_seen": b} for s, (a, b) in exposure.items()]
        if SCORES in cat.tables:
            where, params = _where(cat, SCORES, n, ids)
            rows = cur.execute(f"SELECT model, revision, step, p FROM {SCORES} WHERE {where} "
                               "ORDER BY model, step NULLS LAST, revision", params).fetchall()
            learning = {}
            if LEARNING in cat.tables:
                where, params = _where(cat, LEARNING, n, ids)
                res = cur.execute(f"SELECT * FROM {LEARNING} WHERE {where}", params)
                names = [d[0] for d in res.description]
                learning = {r[0]: dict(zip(names, r)) for r in res.fetchall()}
            models: dict[str, dict] = {}
            for model, revision, step, p in rows:
                m = models.setdefault(model, {"model": model, "points": [], "learning": learning.get(model),
                                              "threshold": (recorded.get(model) or {}).get("threshold")})
                seen = exposure.get(int(step)) if step is not None else None
                m["points"].append({"revision": revision, "step": step, "p": p,
                                    "prompt_seen": seen[0] if seen else None, "task_seen": seen[1] if seen else None})
            out["models"] = list(models.values())
    if not out["models"] and not out["exposure"]:
        out["note"] = ("no scores across training yet: run `ngram-dask score --revisions ...` "
                       "(and `ngram-dask exposure`) on this catalog")
    return out


# --- the report ----------------------------------------------------------------------------

def _h(text) -> str:
    import html

    return html.escape(str(text))


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{_h(c)}</th>" for c in header)
    body = "".join("<tr>" + "".join(f"<td>{_h(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def learned_share(con) -> dict[str, list[tuple[int, int, int]]]:
    """model -> [(step, tasks learned by then: learned_step <= step, tasks)] over its scored steps."""
    out: dict[str, list] = {}
    rows = con.execute(f"""
        WITH steps AS (SELECT DISTINCT model, step FROM {SCORES} WHERE step IS NOT NULL)
        SELECT s.model, s.step, count(l.learned_step) FILTER (WHERE l.learned_step <= s.step), count(l.model)
        FROM steps s JOIN {LEARNING} l ON l.model = s.model GROUP BY ALL ORDER BY 1, 2""").fetchall()
    for model, step, learned, total in rows:
        out.setdefault(model, []).append((int(step), int(learned), int(total)))
    return out


def learned_by_decile(con, tables: set[str]) -> dict[str, list[tuple[int, int, int, float | None]]]:
    """model -> [(sum_count decile 1..10, tasks, learned, median learned_step of the learned)]."""
    parts = [f"SELECT {n} AS n, id0, {'id1' if n == 3 else 'NULL'} AS id1, sum_count FROM {top_table(n)}"
             for n in TOP_NGRAMS if top_table(n) in tables]
    if not parts:
        return {}
    rows = con.execute(f"""
        WITH t AS ({' UNION ALL '.join(parts)}),
             j AS (SELECT l.model, l.learned_step, ntile(10) OVER (PARTITION BY l.model ORDER BY t.sum_count) AS d
                   FROM {LEARNING} l JOIN t ON t.n = l.n AND t.id0 = l.id0 AND t.id1 IS NOT DISTINCT FROM l.id1)
        SELECT model, d, count(*), count(learned_step), median(learned_step) FROM j GROUP BY ALL
        ORDER BY 1, 2""").fetchall()
    out: dict[str, list] = {}
    for model, d, total, learned, median in rows:
        out.setdefault(model, []).append((int(d), int(total), int(learned),
                                          None if median is None else float(median)))
    return out


def _save(plt, fig, ax, path: str, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def report_section(cat, out: str, plt) -> tuple[list[str], str]:
    """(image names, HTML) of the across-training section; nothing without a learning table."""
    if LEARNING not in cat.tables or SCORES not in cat.tables:
        return [], ""
    con = cat.con
    shares = learned_share(con)
    deciles = learned_by_decile(con, set(cat.tables))
    images, parts = [], ["<h2>Across training (score --revisions)</h2>"]
    if shares:
        fig, ax = plt.subplots(figsize=(7, 4))
        for model, pts in shares.items():
            ax.plot([max(s, 1) for s, _, _ in pts], [a / t if t else 0 for _, a, t in pts], marker="o", label=model)
        ax.set_xscale("log")
        ax.set_ylim(0, 1)
        _save(plt, fig, ax, os.path.join(out, "learned_share.png"), "share of tasks learned by each step",
              "training step (log; step0 drawn at 1)", "learned (learned_step <= step)")
        images.append("learned_share.png")
        parts.append('<figure><img src="learned_share.png" alt="learned_share.png"><figcaption>The share of '
                     "the top tables' tasks each model has learned (p at or above the threshold from that step "
                     "on) by each scored step.</figcaption></figure>")
        parts.append(_table(["model", "step", "learned", "tasks", "share"],
                            [[m, s, f"{a:,}", f"{t:,}", f"{a / t:.3f}" if t else "-"]
                             for m, pts in shares.items() for s, a, t in pts]))
    if deciles:
        fig, ax = plt.subplots(figsize=(7, 4))
        for model, rows in deciles.items():
            ax.plot([d for d, *_ in rows], [m if m is not None else float("nan") for *_, m in rows], marker="o",
                    label=model)
        _save(plt, fig, ax, os.path.join(out, "learned_by_decile.png"), "median learned_step by sum_count decile",
              "sum_count decile (1: rarest prompts, 10: most frequent)", "median learned_step (learned tasks)")
        images.append("learned_by_decile.png")
        parts.append('<figure><img src="learned_by_decile.png" alt="learned_by_decile.png"><figcaption>Do '
                     "frequent tasks get learned first? The median learned_step of the learned tasks in each "
                     "decile of the prompt's sum_count.</figcaption></figure>")
        parts.append(_table(["model", "decile", "tasks", "learned", "median learned_step"],
                            [[m, d, f"{t:,}", f"{a:,}", "-" if md is None else f"{md:g}"]
                             for m, rows in deciles.items() for d, t, a, md in rows]))
    return images, "\n".join(parts)
