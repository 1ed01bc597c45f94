"""``ngram-dask export --tasks``: one prompt set per task family, for feeding a model.

::

    <out>/bigram_prompts.parquet   <out>/bigram_prompts.jsonl     from top_bigrams
    <out>/trigram_prompts.parquet  <out>/trigram_prompts.jsonl    from top_trigrams

One row per example ``ngram-dask contexts`` kept: ``text`` is the corpus text before the
prompt and the prompt itself (decoded from ``input_ids``, the same ids), so a model's
next-token prediction after ``text`` is the task; ``expected`` / ``expected_id`` is
the top table's next token and ``actual`` / ``actual_id`` what followed in the corpus
there. The location (``shard_file, sample, pos``) says where it came from.
"""

from __future__ import annotations

import json
import os

from ngram_dask.catalog.api import Catalog
from ngram_dask.errors import DatabaseError, UserError
from ngram_dask.schema import CONTEXTS, top_table
from ngram_dask.storage import atomic_write_bytes, atomic_write_parquet

FAMILIES = {2: "bigram_prompts", 3: "trigram_prompts"}


def task_rows(cat: Catalog, n: int) -> list[dict]:
    top = top_table(n)
    prompt_ids = "[c.id0]" if n == 2 else "[c.id0, c.id1]"
    on = "t.id0 = c.id0" + (" AND t.id1 = c.id1" if n == 3 else "")
    rows = cat.sql(f"""
        SELECT {prompt_ids} AS prompt_ids, c.rank, c.expected, c.actual, c.shard_file, c.sample, c.pos,
               c.window_ids[1:c.prompt_at + {n - 1}] AS input_ids, t.sum_count, t.frac_max
        FROM {CONTEXTS} c JOIN {top} t ON {on}
        WHERE c.n = {n} ORDER BY t.frac_max DESC, t.sum_count DESC, c.id0, c.id1, c.rank""").to_pylist()
    out = []
    for r in rows:
        ids = [int(i) for i in r["input_ids"]]
        out.append({
            "table": top, "prompt_ids": [int(i) for i in r["prompt_ids"]],
            "prompt": cat.decode(r["prompt_ids"]), "text": cat.decode(ids), "input_ids": ids,
            "expected_id": int(r["expected"]), "expected": cat.token_text([r["expected"]])[0],
            "actual_id": int(r["actual"]), "actual": cat.token_text([r["actual"]])[0],
            "rank": int(r["rank"]), "shard_file": r["shard_file"], "sample": int(r["sample"]), "pos": int(r["pos"]),
            "sum_count": int(r["sum_count"]), "frac_max": float(r["frac_max"]),
        })
    return out


def export_tasks(db: str, out: str, announce=print) -> list[str]:
    """Write the prompt sets; returns the files written. Needs ``contexts`` in the database."""
    import pyarrow as pa

    if os.path.isfile(out):
        raise UserError(f"--out {out} is a file; give a folder")
    written = []
    with Catalog(db) as cat:
        if CONTEXTS not in cat.tables:
            raise DatabaseError(f"database {db} has no {CONTEXTS} table: run `ngram-dask contexts --db {db}` first")
        os.makedirs(out, exist_ok=True)
        for n, name in FAMILIES.items():
            if top_table(n) not in cat.tables:
                continue
            rows = task_rows(cat, n)
            table = pa.Table.from_pylist(rows, schema=SCHEMA)
            path = os.path.join(out, name)
            atomic_write_parquet(path + ".parquet", table, compression="zstd")
            atomic_write_bytes(path + ".jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n"
                                                        for r in rows).encode())
            written += [path + ".parquet", path + ".jsonl"]
            announce(f"  {top_table(n)}: {len(rows):,} prompts -> {path}.parquet, {path}.jsonl")
    return written


def _schema():
    import pyarrow as pa

    return pa.schema([
        ("table", pa.string()), ("prompt_ids", pa.list_(pa.int64())), ("prompt", pa.string()), ("text", pa.string()),
        ("input_ids", pa.list_(pa.int64())), ("expected_id", pa.int64()), ("expected", pa.string()),
        ("actual_id", pa.int64()), ("actual", pa.string()), ("rank", pa.int64()), ("shard_file", pa.string()),
        ("sample", pa.int64()), ("pos", pa.int64()), ("sum_count", pa.int64()), ("frac_max", pa.float64()),
    ])


SCHEMA = _schema()
