"""A report a person would rather look at than read: PNG plots and one ``index.html``.

Every number is computed by DuckDB as a small aggregate (histograms, counts of
counts), so the report of an 80 GB catalog needs no more memory than that of a toy:

* ``frac_max.png``: how predictable the contexts of each prefix table are;
* ``sum_count.png``: how often the contexts occur (log bins);
* ``zipf.png``: n-gram counts by rank (log-log), from the counts of counts;
* ``coverage.png``: the share of the corpus's n-grams whose context is in a top table
  (and the share its prediction gets right), as the frac_max threshold falls;
* ``models_<top table>.png`` and ``models_<top table>_mean.png`` when scoring has
  added ``p_<model>`` columns: the model's probability of the expected token against
  ``frac_max``, per model (ordered by size when the name says it: 70m, 1.4b...).
"""

from __future__ import annotations

import datetime as dt
import html
import math
import os
import re
from dataclasses import dataclass, field

from ngram_dask.catalog.export_common import provenance
from ngram_dask.catalog.reader import OpenCatalog, open_catalog
from ngram_dask.db import scalar
from ngram_dask.errors import UserError
from ngram_dask.lm.models import model_size
from ngram_dask.schema import (
    catalog_tables,
    is_score_column,
    ngram_table,
    prefix_table,
    score_column_model,
    scored_models,
    top_table,
)

BINS = 50  # frac_max bins of width 0.02
LOG_BINS_PER_DECADE = 5


@dataclass
class Report:
    out: str
    index: str
    images: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 110, "axes.grid": True, "grid.alpha": 0.3,
                         "axes.spines.top": False, "axes.spines.right": False})
    return plt


def _finish(fig, ax, title: str, xlabel: str, ylabel: str, out: str, name: str, images: list[str],
            legend_size: int = 9, title_size: int | None = None) -> None:
    """Title, axis labels and legend of a one-panel figure, then saved as ``name``."""
    ax.set_title(title, fontsize=title_size)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=legend_size)
    fig.tight_layout()
    _save(fig, out, name, images)


def _save(fig, out: str, name: str, images: list[str]) -> None:
    fig.savefig(os.path.join(out, name), bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    images.append(name)


def _threshold(info: dict[str, str], n: int) -> float | None:
    m = re.search(r"frac_max > ([0-9.eE+-]+)", info.get(f"{top_table(n)}_rule", ""))
    return float(m.group(1)) if m else None


def model_labels(cat: OpenCatalog, columns: list[str]) -> dict[str, str]:
    """Column -> the model's name as scoring recorded it (``catalog_info`` ``scored_models``)."""
    scored = scored_models(cat.info)
    out = {}
    for c in columns:
        model = scored.get(c, {}).get("model")
        out[c] = str(model) if model else score_column_model(c)
    return out


def model_columns(cat: OpenCatalog, table: str) -> list[str]:
    """The ``p_<model>`` columns of a top table, smallest model first."""
    cols = [c for c, t in cat.columns(table) if is_score_column(c) and t in ("DOUBLE", "FLOAT")]
    labels = model_labels(cat, cols)
    def size(name: str) -> float:
        return model_size(name) or math.inf  # no size stated: last

    return sorted(cols, key=lambda c: (min(size(labels[c]), size(c)), c))


# --- data (small aggregates) ---------------------------------------------------------------

def frac_hist(cat: OpenCatalog, table: str) -> tuple[list[int], list[int], list[int]]:
    """Per frac_max bin: contexts and their occurrences (sum of sum_count)."""
    rows = cat.con.execute(
        f"SELECT least(floor(frac_max * {BINS}), {BINS - 1})::INTEGER AS b, count(*), sum(sum_count) "
        f"FROM {table} GROUP BY b").fetchall()
    contexts, occurrences = [0] * BINS, [0] * BINS
    for b, c, s in rows:
        contexts[b], occurrences[b] = int(c), int(s)
    return list(range(BINS)), contexts, occurrences


def log_hist(cat: OpenCatalog, table: str, column: str) -> list[tuple[float, float, int]]:
    """(lower edge, upper edge, rows) per log bin of ``column`` (values >= 1)."""
    k = LOG_BINS_PER_DECADE
    rows = cat.con.execute(
        f"SELECT floor(log10({column}) * {k})::INTEGER AS b, count(*) FROM {table} "
        f"WHERE {column} >= 1 GROUP BY b ORDER BY b").fetchall()
    return [(10 ** (b / k), 10 ** ((b + 1) / k), int(c)) for b, c in rows]


def counts_by_rank(cat: OpenCatalog, table: str) -> tuple[list[int], list[int]]:
    """Rank (1 = most frequent) and count, from the counts of counts: a step per distinct count."""
    ranks, counts, done = [], [], 0
    for count, k in cat.con.execute(
            f"SELECT count, count(*) FROM {table} GROUP BY count ORDER BY count DESC").fetchall():
        ranks += [done + 1, done + int(k)]
        counts += [int(count), int(count)]
        done += int(k)
    return ranks, counts


def ngram_total(cat: OpenCatalog, n: int) -> int:
    total = cat.info.get(f"ngram_total_{n}")
    if total is not None:
        return int(total)
    return int(scalar(cat.con, f"SELECT coalesce(sum(count), 0) FROM {ngram_table(n)}"))


def coverage(cat: OpenCatalog, n: int) -> dict:
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


def model_hist(cat: OpenCatalog, table: str, column: str, bins: int = 40) -> list[tuple[int, int, int]]:
    return [(int(x), int(y), int(c)) for x, y, c in cat.con.execute(
        f"SELECT least(floor(frac_max * {bins}), {bins - 1})::INTEGER AS x, "
        f"least(greatest(floor({column} * {bins}), 0), {bins - 1})::INTEGER AS y, count(*) "
        f"FROM {table} WHERE {column} IS NOT NULL AND NOT isnan({column}) GROUP BY x, y").fetchall()]


def model_means(cat: OpenCatalog, table: str, column: str) -> tuple[list[float], list[float], list[int]]:
    rows = cat.con.execute(
        f"SELECT least(floor(frac_max * {BINS}), {BINS - 1})::INTEGER AS b, avg({column}), count(*) "
        f"FROM {table} WHERE {column} IS NOT NULL AND NOT isnan({column}) GROUP BY b ORDER BY b").fetchall()
    return [(b + 0.5) / BINS for b, _, _ in rows], [float(a) for _, a, _ in rows], [int(c) for *_, c in rows]


# --- plots ---------------------------------------------------------------------------------

def plot_frac_max(cat: OpenCatalog, ns: list[int], out: str, images: list[str]) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, len(ns), figsize=(6.2 * len(ns), 4.2), squeeze=False)
    for ax, n in zip(axes[0], ns):
        table = prefix_table(n)
        bins, contexts, occ = frac_hist(cat, table)
        edges = [b / BINS for b in range(BINS + 1)]
        tc, to = max(sum(contexts), 1), max(sum(occ), 1)
        ax.stairs([c / tc for c in contexts], edges, fill=True, alpha=0.45, label="share of contexts")
        ax.stairs([o / to for o in occ], edges, linewidth=2, label="share of occurrences (by sum_count)")
        th = _threshold(cat.info, n)
        if th is not None:
            ax.axvline(th, color="black", linestyle="--", linewidth=1, label=f"{top_table(n)} threshold {th:g}")
        ax.set_title(f"{table}: how predictable is the next token?")
        ax.set_xlabel("frac_max = count of the top follower / sum_count")
        ax.set_ylabel("share per bin of width 0.02")
        ax.set_xlim(0, 1)
        ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    _save(fig, out, "frac_max.png", images)


def plot_sum_count(cat: OpenCatalog, ns: list[int], out: str, images: list[str]) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, len(ns), figsize=(6.2 * len(ns), 4.2), squeeze=False)
    for ax, n in zip(axes[0], ns):
        table = prefix_table(n)
        h = log_hist(cat, table, "sum_count")
        if h:
            edges = [h[0][0]] + [hi for _, hi, _ in h]
            # bins may skip empty ones: draw each bar on its own edges
            ax.bar([lo for lo, _, _ in h], [c for *_, c in h], width=[hi - lo for lo, hi, _ in h],
                   align="edge", alpha=0.7, edgecolor="white")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlim(edges[0], edges[-1])
        ax.set_title(f"{table}: how often does each context occur?")
        ax.set_xlabel("sum_count (occurrences of the context, log bins)")
        ax.set_ylabel("contexts")
    fig.tight_layout()
    _save(fig, out, "sum_count.png", images)


def plot_zipf(cat: OpenCatalog, ns: list[int], out: str, images: list[str]) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.8, 4.6))
    for n in ns:
        ranks, counts = counts_by_rank(cat, ngram_table(n))
        if ranks:
            ax.plot(ranks, counts, linewidth=1.8, label=f"{ngram_table(n)} ({ranks[-1]:,} distinct)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    _finish(fig, ax, "Counts by rank (Zipf)", "rank (1 = most frequent n-gram)", "count", out, "zipf.png", images)


def plot_coverage(covs: list[dict], out: str, images: list[str]) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.8, 4.6))
    for i, cv in enumerate(covs):
        color = f"C{i}"
        if not cv["x"]:
            continue
        ax.plot(cv["x"], [100 * v for v in cv["contexts"]], color=color, marker="o", markersize=3,
                linewidth=1.8, label=f"{cv['table']}: context in the table")
        ax.plot(cv["x"], [100 * v for v in cv["predicted"]], color=color, linestyle="--", linewidth=1.8,
                label=f"{cv['table']}: next token = its prediction")
    ax.set_xlim(1.0 + 0.01, min([0.5] + [min(cv["x"]) for cv in covs if cv["x"]]))
    ax.set_ylim(bottom=0)
    _finish(fig, ax, "Coverage: share of the corpus's n-grams the top tables explain",
            "frac_max threshold x (rows with frac_max >= x; the axis runs from 1 down)",
            "% of all n-grams of that n in the corpus", out, "coverage.png", images, legend_size=8)


def plot_models(cat: OpenCatalog, n: int, models: list[str], out: str, images: list[str]) -> None:
    import numpy as np

    plt = _plt()
    from matplotlib.colors import LogNorm

    table = top_table(n)
    low = min(0.5, _threshold(cat.info, n) or 0.5)
    labels = model_labels(cat, models)
    bins = 40
    cols = min(4, len(models))
    rows = math.ceil(len(models) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols + 1.2, 3.2 * rows + 0.6), squeeze=False,
                             layout="constrained")
    grids = []
    for col in models:
        grid = np.zeros((bins, bins))
        for x, y, c in model_hist(cat, table, col, bins):
            grid[y, x] += c
        grids.append(grid)
    norm = LogNorm(vmin=1, vmax=max(2.0, *(g.max() for g in grids)))  # one color scale for all panels
    image = None
    for i, (ax, col, grid) in enumerate(zip(axes.flat, models, grids)):
        masked = np.ma.masked_equal(grid, 0)
        if masked.count():
            image = ax.imshow(masked, origin="lower", extent=(0, 1, 0, 1), aspect="auto", cmap="viridis",
                              norm=norm)
        ax.plot([0, 1], [0, 1], color="red", linewidth=0.8, linestyle=":")
        ax.set_xlim(low, 1)
        ax.set_ylim(0, 1)
        ax.set_title(labels[col], fontsize=9)
        if i + cols >= len(models):  # the lowest panel of its column
            ax.set_xlabel("frac_max (corpus)", fontsize=9)
        if i % cols == 0:
            ax.set_ylabel("model probability", fontsize=9)
        else:
            ax.tick_params(labelleft=False)
        ax.grid(False)
    for ax in list(axes.flat)[len(models):]:
        ax.axis("off")
    if image is not None:
        from matplotlib.ticker import FuncFormatter, NullFormatter

        bar = fig.colorbar(image, ax=axes, shrink=0.8, label="rows per cell")
        bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        bar.ax.yaxis.set_minor_formatter(NullFormatter())
    fig.suptitle(f"{table}: model probability of the expected token vs frac_max\n"
                 "(rows per cell, log color; red dots: p = frac_max)", fontsize=11)
    _save(fig, out, f"models_{table}.png", images)

    fig, ax = plt.subplots(figsize=(6.8, 4.6))
    cmap = plt.get_cmap("viridis")
    for i, col in enumerate(models):
        xs, means, _ = model_means(cat, table, col)
        ax.plot(xs, means, marker="o", markersize=3, linewidth=1.5,
                color=cmap(i / max(len(models) - 1, 1)), label=labels[col])
    ax.plot([0, 1], [0, 1], color="red", linewidth=0.8, linestyle=":", label="p = frac_max")
    ax.set_xlim(low, 1)
    ax.set_ylim(0, 1)
    _finish(fig, ax, f"{table}: mean model probability by frac_max\n(color: model, small dark to large light)",
            "frac_max (corpus)", "mean probability of the expected token", out, f"models_{table}_mean.png", images,
            legend_size=8, title_size=11)


# --- the page ------------------------------------------------------------------------------

CAPTIONS = {
    "frac_max.png": "For each context of the prefix tables, the share of its occurrences taken by its most "
                    "frequent next token. Filled: share of contexts; line: weighted by how often the "
                    "context occurs. Contexts right of the dashed line are in the top table (if their "
                    "count passes its threshold too).",
    "sum_count.png": "How many times each context occurs (followed by any token), in log bins: most "
                     "contexts are rare, a few are very frequent.",
    "zipf.png": "Every n-gram's count against its rank, log-log. A straight line is Zipf's law.",
    "coverage.png": "Solid: share of all n-grams of the corpus whose context is a row of the top table "
                    "with frac_max at least x (x = 1: contexts always followed by the same token). "
                    "Dashed: share whose next token is the one the table predicts. The right end is "
                    "the whole top table.",
}


def _h(text) -> str:
    return html.escape(str(text))


WS_MARKS = {" ": "·", "\t": "⇥", "\n": "↵", "\r": "␍", "\u00a0": "⍽", "\u3000": "□"}


class Html(str):
    """Markup that ``_table_html`` puts in a cell as is (everything else is escaped)."""


def token_html(text: str) -> Html:
    """A token as the page shows it: whitespace as marks (``' tuple'`` vs ``'tuple'``, four
    spaces as four dots), the exact string (its repr) on hover."""
    marked = "".join(f"<span class=ws>{WS_MARKS[c]}</span>" if c in WS_MARKS else _h(c) for c in text)
    return Html(f"<span class=tok title=\"{_h(repr(text))}\">{marked or '<span class=ws>∅</span>'}</span>")


def _cell(c) -> str:
    return c if isinstance(c, Html) else _h(c)


def _table_html(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{_h(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _examples(cat: OpenCatalog, n: int, models: list[str], limit: int = 20) -> str:
    table = top_table(n)
    ctx = ", ".join(f"token{j}" for j in range(n - 1))
    extra = "".join(f", {c}" for c in models)
    rows = cat.con.execute(
        f"SELECT [{ctx}], token{n - 1}, frac_max, sum_count{extra} FROM {table} "
        f"ORDER BY sum_count DESC, frac_max DESC LIMIT {limit}").fetchall()
    shown = [[Html("".join(token_html(t) for t in r[0])), token_html(r[1]), f"{r[2]:.3f}", f"{int(r[3]):,}",
              *[("" if v is None else f"{v:.3f}") for v in r[4:]]] for r in rows]
    labels = model_labels(cat, models)
    return _table_html(["context", "next", "frac_max", "sum_count", *[f"p ({labels[c]})" for c in models]], shown)


def write_index(cat: OpenCatalog, out: str, images: list[str], covs: list[dict], models: dict[str, list[str]],
                ns: list[int], notes: list[str]) -> str:
    prov = provenance(cat.info)
    counts = [[t, f"{cat.rows(t):,}"] for t in
              [ngram_table(n) for n in cat.ngrams] + [prefix_table(n) for n in ns] + ["tokens"]
              + [cv["table"] for cv in covs] if t in cat.tables]
    parts = [
        "<!doctype html>", "<html lang=en><head><meta charset=utf-8>",
        f"<title>n-gram catalog report: {_h(os.path.basename(cat.path))}</title>",
        "<style>body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;"
        "color:#222}img{max-width:100%;border:1px solid #ddd;margin:.5em 0}"
        "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.2em .6em;"
        "text-align:left;font-size:.9em}th{background:#f3f3f3}td{font-family:ui-monospace,monospace}"
        "figcaption{color:#555;max-width:60em}.note{color:#a55}"
        ".tok{white-space:pre;border:1px solid #b9cfe8;background:#e7f0fb;border-radius:3px;padding:0 2px;"
        "margin-right:1px}.ws{color:#9aa4ae}</style></head><body>",
        f"<h1>n-gram catalog: {_h(cat.path)}</h1>",
        f"<p>{int(cat.info.get('tokens', 0) or 0):,} tokens in {int(cat.info.get('samples', 0) or 0):,} "
        f"samples; tokenizer <code>{_h(prov.get('tokenizer', 'unknown'))}</code>. "
        f"Report written {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}.</p>",
    ]
    parts += [f"<p class=note>{_h(note)}</p>" for note in notes]
    if covs:
        parts.append("<h2>What the top tables explain</h2>")
        parts.append(_table_html(
            ["table", "rule", "rows", "n-grams in the corpus", "context in the table", "next token predicted"],
            [[cv["table"], cat.info.get(f"{cv['table']}_rule", ""), f"{cv['rows']:,}", f"{cv['total']:,}",
              f"{100 * cv['context_share']:.2f}%", f"{100 * cv['predicted_share']:.2f}%"] for cv in covs]))
    for name in images:
        caption = CAPTIONS.get(name)
        if caption is None and name.endswith("_mean.png"):
            caption = ("The mean probability each model gives the expected token, per frac_max bin: a model "
                       "that had learnt the corpus's statistics exactly would sit on the red line.")
        elif caption is None and name.startswith("models_"):
            caption = ("Each model's probability of the token the table predicts, against how often the "
                       "corpus follows the context with it (frac_max). Red dots: p = frac_max.")
        parts.append(f"<figure><img src=\"{_h(name)}\" alt=\"{_h(name)}\">"
                     f"<figcaption>{_h(caption or '')}</figcaption></figure>")
    for cv in covs:
        n = cv["n"]
        parts.append(f"<h2>{_h(cv['table'])}: the 20 most frequent contexts</h2>")
        parts.append(_examples(cat, n, models.get(cv["table"], [])))
    parts.append("<h2>Tables</h2>")
    parts.append(_table_html(["table", "rows"], counts))
    parts.append("<h2>Provenance (catalog_info)</h2>")
    parts.append(_table_html(["key", "value"], [[k, v] for k, v in prov.items()]))
    parts.append("</body></html>")
    path = os.path.join(out, "index.html")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write("\n".join(parts))
    os.replace(path + ".tmp", path)
    return path


def make_report(db: str, out: str, announce=print) -> Report:
    if os.path.isfile(out):
        raise UserError(f"--out {out} is a file; give a folder")
    with open_catalog(db) as cat:
        ns = cat.require_counts(min_n=2)
        tops = [n for n in ns if top_table(n) in catalog_tables(ns)]
        cat.require(*[top_table(n) for n in tops])  # the catalog step writes them all at once
        os.makedirs(out, exist_ok=True)
        images: list[str] = []
        notes: list[str] = []
        plot_frac_max(cat, ns, out, images)
        plot_sum_count(cat, ns, out, images)
        plot_zipf(cat, cat.ngrams, out, images)
        covs = [coverage(cat, n) for n in tops]
        plot_coverage(covs, out, images)
        models: dict[str, list[str]] = {}
        for n in tops:
            table = top_table(n)
            cols = model_columns(cat, table)
            if not cols:
                continue
            if not cat.rows(table):
                notes.append(f"{table} has no rows: no model plot")
                continue
            models[table] = cols
            plot_models(cat, n, cols, out, images)
        if not models:
            notes.append("No p_<model> columns yet: run `ngram-dask score` for the model plots.")
        index = write_index(cat, out, images, covs, models, ns, notes)
    for name in images:
        announce(f"  {os.path.join(out, name)}")
    return Report(out=out, index=index, images=images, notes=notes)
