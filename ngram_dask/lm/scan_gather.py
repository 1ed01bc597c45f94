"""The scan's parts on disk, and their gather: parts -> decoded, deduplicated, sorted table.

Each batch's task writes its candidate rows to ``parts/batch-<b>.parquet`` (``part_schema``:
ids and float32 statistics, no text) under the scan work dir, then its marker
``_done/batch-<b>.json``. The client reads every part, decodes the ids with the
tokenizer, deduplicates on ``text`` (the first occurrence in (batch, sample, start)
order stays) and sorts by ``p_long`` descending: the table written to ``--out`` and to
``scan_<L>``, with ``OUTPUT_COLUMNS`` in that order.
"""

from __future__ import annotations

from typing import Sequence

from ngram_dask.errors import WorkDirError
from ngram_dask.lm.scan_stats import FLOAT_STATS
from ngram_dask.storage import get_fs, join

# The output, in this order (SPEC.md's columns; the original's `JS` is `sym_kl`).
OUTPUT_COLUMNS = ("text", "token_short", "token_long", "p_short", "p_long", "sym_kl", "js_divergence",
                  "long_ids", "short_max_id", "long_max_id", "context", "context_ids", "p_delta_max",
                  "logit_excite_max", "logit_inhibit_max", "batch", "sample", "start")


def batch_name(index: int) -> str:
    return f"batch-{int(index):07d}"


def part_url(scan_dir: str, batch: int) -> str:
    return join(scan_dir, "parts", f"{batch_name(batch)}.parquet")


def marker_url(scan_dir: str, batch: int) -> str:
    return join(scan_dir, "_done", f"{batch_name(batch)}.json")


def part_schema():
    import pyarrow as pa

    return pa.schema([
        ("batch", pa.int64()), ("sample", pa.int64()), ("start", pa.int32()),
        ("long_ids", pa.list_(pa.int32())), ("context_ids", pa.list_(pa.int32())),
        ("short_max_id", pa.int32()), ("long_max_id", pa.int32()),
        *[(name, pa.float32()) for name in FLOAT_STATS],
    ])


class _Decoder:
    """``tokenizer.decode`` with ids beyond the tokenizer's vocabulary (model padding) as ''."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.known = len(tokenizer)
        self._single: dict[int, str] = {}

    def _clean(self, ids) -> list[int]:
        return [int(i) for i in ids if 0 <= int(i) < self.known]

    def one(self, i: int) -> str:
        i = int(i)
        if i not in self._single:
            self._single[i] = (self.tok.decode([i], clean_up_tokenization_spaces=False)
                               if 0 <= i < self.known else "")
        return self._single[i]

    def many(self, seqs) -> list[str]:
        if not seqs:
            return []
        return self.tok.batch_decode([self._clean(s) for s in seqs], clean_up_tokenization_spaces=False)


def decode_candidates(parts, tokenizer):
    """Parts (``part_schema``) -> the output table: text columns added, deduplicated on ``text``
    (the first occurrence in (batch, sample, start) order stays), sorted by ``p_long`` desc
    (ties by batch, sample, start)."""
    import pyarrow as pa

    from ngram_dask.db import memory

    dec = _Decoder(tokenizer)
    long_ids = parts.column("long_ids").to_pylist()
    text = [f"[{dec.one(ids[0])}]{rest}" for ids, rest in zip(long_ids, dec.many([ids[1:] for ids in long_ids]))]
    decoded = parts.append_column("text", pa.array(text, pa.string()))
    decoded = decoded.append_column(
        "token_short", pa.array([dec.one(i) for i in parts.column("short_max_id").to_pylist()], pa.string()))
    decoded = decoded.append_column(
        "token_long", pa.array([dec.one(i) for i in parts.column("long_max_id").to_pylist()], pa.string()))
    decoded = decoded.append_column(
        "context", pa.array(dec.many(parts.column("context_ids").to_pylist()), pa.string()))
    floats = set(FLOAT_STATS)
    select = ", ".join(f"CAST({c} AS DOUBLE) AS {c}" if c in floats else c for c in OUTPUT_COLUMNS)
    con = memory()
    try:
        con.register("_parts", decoded)
        return con.sql(
            f"SELECT {select} FROM _parts "
            "QUALIFY row_number() OVER (PARTITION BY text ORDER BY batch, sample, start) = 1 "
            "ORDER BY p_long DESC, batch, sample, start"
        ).to_arrow_table()
    finally:
        con.close()


def read_parts(scan_dir: str, batches: Sequence[int]):
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = []
    for b in batches:
        url = part_url(scan_dir, b)
        fs, path = get_fs(url)
        try:
            with fs.open(path, "rb") as f:
                tables.append(pq.read_table(f, schema=part_schema()))
        except FileNotFoundError:
            raise WorkDirError(f"{url} is missing although its batch is marked done; delete "
                               f"{marker_url(scan_dir, b)} and rerun to scan that batch again") from None
    if not tables:
        return part_schema().empty_table()
    return pa.concat_tables(tables)
