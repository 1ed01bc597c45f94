"""What both export layouts share: table and column descriptions, provenance without
credentials, the Parquet writer, the folder swap and the dataset-card helpers.

Every export is written into a temporary folder beside ``<out>`` and swapped into
place when complete (``publish``), so an interrupted export never leaves a half-written
folder behind. Both layouts' README files carry ``CARD_MARK``; the original layout's
index also carries ``ORIGINAL_MARK``, which is how a later export into the same folder
tells the layouts apart.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from ngram_dask.catalog.reader import CatalogConnection
from ngram_dask.schema import (
    TOOL,
    is_scan_table,
    is_score_column,
    ngram_table,
    prefix_table,
    scan_length,
    score_column_model,
    top_table,
)
from ngram_dask.storage import sql_string

CARD_MARK = f"<!-- written by {TOOL} export -->"
ORIGINAL_MARK = "<!-- layout: original -->"  # in <out>/README.md: which layout the folder holds


@dataclass
class TableExport:
    table: str
    rows: int
    columns: list[tuple[str, str]]  # as exported: (name, DuckDB type)
    files: list[str] = field(default_factory=list)  # relative to the export folder
    split: str = "train"

    @property
    def pattern(self) -> str:
        return f"{self.table}/train-*.parquet"


# --- descriptions --------------------------------------------------------------------------

def _ordinal(j: int) -> str:
    return {0: "first", 1: "second", 2: "third"}.get(j, f"{j + 1}th")


def n_of(table: str) -> tuple[str, int] | None:
    """('ngrams'|'prefixes'|'top', n) for the tables of the build, else None."""
    for n in range(1, 9):
        if table == ngram_table(n):
            return "ngrams", n
        if n >= 2 and table == prefix_table(n):
            return "prefixes", n
        if n >= 2 and table == top_table(n):
            return "top", n
    return None


def table_description(table: str, info: dict[str, str]) -> str:
    kind = n_of(table)
    from ngram_dask.catalog.curves import DESCRIPTIONS

    if table in DESCRIPTIONS:
        return DESCRIPTIONS[table]
    if table == "tokens":
        return ("The vocabulary: `token` is the text of token `id` decoded alone "
                "(`tokenizer.decode([id])`, spaces kept); ids the tokenizer lacks (padding) are ''.")
    seq_len = scan_length(table)
    if seq_len is not None:
        return (f"First-token deletion scan with windows of {seq_len} tokens: positions where one more "
                "token of earlier context (the long window) changes the model's next-token prediction "
                "sharply against the short window; deduplicated on `text`, sorted by p_long desc. "
                "`sym_kl` is the column the original called JS.")
    if kind is None:
        return "A table written by another ngram-dask step."
    what, n = kind
    gram = ngram_table(n)[:-1]
    if what == "ngrams":
        return (f"Every {gram} ({n} consecutive tokens inside one sample) with its number of "
                f"occurrences in the corpus.")
    ctx = ", ".join(f"id{j}" for j in range(n - 1))
    base = (f"For every context ({ctx}) seen in the corpus: how often it is followed by any token "
            f"(`sum_count`), its most frequent next token `id{n - 1}` and that share (`frac_max`).")
    if what == "prefixes":
        return base
    rule = info.get(f"{table}_rule", "frac_max and sum_count above the configured thresholds")
    return (f"The contexts that almost always predict one next token: the rows of `{prefix_table(n)}` "
            f"with {rule}, with each token as text, ordered by frac_max desc then sum_count desc.")


def context_label(n: int) -> str:
    return "id0" if n == 2 else f"id0..id{n - 2}"


SCAN_COLUMNS = {
    "text": "\"[\" + first token of the long window + \"]\" + the short window, decoded",
    "token_short": "the model's most likely next token after the short window, decoded",
    "token_long": "the model's most likely next token after the long window, decoded",
    "p_short": "max of the model's next-token distribution after the short window",
    "p_long": "max of the model's next-token distribution after the long window",
    "sym_kl": "(KL(P_short||P_long) + KL(P_long||P_short)) / 2 in nats (the original's JS column)",
    "js_divergence": "Jensen-Shannon divergence of P_short and P_long in nats, in [0, ln 2]",
    "long_ids": "token ids of the long window (the short window plus one earlier token)",
    "short_max_id": "token id of token_short",
    "long_max_id": "token id of token_long",
    "context": "the long window with 5 more tokens each side, decoded",
    "context_ids": "token ids of context",
    "p_delta_max": "max over tokens of |P_short - P_long|",
    "logit_excite_max": "max over tokens of logits_long - logits_short",
    "logit_inhibit_max": "max over tokens of logits_short - logits_long",
    "batch": "scan batch (consecutive samples of one shard, in dataset order)",
    "sample": "index of the sample in the dataset",
    "start": "position of the long window's first token in the sample",
}


def column_description(table: str, column: str) -> str:
    if is_scan_table(table) and column in SCAN_COLUMNS:
        return SCAN_COLUMNS[column]
    from ngram_dask.catalog.curves import column_description as curve_column

    if curve_column(table, column):
        return curve_column(table, column)
    kind = n_of(table)
    n = kind[1] if kind else None
    m = re.fullmatch(r"id(\d+)", column)
    if m:
        j = int(m.group(1))
        if kind and kind[0] in ("prefixes", "top") and j == n - 1:
            return (f"token id of the most frequent next token after {context_label(n)} "
                    "(the smallest id on ties)")
        return f"token id of the {_ordinal(j)} token"
    m = re.fullmatch(r"token(\d+)", column)
    if m:
        return f"text of id{m.group(1)} (from `tokens`)"
    if is_score_column(column) and n:
        return (f"probability model `{score_column_model(column)}` gives to id{n - 1} after the prompt "
                f"{context_label(n)} (softmax of the last-position logits, no BOS)")
    fixed = {
        ("tokens", "id"): "token id",
        ("tokens", "token"): "the token's text, decoded alone",
        (None, "count"): f"occurrences of the {n}-gram in the corpus" if n else "occurrences",
        (None, "sum_count"): "occurrences of the context followed by any token",
        (None, "max_count"): f"occurrences of the context followed by id{n - 1}" if n else "largest count",
        (None, "frac_max"): "max_count / sum_count: how often the context is followed by its top token",
        (None, "seq"): "the n-gram as text: token0, token1... concatenated",
    }
    return fixed.get((table, column)) or fixed.get((None, column)) or "(not described: written by another step)"


# --- provenance, without credentials -------------------------------------------------------

_SECRET_KEY = re.compile(r"(secret|passw|credential|api[_-]?key|access[_-]?key|auth|(^|_)token$)", re.I)
_URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s\"']+")


def _redact_url(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<url>"
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    # user:password@ and query strings (presigned URLs, SAS tokens) can hold credentials.
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def provenance(info: dict[str, str]) -> dict[str, str]:
    """``catalog_info`` fit to publish: keys that look like secrets dropped, URLs stripped of
    user info and query strings."""
    out = {}
    for key, value in sorted(info.items()):
        if _SECRET_KEY.search(key) and key != "tokenizer":
            continue
        out[key] = _URL.sub(lambda m: _redact_url(m.group(0)), str(value))
    return out


# --- writing (both layouts) ----------------------------------------------------------------

def write_parquet(cat: CatalogConnection, query: str, dest: str, stem: str, chunks: int | None) -> list[str]:
    """Write the rows of ``query`` as ``<dest>/<stem>-00000-of-00001.parquet``, or with
    ``chunks`` as one ``<stem>-<c>-of-<chunks>.parquet`` per ``id0 % chunks = c``; returns the names."""
    os.makedirs(dest)
    opts = "FORMAT parquet, COMPRESSION zstd"
    if not chunks:
        name = f"{stem}-00000-of-00001.parquet"
        cat.con.execute(f"COPY ({query}) TO {sql_string(os.path.join(dest, name))} ({opts})")
        return [name]
    parts = os.path.join(dest, "_parts")
    # One pass over the table; DuckDB writes one hive folder per chunk, without the partition column.
    cat.con.execute(f'COPY (SELECT *, (id0 % {chunks})::INTEGER AS "_part_chunk" FROM ({query})) '
                    f'TO {sql_string(parts)} ({opts}, PARTITION_BY ("_part_chunk"))')
    names = []
    for sub in sorted(os.listdir(parts)):
        chunk = int(sub.split("=", 1)[1])
        files = sorted(f for f in os.listdir(os.path.join(parts, sub)) if f.endswith(".parquet"))
        for j, f in enumerate(files):
            extra = f"-{j}" if j else ""
            name = f"{stem}-{chunk:05d}-of-{chunks:05d}{extra}.parquet"
            os.replace(os.path.join(parts, sub, f), os.path.join(dest, name))
            names.append(name)
    shutil.rmtree(parts)
    return sorted(names)


def publish(tmp: str, final: str, rows: int) -> None:
    """Replace a table's folder with the one just written (none when it has no rows)."""
    if os.path.isdir(final):
        shutil.rmtree(final)
    if rows:
        os.replace(tmp, final)


# --- cards (both layouts) ------------------------------------------------------------------

def md_cell(text: str) -> str:
    """Text fit for one cell of a Markdown table."""
    return text.replace("|", "\\|").replace("\n", " ")


def size_category(rows: int) -> str:
    bounds = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
              (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B"),
              (10_000_000_000, "1B<n<10B"), (100_000_000_000, "10B<n<100B")]
    for bound, name in bounds:
        if rows < bound:
            return name
    return "100B<n<1T"
