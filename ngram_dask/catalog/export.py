"""Export a catalog database as Parquet files with a dataset card, in the Hub's layout.

::

    <out>/README.md                                  dataset card: YAML `configs:` + docs
    <out>/<table>/train-00000-of-00001.parquet       a table in one file, or
    <out>/<table>/train-<c>-of-<K>.parquet           a large table split by id0 % K = c

Each table is one config of the dataset (split ``train``), so all of these load it::

    datasets.load_dataset("<out>", "bigrams")                          # the card's configs
    datasets.load_dataset("parquet", data_dir="<out>/bigrams")
    datasets.load_dataset("parquet", data_files="<out>/bigrams/*.parquet")

and ``huggingface_hub.upload_folder`` (``--push-to-hub``, ``ngram_dask.catalog.hub``)
publishes the folder as is. Tables with no rows get no files (``datasets`` cannot load a
config without data); the card lists them. ``catalog_info`` goes into the card as
provenance, with anything that looks like a credential left out; ``load_ledger`` is
bookkeeping and is not exported.

``layout="original"`` writes what the original project published instead, one dataset
folder per table: see ``ngram_dask.catalog.export_original``. An export goes into an empty
or new folder, or over an earlier export of the same layout.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

from ngram_dask.catalog import export_common as common
from ngram_dask.catalog.export_common import TableExport
from ngram_dask.catalog.export_original import original_index, write_original
from ngram_dask.catalog.reader import CatalogConnection, open_catalog
from ngram_dask.config import ExportConfig
from ngram_dask.errors import UserError
from ngram_dask.schema import INFO, LEDGER, TOOL, ngram_table, prefix_table

SPLIT_ROWS = ExportConfig.split_rows  # tables above this many rows (with an id0 column) are split by id0 % chunks
INTERNAL = {INFO, LEDGER}
LAYOUTS = ("default", "original")
COUNT_TYPES = ("uint64", "uint32")


@dataclass
class ExportResult:
    out: str
    tables: list[TableExport]
    card: str
    pushed_to: str | None = None
    layout: str = "default"


# --- the export folder ---------------------------------------------------------------------

def _order(tables: set[str]) -> list[str]:
    def key(t: str):
        kind = common.n_of(t)
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
    if common.CARD_MARK not in text:
        return None
    return "original" if common.ORIGINAL_MARK in text else "default"


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
            done = write_original(cat, chosen, out, split_rows, counts, announce)
            card = original_index(done, counts)
        else:
            done = _export_default(cat, chosen, out, split_rows, announce)
            card = dataset_card(cat.info, done)
    card_path = os.path.join(out, "README.md")
    with open(card_path + ".tmp", "w", encoding="utf-8") as f:
        f.write(card)
    os.replace(card_path + ".tmp", card_path)
    return ExportResult(out=out, tables=done, card=card_path, layout=layout)


def _export_default(cat: CatalogConnection, chosen: list[str], out: str, split_rows: int,
                    announce) -> list[TableExport]:
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
            files = common.write_parquet(cat, f'SELECT * FROM "{table}"', tmp, "train", cat.chunks if split else None)
            te.files = [f"{table}/{f}" for f in files]
        common.publish(tmp, final, rows)
        announce(f"  {table}: {rows:,} rows -> {len(te.files)} file(s)" if rows
                 else f"  {table}: no rows, no files")
        done.append(te)
    return done


def dataset_card(info: dict[str, str], tables: list[TableExport]) -> str:
    import yaml

    prov = common.provenance(info)
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
        "size_categories": [common.size_category(max((t.rows for t in tables), default=0))],
        "configs": configs,
    }
    lines = ["---", yaml.safe_dump(header, sort_keys=False, allow_unicode=True).rstrip(), "---", common.CARD_MARK, ""]
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
        about = common.md_cell(common.table_description(t.table, info))
        lines.append(f"| `{t.table}` | {t.rows:,} | {len(t.files)} | {about} |")
    chunks = prov.get("chunks", "?")
    lines += ["", f"Large tables are split into one file per `id0 % {chunks}` "
                  f"(`train-<c>-of-<{chunks}>.parquet` holds the rows with `id0 % {chunks} = c`); "
                  "within a table, rows are in no particular order unless stated. "
                  "Tables with no rows have no files and no config.", ""]
    for t in tables:
        lines += [f"## `{t.table}`", "", common.table_description(t.table, info), "",
                  f"{t.rows:,} rows" + (f" in {len(t.files)} file(s): `{t.pattern}`" if t.files else ", no files"),
                  "", "| column | type | description |", "|---|---|---|"]
        for name, typ in t.columns:
            lines.append(f"| `{name}` | {typ} | {common.md_cell(common.column_description(t.table, name))} |")
        lines.append("")
    lines += ["## Provenance", "", f"From `catalog_info` of the build (`{TOOL} build`):", "",
              "| key | value |", "|---|---|"]
    for k, v in prov.items():
        lines.append(f"| `{k}` | `{common.md_cell(v)}` |")
    lines.append("")
    return "\n".join(lines)
