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

``layout="original"`` writes what the original project published instead: one folder per
table, each ready to be its own dataset repository (``<prefix><table>`` on the hub)::

    <out>/README.md                                       index of the folders (not a dataset)
    <out>/<table>/README.md                               the table's dataset card: one config,
                                                          one split named after the table
    <out>/<table>/data/<split>-00000-of-00001.parquet     a table in one file, or
    <out>/<table>/data/<split>-<c>-of-<K>.parquet         split by id0 % K = c

The split is the table's name (``scan`` for ``scan_<L>``, as the original named it), so
``datasets.load_dataset("<out>/<table>", split="<split>")`` loads it, with the original's
column names and order: ``p_<size>`` for the Pythia deduped models, ``id0_chunk`` (int32,
``id0 % K``) on the n-gram tables, ``JS`` for ``sym_kl`` and the original's ``start`` (the
short window's first token) on the scan. Counts stay uint64 unless ``counts="uint32"``.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from ngram_dask.catalog.reader import OpenCatalog, open_catalog
from ngram_dask.errors import UserError
from ngram_dask.lm.models import PYTHIA_SIZES, column_name
from ngram_dask.schema import INFO, LEDGER, TOOL, ngram_table, prefix_table, top_table
from ngram_dask.storage import sql_identifier, sql_string

SPLIT_ROWS = 1_000_000  # tables above this many rows (with an id0 column) are split by id0 % chunks
INTERNAL = {INFO, LEDGER}
CARD_MARK = f"<!-- written by {TOOL} export -->"
ORIGINAL_MARK = "<!-- layout: original -->"  # in <out>/README.md: which layout the folder holds
LAYOUTS = ("default", "original")
COUNT_TYPES = ("uint64", "uint32")
UINT32_MAX = (1 << 32) - 1
# The original stored these two as uint32; its sum_count was uint64 already.
UINT32_COLUMNS = ("count", "max_count")
ORIGINAL_CHUNKS = 64  # the original's id0 % 64, for the cards


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


@dataclass
class ExportResult:
    out: str
    tables: list[TableExport]
    card: str
    pushed_to: str | None = None
    layout: str = "default"


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


def _existing_layout(out: str) -> str | None:
    """The layout of an earlier export in ``out`` (from its README.md), None if there is none."""
    card = os.path.join(out, "README.md")
    if not os.path.isfile(card):
        return None
    text = open(card, encoding="utf-8", errors="replace").read()
    if CARD_MARK not in text:
        return None
    return "original" if ORIGINAL_MARK in text else "default"


def _check_out(out: str, layout: str = "default") -> None:
    if os.path.isfile(out):
        raise UserError(f"--out {out} is a file; give a folder")
    if os.path.isdir(out) and os.listdir(out):
        earlier = _existing_layout(out)
        if earlier is None:
            raise UserError(f"--out {out} is not empty and holds no earlier {TOOL} export; "
                            "choose an empty or new folder")
        if earlier != layout:
            # Mixing both layouts' folders in one place would leave tables of the other behind.
            raise UserError(f"--out {out} holds an export with --layout {earlier}; "
                            f"write --layout {layout} into another folder")


def _write_parquet(cat: OpenCatalog, query: str, dest: str, stem: str, chunks: int | None) -> list[str]:
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


# --- the original's layout -----------------------------------------------------------------

@dataclass(frozen=True)
class OutColumn:
    """One column of a table in the original layout."""

    name: str           # its name in the export
    sql: str            # a DuckDB expression over our table that gives it
    source: str | None  # our column it comes from (None: derived, like id0_chunk)


# The original's scan columns, in its order; ngram-dask calls JS sym_kl (see original_columns for start).
ORIGINAL_SCAN = ("text", "token_short", "token_long", "p_short", "p_long", "JS", "long_ids", "short_max_id",
                 "long_max_id", "context", "context_ids", "p_delta_max", "logit_excite_max",
                 "logit_inhibit_max", "batch", "sample", "start")
_SCAN_SOURCE = {"JS": "sym_kl"}
_SCAN_INT64 = ("short_max_id", "long_max_id", "batch", "sample", "start")  # the original's int64 columns


def pythia_size(column: str) -> str | None:
    """``p_pythia_1_4b_deduped`` -> ``"1.4b"``: the Pythia deduped model a score column is for, else None."""
    for size in PYTHIA_SIZES:
        if column == column_name(size):
            return size
    return None


def original_split(table: str) -> str:
    """The split name the original used for a table: its name, except ``scan`` for ``scan_<L>``."""
    return "scan" if re.fullmatch(r"scan_\d+", table) else table


def original_columns(table: str, columns: list[str], chunks: int, counts: str = "uint64") -> list[OutColumn]:
    """How ``table`` (with our ``columns``) is written in the original layout, in the original's order;
    columns the original lacked follow in our order."""
    q = sql_identifier
    kind = _n_of(table)
    is_scan = re.fullmatch(r"scan_\d+", table) is not None
    if is_scan:
        wanted = [_SCAN_SOURCE.get(c, c) for c in ORIGINAL_SCAN]
        head = [c for c in wanted if c in columns]
    else:
        def rank(c: str):
            for r, pattern in enumerate([r"id(\d+)", r"(count)", r"(sum_count)", r"(max_count)", r"(frac_max)",
                                         r"token(\d+)", r"(seq)"]):
                m = re.fullmatch(pattern, c)
                if m:
                    return (r, int(m.group(1)) if m.group(1).isdigit() else 0)
            size = pythia_size(c)
            return (7, PYTHIA_SIZES.index(size)) if size else None

        head = sorted((c for c in columns if rank(c) is not None), key=rank)
    out: list[OutColumn] = []
    for c in head + [c for c in columns if c not in head]:
        expr, name = q(c), c
        if is_scan and c == "sym_kl":
            name = "JS"
        elif is_scan and c == "start":
            expr = f"({q(c)} + 1)::BIGINT"  # ours is the long window's first token, the original's the short one's
        elif is_scan and c in _SCAN_INT64:
            expr = f"{q(c)}::BIGINT"
        elif pythia_size(c):
            name = f"p_{pythia_size(c)}"
        elif counts == "uint32" and c in UINT32_COLUMNS and kind:
            expr = f"{q(c)}::UINTEGER"
        out.append(OutColumn(name, f"{expr} AS {q(name)}", c))
        if c == "count" and kind and kind[0] == "ngrams":
            out.append(OutColumn("id0_chunk", f"(id0 % {chunks})::INTEGER AS id0_chunk", None))
    names = [o.name for o in out]
    clash = next((n for n in names if names.count(n) > 1), None)
    if clash:
        raise UserError(f"table {table} would get two columns named {clash} in the original layout; "
                        "rename one (or export with --layout default)")
    return out


def _check_uint32(cat: OpenCatalog, table: str, columns: list[str]) -> None:
    """Refuse ``--counts uint32`` when a count of ``table`` does not fit (checked before any writing)."""
    for c in UINT32_COLUMNS:
        if c in columns and _n_of(table):
            top = cat.con.execute(f'SELECT max({sql_identifier(c)}) FROM "{table}"').fetchone()[0]
            if top is not None and int(top) > UINT32_MAX:
                raise UserError(f"--counts uint32: {table}.{c} reaches {int(top):,}, more than uint32 holds "
                                f"({UINT32_MAX:,}); export with --counts uint64 (the default)")


def original_column_description(table: str, col: OutColumn, chunks: int) -> str:
    if col.name == "id0_chunk":
        return f"id0 % {chunks}: the file (chunk) this row is in (the original: id0 % {ORIGINAL_CHUNKS})"
    if col.name == "JS":
        return SCAN_COLUMNS["sym_kl"] + "; ngram-dask calls it sym_kl"
    if col.name == "start" and re.fullmatch(r"scan_\d+", table):
        return ("position of the short window's first token in the sample, as the original counts it "
                "(the long window starts one token earlier)")
    size = pythia_size(col.source or "")
    if size:
        kind = _n_of(table)
        n = kind[1] if kind else 2
        return (f"probability EleutherAI/pythia-{size}-deduped gives to id{n - 1} after the prompt "
                f"{_context(n)} (softmax of the last-position logits, no BOS)")
    return column_description(table, col.source or col.name)


def _differences(table: str, chunks: int, counts: str) -> list[str]:
    """What differs from the original's table, and why: the card's "Differences" section."""
    kind = _n_of(table)
    is_scan = re.fullmatch(r"scan_\d+", table) is not None
    out = []
    if kind and kind[0] in ("prefixes", "top"):
        out.append(f"**Ties go to the smallest id.** When several next tokens share the largest count, "
                   f"`id{kind[1] - 1}` is the smallest of them; the original's `ARG_MAX` picked any one, "
                   "so two of its builds could differ. Here every build gives the same rows.")
    if table == "tokens" or is_scan or (kind and kind[0] == "top"):
        out.append("**Exact token strings.** Tokens are decoded without the tokenizer's clean-up of spaces, "
                   "so `\" ,\"` stays `\" ,\"` and `seq`/`text` are exactly the corpus's text; the original "
                   "decoded with the default clean-up, which turned `\" ,\"` into `\",\"`.")
    if kind or is_scan:
        effect = ("the scan covers positions the original's did not" if is_scan else
                  "counts can be slightly larger than the original's for the same corpus")
        out.append("**Tails of shards kept.** Every sample of every shard is read, including the last ones "
                   f"of each shard that the original's batched reader left out, so {effect}.")
    if kind:
        if counts == "uint32":
            out.append("**Counts as uint32**, as in the original (`--counts uint32`, checked to fit); "
                       "`sum_count` is uint64 in both.")
        else:
            out.append("**Counts are uint64.** The original stored `count` and `max_count` as uint32, which "
                       "overflows for the most frequent n-grams at Pile scale; `--counts uint32` gives the "
                       "original's type when every count fits.")
    if kind and kind[0] == "ngrams":
        out.append(f"**`id0_chunk` is `id0 % {chunks}`**, the chunks of this build; the original used "
                   f"`id0 % {ORIGINAL_CHUNKS}`. Files are split by it when the table is large.")
    if kind and kind[0] == "top":
        out.append("**Score columns** (once `ngram-dask score` has run): `p_<size>` are the Pythia "
                   "deduped models, named and ordered as in the original; scores of other models keep "
                   "ngram-dask's `p_<model>` names, after them.")
    if is_scan:
        out.append("**Scan columns.** `JS` is the symmetrised KL divergence the original computed under "
                   "that name (ngram-dask's `sym_kl`); `js_divergence`, the true Jensen-Shannon divergence, "
                   "is an extra column. `start` is converted to the original's meaning (the short window's "
                   "first token). `sample` and `batch` are ngram-dask's: `sample` indexes the whole "
                   "dataset in `index.json` order and `batch` numbers runs of consecutive samples of one "
                   "shard, which the original counted differently (see docs/scan.md).")
    if table == "tokens":
        out.append("**An extra table.** The vocabulary as ngram-dask decodes it, for turning ids into text.")
    return out


def original_card(te: TableExport, described: list[tuple[str, str, str]], info: dict[str, str],
                  chunks: int, counts: str) -> str:
    """The dataset card of one table's folder: one config whose split is the table's split name."""
    import yaml

    prov = provenance(info)
    header = {
        "pretty_name": f"{te.table} of {os.path.basename(prov.get('input', '').rstrip('/')) or 'a corpus'}",
        "tags": ["n-grams", "tokenized", TOOL],
        "size_categories": [_size_category(te.rows)],
        "configs": [{"config_name": "default", "default": True,
                     "data_files": [{"split": te.split, "path": f"data/{te.split}-*"}]}],
    }
    lines = ["---", yaml.safe_dump(header, sort_keys=False, allow_unicode=True).rstrip(), "---",
             CARD_MARK, ORIGINAL_MARK, "",
             f"# {te.table}", "",
             table_description(te.table, info), "",
             f"{te.rows:,} rows in {len(te.files)} file(s) under `data/`, split `{te.split}`, "
             f"in the layout of the original project's published tables. Written by `{TOOL} export "
             f"--layout original` (tokenizer `{prov.get('tokenizer', 'unknown')}`).", "",
             "```python",
             "from datasets import load_dataset",
             f"ds = load_dataset(\"<this repo or folder>\", split=\"{te.split}\")",
             "```", "",
             "| column | type | description |", "|---|---|---|"]
    for name, typ, desc in described:
        lines.append(f"| `{name}` | {typ} | {_cell(desc)} |")
    lines += ["", "## Differences from the original", ""]
    lines += [f"- {d}" for d in _differences(te.table, chunks, counts)]
    lines += ["", "## Provenance", "", f"From `catalog_info` of the build (`{TOOL} build`):", "",
              "| key | value |", "|---|---|"]
    for k, v in prov.items():
        lines.append(f"| `{k}` | `{_cell(v)}` |")
    lines.append("")
    return "\n".join(lines)


def original_index(tables: list[TableExport], counts: str) -> str:
    """``<out>/README.md`` of the original layout: what each folder holds. Not a dataset card."""
    lines = [f"# {TOOL} export in the original's layout", "", CARD_MARK, ORIGINAL_MARK, "",
             "Each folder is one dataset repository with one split; "
             "`ngram-dask export --layout original --push-to-hub <prefix>` pushes folder `<table>` "
             "to the repository `<prefix><table>`.", "",
             f"Counts: {counts}.", "",
             "| folder | split | rows | files |", "|---|---|---:|---:|"]
    for t in tables:
        if t.files:
            lines.append(f"| `{t.table}/` | `{t.split}` | {t.rows:,} | {len(t.files)} |")
        else:
            lines.append(f"| (`{t.table}`: no rows, no folder) | | 0 | 0 |")
    lines.append("")
    return "\n".join(lines)


def _export_original(cat: OpenCatalog, chosen: list[str], out: str, split_rows: int, counts: str,
                     announce) -> list[TableExport]:
    plans = {}
    for table in chosen:  # every check before the first file is written
        cols = [c for c, _ in cat.columns(table)]
        plans[table] = original_columns(table, cols, cat.chunks, counts)
        if counts == "uint32":
            _check_uint32(cat, table, cols)
    done: list[TableExport] = []
    for table in chosen:
        plan = plans[table]
        query = f"SELECT {', '.join(c.sql for c in plan)} FROM {sql_identifier(table)}"
        types = [(r[0], r[1]) for r in cat.con.execute(f"DESCRIBE {query}").fetchall()]
        rows = cat.rows(table)
        te = TableExport(table, rows, types, split=original_split(table))
        final = os.path.join(out, table)
        tmp = os.path.join(out, f".{table}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        if rows:
            split = rows > split_rows and cat.chunks > 1 and any(c.name == "id0" for c in plan)
            files = _write_parquet(cat, query, os.path.join(tmp, "data"), te.split, cat.chunks if split else None)
            te.files = [f"{table}/data/{f}" for f in files]
            described = [(name, typ, original_column_description(table, col, cat.chunks))
                         for (name, typ), col in zip(types, plan)]
            with open(os.path.join(tmp, "README.md"), "w", encoding="utf-8") as f:
                f.write(original_card(te, described, cat.info, cat.chunks, counts))
        _publish(tmp, final, rows)
        announce(f"  {table}: {rows:,} rows -> {table}/ (split {te.split}, {len(te.files)} file(s))" if rows
                 else f"  {table}: no rows, no folder")
        done.append(te)
    return done


def _publish(tmp: str, final: str, rows: int) -> None:
    """Replace a table's folder with the one just written (none when it has no rows)."""
    if os.path.isdir(final):
        shutil.rmtree(final)
    if rows:
        os.replace(tmp, final)


# --- export --------------------------------------------------------------------------------

def export_catalog(db: str, out: str, tables: list[str] | None = None, split_rows: int = SPLIT_ROWS,
                   announce=print, layout: str = "default", counts: str = "uint64") -> ExportResult:
    if split_rows < 0:
        raise UserError(f"--split-rows must be >= 0, got {split_rows}")
    if layout not in LAYOUTS:
        raise UserError(f"unknown --layout {layout!r}: use {' or '.join(LAYOUTS)}")
    if counts not in COUNT_TYPES:
        raise UserError(f"unknown --counts {counts!r}: use {' or '.join(COUNT_TYPES)}")
    if counts != "uint64" and layout != "original":
        raise UserError(f"--counts {counts} is for --layout original (the default layout keeps uint64)")
    _check_out(out, layout)
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
        if layout == "original":
            done = _export_original(cat, chosen, out, split_rows, counts, announce)
            card = original_index(done, counts)
        else:
            done = _export_default(cat, chosen, out, split_rows, announce)
            card = dataset_card(cat.info, done, db)
    card_path = os.path.join(out, "README.md")
    with open(card_path + ".tmp", "w", encoding="utf-8") as f:
        f.write(card)
    os.replace(card_path + ".tmp", card_path)
    return ExportResult(out=out, tables=done, card=card_path, layout=layout)


def _export_default(cat: OpenCatalog, chosen: list[str], out: str, split_rows: int, announce) -> list[TableExport]:
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
            files = _write_parquet(cat, f'SELECT * FROM "{table}"', tmp, "train", cat.chunks if split else None)
            te.files = [f"{table}/{f}" for f in files]
        _publish(tmp, final, rows)
        announce(f"  {table}: {rows:,} rows -> {len(te.files)} file(s)" if rows
                 else f"  {table}: no rows, no files")
        done.append(te)
    return done


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


@dataclass(frozen=True)
class HubTarget:
    """One upload: the folder ``folder`` becomes the dataset repository ``repo_id``."""

    folder: str
    repo_id: str


def _check_repo_id(repo_id: str, what: str) -> None:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        first = str(exc).strip().splitlines()[0]
        raise UserError(f"--push-to-hub {what}: {first}") from None


def check_hub_name(name: str, layout: str) -> None:
    """Refuse a bad ``--push-to-hub`` value before any work: a repo id (default layout) or a
    prefix that every ``<prefix><table>`` repo id starts with (original layout)."""
    if layout != "original":
        _check_repo_id(name, f"{name!r} is not a repository id")
        return
    if not name or name == "/":
        raise UserError("--push-to-hub needs a prefix for the repositories with --layout original, "
                        "e.g. me/pile_ (gives me/pile_bigrams, me/pile_top_trigrams, ...)")
    # The longest name the catalog's own tables give: if it passes, every table's id does.
    _check_repo_id(name + prefix_table(3), f"prefix {name!r} gives no valid repository id")


def hub_plan(result: ExportResult, name: str) -> list[HubTarget]:
    """Which folder goes to which repository: the whole export as ``name`` (default layout), or
    each table's folder as ``<name><table>`` (original layout; tables without rows have no folder)."""
    if result.layout != "original":
        _check_repo_id(name, f"{name!r} is not a repository id")
        return [HubTarget(result.out, name)]
    plan = []
    for t in result.tables:
        if t.files:
            repo_id = name + t.table
            _check_repo_id(repo_id, f"prefix {name!r} gives the invalid id {repo_id!r}")
            plan.append(HubTarget(os.path.join(result.out, t.table), repo_id))
    if not plan:
        raise UserError(f"--push-to-hub: the export in {result.out} has no table with rows to push")
    return plan


def push_plan(plan: list[HubTarget], token: str, private: bool = False, announce=print) -> list[str]:
    """Upload every target of ``plan`` in order; returns the repositories' URLs. A failure names
    the repositories already pushed, so the user knows what a rerun repeats."""
    urls: list[str] = []
    for target in plan:
        try:
            urls.append(push_to_hub(target.folder, target.repo_id, token, private=private, announce=announce))
        except UserError as exc:
            done = f" (already pushed: {', '.join(t.repo_id for t in plan[:len(urls)])})" if urls else ""
            raise UserError(f"{exc}{done}") from None
    return urls


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
