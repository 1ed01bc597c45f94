"""The original project's published layout (``ngram-dask export --layout original``).

One folder per table, each ready to be its own dataset repository (``<prefix><table>`` on
the hub)::

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
Both READMEs carry ``CARD_MARK`` and ``ORIGINAL_MARK``, which is how a later export into
the same folder tells the layouts apart.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass

from ngram_dask.catalog.export_common import (
    CARD_MARK,
    ORIGINAL_MARK,
    SCAN_COLUMNS,
    TableExport,
    column_description,
    context_label,
    md_cell,
    n_of,
    provenance,
    publish,
    size_category,
    table_description,
    write_parquet,
)
from ngram_dask.catalog.reader import CatalogConnection
from ngram_dask.db import scalar
from ngram_dask.errors import UserError
from ngram_dask.lm.models import PYTHIA_SIZES, column_name
from ngram_dask.schema import SCORE_PREFIX, TOOL, is_scan_table
from ngram_dask.storage import sql_identifier

UINT32_MAX = (1 << 32) - 1
# The original stored these two as uint32; its sum_count was uint64 already.
UINT32_COLUMNS = ("count", "max_count")
ORIGINAL_CHUNKS = 64  # the original's id0 % 64, for the cards


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
    return "scan" if is_scan_table(table) else table


def original_columns(table: str, columns: list[str], chunks: int, counts: str = "uint64") -> list[OutColumn]:
    """How ``table`` (with our ``columns``) is written in the original layout, in the original's order;
    columns the original lacked follow in our order."""
    q = sql_identifier
    kind = n_of(table)
    is_scan = is_scan_table(table)
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
            name = SCORE_PREFIX + pythia_size(c)  # the original's p_<size>
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


def _check_uint32(cat: CatalogConnection, table: str, columns: list[str]) -> None:
    """Refuse ``--counts uint32`` when a count of ``table`` does not fit (checked before any writing)."""
    for c in UINT32_COLUMNS:
        if c in columns and n_of(table):
            top = scalar(cat.con, f'SELECT max({sql_identifier(c)}) FROM "{table}"')
            if top is not None and int(top) > UINT32_MAX:
                raise UserError(f"--counts uint32: {table}.{c} reaches {int(top):,}, more than uint32 holds "
                                f"({UINT32_MAX:,}); export with --counts uint64 (the default)")


def original_column_description(table: str, col: OutColumn, chunks: int) -> str:
    if col.name == "id0_chunk":
        return f"id0 % {chunks}: the file (chunk) this row is in (the original: id0 % {ORIGINAL_CHUNKS})"
    if col.name == "JS":
        return SCAN_COLUMNS["sym_kl"] + "; ngram-dask calls it sym_kl"
    if col.name == "start" and is_scan_table(table):
        return ("position of the short window's first token in the sample, as the original counts it "
                "(the long window starts one token earlier)")
    size = pythia_size(col.source or "")
    if size:
        kind = n_of(table)
        n = kind[1] if kind else 2
        return (f"probability EleutherAI/pythia-{size}-deduped gives to id{n - 1} after the prompt "
                f"{context_label(n)} (softmax of the last-position logits, no BOS)")
    return column_description(table, col.source or col.name)


def _differences(table: str, chunks: int, counts: str) -> list[str]:
    """What differs from the original's table, and why: the card's "Differences" section."""
    kind = n_of(table)
    is_scan = is_scan_table(table)
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
        "size_categories": [size_category(te.rows)],
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
        lines.append(f"| `{name}` | {typ} | {md_cell(desc)} |")
    lines += ["", "## Differences from the original", ""]
    lines += [f"- {d}" for d in _differences(te.table, chunks, counts)]
    lines += ["", "## Provenance", "", f"From `catalog_info` of the build (`{TOOL} build`):", "",
              "| key | value |", "|---|---|"]
    for k, v in prov.items():
        lines.append(f"| `{k}` | `{md_cell(v)}` |")
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


def write_original(cat: CatalogConnection, chosen: list[str], out: str, split_rows: int, counts: str,
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
            files = write_parquet(cat, query, os.path.join(tmp, "data"), te.split, cat.chunks if split else None)
            te.files = [f"{table}/data/{f}" for f in files]
            described = [(name, typ, original_column_description(table, col, cat.chunks))
                         for (name, typ), col in zip(types, plan)]
            with open(os.path.join(tmp, "README.md"), "w", encoding="utf-8") as f:
                f.write(original_card(te, described, cat.info, cat.chunks, counts))
        publish(tmp, final, rows)
        announce(f"  {table}: {rows:,} rows -> {table}/ (split {te.split}, {len(te.files)} file(s))" if rows
                 else f"  {table}: no rows, no folder")
        done.append(te)
    return done
