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

import os
from dataclasses import dataclass, field

from ngram_dask.catalog.reader import open_catalog
from ngram_dask.catalog.report.data import coverage, model_columns
from ngram_dask.catalog.report.page import write_index
from ngram_dask.catalog.report.plots import plot_coverage, plot_frac_max, plot_models, plot_sum_count, plot_zipf
from ngram_dask.errors import UserError
from ngram_dask.schema import catalog_tables, top_table

__all__ = ["Report", "make_report"]


@dataclass
class Report:
    out: str
    index: str
    images: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def make_report(db: str, out: str, announce=print) -> Report:
    if os.path.isfile(out):
        raise UserError(f"--out {out} is a file; give a folder")
    with open_catalog(db) as cat:
        ns = cat.require_counts(min_n=2)
        tops = [n for n in ns if top_table(n) in catalog_tables(ns)]
        cat.require(*[top_table(n) for n in tops])  # the top step writes them all at once
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
        from ngram_dask.catalog.curves import report_section
        from ngram_dask.catalog.report.plots import _plt

        curve_images, curve_html = report_section(cat, out, _plt())
        index = write_index(cat, out, images, covs, models, ns, notes, curve_html)
        images += curve_images
    for name in images:
        announce(f"  {os.path.join(out, name)}")
    return Report(out=out, index=index, images=images, notes=notes)
