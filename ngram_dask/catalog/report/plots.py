"""The report's PNG plots, one function per figure, each drawing what ``report.data`` computed."""

from __future__ import annotations

import math
import os

from ngram_dask.catalog.reader import CatalogConnection
from ngram_dask.catalog.report.data import (
    BINS,
    counts_by_rank,
    frac_hist,
    log_hist,
    model_hist,
    model_labels,
    model_means,
    threshold,
)
from ngram_dask.schema import (
    ngram_table,
    prefix_table,
    top_table,
)


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


# ---------------------------------------------------------------------------------

def plot_frac_max(cat: CatalogConnection, ns: list[int], out: str, images: list[str]) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, len(ns), figsize=(6.2 * len(ns), 4.2), squeeze=False)
    for ax, n in zip(axes[0], ns):
        table = prefix_table(n)
        bins, contexts, occ = frac_hist(cat, table)
        edges = [b / BINS for b in range(BINS + 1)]
        tc, to = max(sum(contexts), 1), max(sum(occ), 1)
        ax.stairs([c / tc for c in contexts], edges, fill=True, alpha=0.45, label="share of contexts")
        ax.stairs([o / to for o in occ], edges, linewidth=2, label="share of occurrences (by sum_count)")
        th = threshold(cat.info, n)
        if th is not None:
            ax.axvline(th, color="black", linestyle="--", linewidth=1, label=f"{top_table(n)} threshold {th:g}")
        ax.set_title(f"{table}: how predictable is the next token?")
        ax.set_xlabel("frac_max = count of the top follower / sum_count")
        ax.set_ylabel("share per bin of width 0.02")
        ax.set_xlim(0, 1)
        ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    _save(fig, out, "frac_max.png", images)


def plot_sum_count(cat: CatalogConnection, ns: list[int], out: str, images: list[str]) -> None:
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


def plot_zipf(cat: CatalogConnection, ns: list[int], out: str, images: list[str]) -> None:
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


def plot_models(cat: CatalogConnection, n: int, models: list[str], out: str, images: list[str]) -> None:
    import numpy as np

    plt = _plt()
    from matplotlib.colors import LogNorm

    table = top_table(n)
    low = min(0.5, threshold(cat.info, n) or 0.5)
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
