"""Export a catalog database as Parquet files with a dataset card, in the Hub's layout.

::

    <out>/README.md                                  dataset card: YAML `configs:` + docs
    <out>/<table>/train-00000-of-00001.parquet       a table in one file, or
    <out>/<table>/train-<c>-of-<K>.parquet           a large table split by id0 % K = c

Each table is one config of the dataset (split ``train``), so all of these load it::

    datasets.load_dataset("<out>", "bigrams")                          # the card's configs
    datasets.load_dataset("parquet", data_dir="<out>/bigrams")
    datasets.load_dataset("parquet", data_files="<out>/bigrams/*.parquet")

and ``huggingface_hub.upload_folder`` (``--push-to-hub``) publishes the folder as is.
Tables with no rows get no files (``datasets`` cannot load a config without data);
the card lists them. ``catalog_info`` goes into the card as provenance, with anything
that looks like a credential left out; ``load_ledger`` is bookkeeping and is not exported.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from .catalog import INFO, LEDGER, Catalog, open_catalog, top_table
from .errors import UserError
from .schema import TOOL, ngram_table, prefix_table
from .storage import sql_string

SPLIT_ROWS = 1_000_000  # tables above this many rows (with an id0 column) are split by id0 % chunks
INTERNAL = {INFO, LEDGER}
CARD_MARK = f"<!-- written by {TOOL} export -->"


@dataclass
class TableExport:
    table: str
    rows: int
    columns: list[tuple[str, str]]
    files: list[str] = field(default_factory=list)  # relative to the export folder

    @property
    def pattern(self) -> str:
        return f"{self.table}/train-*.parquet"


@dataclass
class ExportResult:
    out: str
    tables: list[TableExport]
    card: str
    pushed_to: str | None = None


# --- descriptions --------------------------------------------------------------------------

def _ordinal(j: int) -> str:
    return {0: "first", 1: "second", 2: "third"}.get(j, f"{j + 1}th")


def _n_of(table: str) -> tuple[str, int] | None:
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
    kind = _n_of(table)
    if table == "tokens":
        return ("The vocabulary: `token` is the text of token `id` decoded alone "
                "(`tokenizer.decode([id])`, spaces kept); ids the tokenizer lacks (padding) are ''.")
    m = re.fullmatch(r"scan_(\d+)", table)
    if m:
        return (f"First-token deletion scan with windows of {m.group(1)} tokens: positions where one more "
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


def _context(n: int) -> str:
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
    if re.fullmatch(r"scan_\d+", table) and column in SCAN_COLUMNS:
        return SCAN_COLUMNS[column]
    kind = _n_of(table)
    n = kind[1] if kind else None
    m = re.fullmatch(r"id(\d+)", column)
    if m:
        j = int(m.group(1))
        if kind and kind[0] in ("prefixes", "top") and j == n - 1:
            return (f"token id of the most frequent next token after {_context(n)} "
                    "(the smallest id on ties)")
        return f"token id of the {_ordinal(j)} token"
    m = re.fullmatch(r"token(\d+)", column)
    if m:
        return f"text of id{m.group(1)} (from `tokens`)"
    m = re.fullmatch(r"p_(\w+)", column)
    if m and n:
        return (f"probability model `{m.group(1)}` gives to id{n - 1} after the prompt {_context(n)} "
                "(softmax of the last-position logits, no BOS)")
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


# --- writing -------------------------------------------------------------------------------

def _order(tables: set[str]) -> list[str]:
    def key(t: str):
        kind = _n_of(t)
        rank = {"ngrams": 0, "prefixes": 1, "top": 3}
        if t == "tokens":
            return (2, 0, t)
        if kind:
            return (rank[kind[0]], kind[1], t)
        return (4, 0, t)

    return sorted(tables, key=key)


def _check_out(out: str) -> None:
    if os.path.isfile(out):
        raise UserError(f"--out {out} is a file; give a folder")
    if os.path.isdir(out) and os.listdir(out):
        card = os.path.join(out, "README.md")
        mine = os.path.isfile(card) and CARD_MARK in open(card, encoding="utf-8", errors="replace").read()
        if not mine:
            raise UserError(f"--out {out} is not empty and holds no earlier {TOOL} export; "
                            "choose an empty or new folder")


def _copy_table(cat: Catalog, table: str, dest: str, split: bool) -> list[str]:
    """Write ``table`` as Parquet under ``dest``; returns the file names."""
    os.makedirs(dest)
    q = f'SELECT * FROM "{table}"'
    opts = "FORMAT parquet, COMPRESSION zstd"
    if not split:
        name = "train-00000-of-00001.parquet"
        cat.con.execute(f"COPY ({q}) TO {sql_string(os.path.join(dest, name))} ({opts})")
        return [name]
    k = cat.chunks
    parts = os.path.join(dest, "_parts")
    # One pass over the table; DuckDB writes one hive folder per chunk (without the column).
    cat.con.execute(f"COPY (SELECT *, (id0 % {k})::INTEGER AS id0_chunk FROM \"{table}\") "
                    f"TO {sql_string(parts)} ({opts}, PARTITION_BY (id0_chunk))")
    names = []
    for sub in sorted(os.listdir(parts)):
        chunk = int(sub.split("=", 1)[1])
        files = sorted(f for f in os.listdir(os.path.join(parts, sub)) if f.endswith(".parquet"))
        for j, f in enumerate(files):
            extra = f"-{j}" if j else ""
            name = f"train-{chunk:05d}-of-{k:05d}{extra}.parquet"
            os.replace(os.path.join(parts, sub, f), os.path.join(dest, name))
            names.append(name)
    shutil.rmtree(parts)
    return sorted(names)


def export_catalog(db: str, out: str, tables: list[str] | None = None, split_rows: int = SPLIT_ROWS,
                   announce=print) -> ExportResult:
    if split_rows < 0:
        raise UserError(f"--split-rows must be >= 0, got {split_rows}")
    _check_out(out)
    with open_catalog(db) as cat:
        for n in cat.ngrams:  # every count table the build recorded must be there
            cat.require(ngram_table(n), *([prefix_table(n)] if n >= 2 else []))
        available = cat.tables - INTERNAL
        if not available:
            raise UserError(f"database {db} holds no table to export: run `ngram-dask build` first")
        if tables:
            cat.require(*tables)
            chosen = [t for t in _order(available) if t in set(tables)]
        else:
            chosen = _order(available)
        os.makedirs(out, exist_ok=True)
        done: list[TableExport] = []
        for table in chosen:
            cols = cat.columns(table)
            rows = cat.rows(table)
            te = TableExport(table, rows, cols)
            final = os.path.join(out, table)
            tmp = os.path.join(out, f".{table}.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            if rows:
                split = rows > split_rows and cat.chunks > 1 and any(c == "id0" for c, _ in cols)
                files = _copy_table(cat, table, tmp, split)
                te.files = [f"{table}/{f}" for f in files]
            if os.path.isdir(final):
                shutil.rmtree(final)
            if rows:
                os.replace(tmp, final)
            announce(f"  {table}: {rows:,} rows -> {len(te.files)} file(s)" if rows
                     else f"  {table}: no rows, no files")
            done.append(te)
        card = dataset_card(cat.info, done, db)
    card_path = os.path.join(out, "README.md")
    with open(card_path + ".tmp", "w", encoding="utf-8") as f:
        f.write(card)
    os.replace(card_path + ".tmp", card_path)
    return ExportResult(out=out, tables=done, card=card_path)


def dataset_card(info: dict[str, str], tables: list[TableExport], db: str) -> str:
    import yaml

    prov = provenance(info)
    exported = [t for t in tables if t.files]
    default = next((t.table for t in exported if t.table.startswith("top_")), exported[0].table if exported else None)
    configs = []
    for t in exported:
        c = {"config_name": t.table}
        if t.table == default:
            c["default"] = True
        c["data_files"] = [{"split": "train", "path": t.pattern}]
        configs.append(c)
    header = {
        "pretty_name": f"n-gram catalog of {os.path.basename(prov.get('input', '').rstrip('/')) or 'a corpus'}",
        "tags": ["n-grams", "tokenized", TOOL],
        "size_categories": [_size_category(max((t.rows for t in tables), default=0))],
        "configs": configs,
    }
    lines = ["---", yaml.safe_dump(header, sort_keys=False, allow_unicode=True).rstrip(), "---", CARD_MARK, ""]
    lines += [
        f"# {header['pretty_name']}",
        "",
        f"Exact token n-gram statistics of a tokenized corpus, built by `{TOOL}` "
        f"(tokenizer `{prov.get('tokenizer', 'unknown')}`): {int(prov.get('tokens', 0) or 0):,} tokens in "
        f"{int(prov.get('samples', 0) or 0):,} samples. An n-gram is n consecutive tokens inside one sample.",
        "",
        "Each table is a config (split `train`):",
        "",
        "```python",
        "from datasets import load_dataset",
        f"ds = load_dataset(\"<this repo or folder>\", \"{default or 'bigrams'}\")",
        f"# or: load_dataset(\"parquet\", data_dir=\"<folder>/{default or 'bigrams'}\")",
        "```",
        "",
        "| table | rows | files | what it holds |",
        "|---|---:|---:|---|",
    ]
    for t in tables:
        lines.append(f"| `{t.table}` | {t.rows:,} | {len(t.files)} | {_cell(table_description(t.table, info))} |")
    chunks = prov.get("chunks", "?")
    lines += ["", f"Large tables are split into one file per `id0 % {chunks}` "
                  f"(`train-<c>-of-<{chunks}>.parquet` holds the rows with `id0 % {chunks} = c`); "
                  "within a table, rows are in no particular order unless stated. "
                  "Tables with no rows have no files and no config.", ""]
    for t in tables:
        lines += [f"## `{t.table}`", "", table_description(t.table, info), "",
                  f"{t.rows:,} rows" + (f" in {len(t.files)} file(s): `{t.pattern}`" if t.files else ", no files"),
                  "", "| column | type | description |", "|---|---|---|"]
        for name, typ in t.columns:
            lines.append(f"| `{name}` | {typ} | {_cell(column_description(t.table, name))} |")
        lines.append("")
    lines += ["## Provenance", "", f"From `catalog_info` of the build (`{TOOL} build`):", "",
              "| key | value |", "|---|---|"]
    for k, v in prov.items():
        lines.append(f"| `{k}` | `{_cell(v)}` |")
    lines.append("")
    return "\n".join(lines)


def _cell(text: str) -> str:
    """Text fit for one cell of a Markdown table."""
    return text.replace("|", "\\|").replace("\n", " ")


def _size_category(rows: int) -> str:
    bounds = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
              (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B"),
              (10_000_000_000, "1B<n<10B"), (100_000_000_000, "10B<n<100B")]
    for bound, name in bounds:
        if rows < bound:
            return name
    return "100B<n<1T"


def check_hub_token() -> str:
    """The Hugging Face token to push with, or a one-line error (checked before any work)."""
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise UserError("--push-to-hub needs the network, but HF_HUB_OFFLINE=1")
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise UserError("--push-to-hub needs a Hugging Face token with write access: set HF_TOKEN "
                        "or run `huggingface-cli login`")
    return token


def push_to_hub(out: str, repo_id: str, token: str, private: bool = False, announce=print) -> str:
    """Upload the export folder as a dataset repo (created if missing); returns its URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        api.upload_folder(folder_path=out, repo_id=repo_id, repo_type="dataset",
                          commit_message=f"{TOOL} export", ignore_patterns=[".*"])
    except Exception as exc:  # network, permission, bad repo id: the user can fix these
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot push {out} to the hub as {repo_id}: {first}") from None
    announce(f"pushed to {url}")
    return str(url)
