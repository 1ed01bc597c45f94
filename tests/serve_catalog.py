"""A built test catalog with what `score` and `scan` add, for the API and server tests.

The ``p_<model>`` columns are written the way ``ngram-dask score`` writes them (a DOUBLE
column per model on each top table, recorded under ``scored_models`` in ``catalog_info``)
but with made-up probabilities, so a test knows which tasks a model "fails": running three
real models here would cost minutes and test nothing the score tests do not. The scan
table goes through the scan step's own writer, ``write_scan_table``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

MODELS = {  # column -> model name, as score records them (smallest first)
    "p_pythia_70m_deduped": "EleutherAI/pythia-70m-deduped",
    "p_pythia_1_4b_deduped": "EleutherAI/pythia-1.4b-deduped",
    "p_pythia_12b_deduped": "EleutherAI/pythia-12b-deduped",
}


def add_scores_and_scan(good: Path, dest: Path) -> Path:
    """Copy ``good`` to ``dest``; add p columns (70m < 1.4b < 12b on every row, the 70m
    below 0.1 on every third row) and a ``scan_4`` table of 30 rows."""
    import duckdb
    import pyarrow as pa

    from ngram_dask.db import writer
    from ngram_dask.lm.scan import write_scan_table
    from ngram_dask.lm.scan_gather import OUTPUT_COLUMNS

    shutil.copy(good, dest)
    con = duckdb.connect(str(dest))
    try:
        scored = {}
        for table in ("top_bigrams", "top_trigrams"):
            for k, col in enumerate(MODELS):
                con.execute(f"ALTER TABLE {table} ADD COLUMN {col} DOUBLE")
                # deterministic per row: a hash of the ids in [0, 1), scaled per model
                h = "(hash(id0, id1) % 1000) / 1000.0"
                value = {0: f"CASE WHEN hash(id0, id1) % 3 = 0 THEN 0.05 * {h} ELSE 0.3 * {h} + 0.1 END",
                         1: f"0.5 * {h} + 0.3",
                         2: f"0.05 * {h} + 0.9"}[k]
                con.execute(f"UPDATE {table} SET {col} = {value}")
                scored.setdefault(col, {"model": MODELS[col], "tables": {}, "device": "cpu", "dtype": "float32"})
                scored[col]["tables"][table] = con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        con.execute("INSERT OR REPLACE INTO catalog_info VALUES ('scored_models', ?)", [json.dumps(scored)])
    finally:
        con.close()
    rows = 30
    cols = {c: [] for c in OUTPUT_COLUMNS}
    for i in range(rows):
        row = {"text": f"[ tok{i}] a b c", "token_short": " x", "token_long": f" y{i}", "p_short": 0.1 + i / 100,
               "p_long": 0.6 + i / 100, "sym_kl": 1.0 + i, "js_divergence": 0.01 * i, "long_ids": [i, 1, 2, 3, 4],
               "short_max_id": 7, "long_max_id": 100 + i, "context": f"ctx {i}", "context_ids": [9, i, 1, 2, 3, 4],
               "p_delta_max": 0.5, "logit_excite_max": 2.0, "logit_inhibit_max": 1.0, "batch": 0, "sample": i,
               "start": 3}
        for c in OUTPUT_COLUMNS:
            cols[c].append(row[c])
    table = pa.table(cols)
    with writer(str(dest), "scan") as w:
        write_scan_table(w.con, 4, table, {"model": "test", "seq_len": 4})
    return dest
