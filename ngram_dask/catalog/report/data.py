"""The report's numbers: small aggregates DuckDB computes over the catalog (histograms,
counts of counts, coverage, per-model means), and which ``p_<model>`` columns there are."""

from __future__ import annotations

import math
import re

from ngram_dask.catalog.reader import CatalogConnection
from ngram_dask.db import scalar
from ngram_dask.lm.models import model_size
from ngram_dask.schema import (
    is_score_column,
    ngram_table,
    score_column_model,
    scored_models,
    top_table,
)

BINS = 50  # frac_max bins of width 0.02
LOG_BINS_PER_DECADE = 5


def threshold(info: dict[str, str], n: int) -> float | None:
    m = re.search(r"frac_max > ([0-9.eE+-]+)", info.get(f"{top_table(n)}_rule", ""))
    return float(m.group(1)) if m else None


def model_labels(cat: CatalogConnection, columns: list[str]) -> dict[str, str]:
    """Column -> the model's name as scoring recorded it (``catalog_info`` ``scored_models``)."""
    scored = scored_models(cat.info)
    out = {}
    for c in columns:
        model = scored.get(c, {}).get("model")
        out[c] = str(model) if model else score_column_model(c)
    return out


def model_columns(cat: CatalogConnection, table: str) -> list[str]:
    """The ``p_<model>`` columns of a top table, smallest model first."""
    cols = [c for c, t in cat.columns(table) if is_score_column(c) and t in ("DOUBLE", "FLOAT")]
    labels = model_labels(cat, cols)
    def size(name: str) -> float:
        return model_size(name) or math.inf  # no size stated: last

    return sorted(cols, key=lambda c: (min(size(labels[c]), size(c)), c))


# --- data (small aggregates) ---------------------------------------------------------------

def frac_hist(cat: CatalogConnection, table: str) -> tuple[list[int], list[int], list[int]]:
    """Per frac_max bin: contexts and their occurrences (sum of sum_count)."""
    rows = cat.con.execute(
        f"SELECT least(floor(frac_max * {BINS}), {BINS - 1})::INTEGER AS b, count(*), sum(sum_count) "
        f"FROM {table} GROUP BY b").fetchall()
    contexts, occurrences = [0] * BINS, [0] * BINS
    for b, c, s in rows:
        contexts[b], occurrences[b] = int(c), int(s)
    return list(range(BINS)), contexts, occurrences


def log_hist(cat: CatalogConnection, table: str, column: str) -> list[tuple[float, float, int]]:
    """(lower edge, upper edge, rows) per log bin of ``column`` (values >= 1)."""
    k = LOG_BINS_PER_DECADE
    rows = cat.con.execute(
        f"SELECT floor(log10({column}) * {k})::INTEGER AS b, count(*) FROM {table} "
        f"WHERE {column} >= 1 GROUP BY b ORDER BY b").fetchall()
    return [(10 ** (b / k), 10 ** ((b + 1) / k), int(c)) for b, c in rows]


def counts_by_rank(cat: CatalogConnection, table: str) -> tuple[list[int], list[int]]:
    """Rank (1 = most frequent) and count, from the counts of counts: a step per distinct count."""
    ranks, counts, done = [], [], 0
    for count, k in cat.con.execute(
            f"SELECT count, count(*) FROM {table} GROUP BY count ORDER BY count DESC").fetchall():
        ranks += [done + 1, done + int(k)]
        counts += [int(count), int(count)]
        done += int(k)
    return ranks, counts


def ngram_total(cat: CatalogConnection, n: int) -> int:
    total = cat.info.get(f"ngram_total_{n}")
    if total is not None:
        return int(total)
    return int(scalar(cat.con, f"SELECT coalesce(sum(count), 0) FROM {ngram_table(n)}"))


def coverage(cat: CatalogConnection, n: int) -> dict:
    """Share of the corpus's n-grams covered by the top table, for thresholds x = 1 and each
    bin edge below: the rows with ``frac_max >= x`` (exact at these points)."""
    table = top_table(n)
    total = ngram_total(cat, n)
    rows = cat.con.execute(
        f"SELECT CASE WHEN frac_max >= 1 THEN {BINS} ELSE floor(frac_max * {BINS}) END::INTEGER AS b, "
        f"count(*), sum(sum_count), sum(max_count) FROM {table} GROUP BY b ORDER BY b DESC").fetchall()
    xs, ctx, hit = [], [], []
    c_sum = h_sum = r_sum = 0
    for b, r, s, m in rows:
        r_sum, c_sum, h_sum = r_sum + int(r), c_sum + int(s), h_sum + int(m)
        xs.append(b / BINS)
        ctx.append(c_sum / total if total else 0.0)
        hit.append(h_sum / total if total else 0.0)
    return {"table": table, "n": n, "total": total, "x": xs, "contexts": ctx, "predicted": hit,
            "rows": r_sum, "context_share": ctx[-1] if ctx else 0.0,
            "predicted_share": hit[-1] if hit else 0.0}


def model_hist(cat: CatalogConnection, table: str, column: str, bins: int = 40) -> list[tuple[int, int, int]]:
    return [(int(x), int(y), int(c)) for x, y, c in cat.con.execute(
        f"SELECT least(floor(frac_max * {bins}), {bins - 1})::INTEGER AS x, "
        f"least(greatest(floor({column} * {bins}), 0), {bins - 1})::INTEGER AS y, count(*) "
        f"FROM {table} WHERE {column} IS NOT NULL AND NOT isnan({column}) GROUP BY x, y").fetchall()]


def model_means(cat: CatalogConnection, table: str, column: str) -> tuple[list[float], list[float], list[int]]:
    rows = cat.con.execute(
        f"SELECT least(floor(frac_max * {BINS}), {BINS - 1})::INTEGER AS b, avg({column}), count(*) "
        f"FROM {table} WHERE {column} IS NOT NULL AND NOT isnan({column}) GROUP BY b ORDER BY b").fetchall()
    return [(b + 0.5) / BINS for b, _, _ in rows], [float(a) for _, a, _ in rows], [int(c) for *_, c in rows]
