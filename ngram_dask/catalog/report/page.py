"""The report's ``index.html``: the plots with their captions, the coverage table and example
tasks, tokens drawn with their whitespace marked."""

from __future__ import annotations

import datetime as dt
import html
import os

from ngram_dask.catalog.export_common import provenance
from ngram_dask.catalog.reader import CatalogConnection
from ngram_dask.catalog.report.data import model_labels
from ngram_dask.schema import (
    ngram_table,
    prefix_table,
    top_table,
)

# ------------------------------------------------------------------------------

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


def _examples(cat: CatalogConnection, n: int, models: list[str], limit: int = 20) -> str:
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


def write_index(cat: CatalogConnection, out: str, images: list[str], covs: list[dict], models: dict[str, list[str]],
                ns: list[int], notes: list[str], extra_html: str = "") -> str:
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
    parts.append(extra_html)
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
