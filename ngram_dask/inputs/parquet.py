"""Parquet with a list column of integer token ids (``input_ids``, ``tokens``, ...): one
row is one sample. A piece is a run of consecutive row groups holding about
``unit_tokens`` ids (counted from the column chunks' value counts in the footer), read
with pyarrow over an fsspec file (ranged reads of those row groups only).
"""

from __future__ import annotations

import numpy as np

from ngram_dask.errors import BadInputError
from ngram_dask.inputs.base import InputPlan, Piece, Samples, file_piece_name, plan_of
from ngram_dask.storage import get_fs, redact_url

__all__ = ["TOKEN_COLUMNS", "plan", "read"]

TOKEN_COLUMNS = ("input_ids", "tokens", "token_ids")


def _open(file: str):
    import pyarrow.parquet as pq

    fs, path = get_fs(file)
    try:
        return pq.ParquetFile(fs.open(path, "rb"))
    except Exception as exc:  # pyarrow's errors for a file that is not Parquet vary by version
        raise BadInputError(f"{redact_url(file)} is not a Parquet file pyarrow can read: "
                            f"{str(exc).splitlines()[0]}") from None


def _column(file: str, pf, wanted: str | None) -> tuple[str, str]:
    """The ids column and the dtype of its values; else one line naming what the file has."""
    import pyarrow as pa

    schema = pf.schema_arrow
    names = schema.names
    name = wanted or next((c for c in TOKEN_COLUMNS if c in names), None)
    if name is None or name not in names:
        want = repr(wanted) if wanted else "one of " + ", ".join(TOKEN_COLUMNS)
        raise BadInputError(f"{redact_url(file)} has no column {want} (columns: {', '.join(names)}); "
                            "--token-column names it")
    typ = schema.field(name).type
    if not (pa.types.is_list(typ) or pa.types.is_large_list(typ)) or not pa.types.is_integer(typ.value_type):
        raise BadInputError(f"{redact_url(file)}: column {name!r} is {typ}, not a list of integer token ids")
    return name, np.dtype(typ.value_type.to_pandas_dtype()).str


def plan(files: list[str], token_column: str | None, samples: str, unit_tokens: int) -> InputPlan:
    pieces: list[Piece] = []
    for i, file in enumerate(files):
        pf = _open(file)
        name, stored = _column(file, pf, token_column)
        meta = pf.metadata
        leaf = [j for j in range(meta.num_columns) if meta.schema.column(j).path.split(".")[0] == name][0]
        counts = [meta.row_group(g).column(leaf).num_values for g in range(meta.num_row_groups)]
        rows = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
        g, row0 = 0, 0
        while g < len(counts):
            h, tokens = g, 0
            while h < len(counts) and (h == g or tokens + counts[h] <= unit_tokens):
                tokens += counts[h]
                h += 1
            pieces.append(Piece("parquet", file, i, file_piece_name(i, file, g), tokens, row0, "uint32",
                                stored=stored, start=g, stop=h, column=name, samples=sum(rows[g:h])))
            row0 += sum(rows[g:h])
            g = h
    if not pieces:
        raise BadInputError(f"the Parquet input has no rows: {', '.join(map(redact_url, files[:3]))}")
    return plan_of("parquet", pieces, files, samples)


def read(piece: Piece) -> Samples:
    pf = _open(piece.file)
    column = pf.read_row_groups(list(range(piece.start, piece.stop)), columns=[piece.column]).column(0)
    column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if column.null_count:
        row = int(np.flatnonzero(np.asarray(column.is_null()))[0])
        raise BadInputError(f"{redact_url(piece.file)}, row {piece.sample0 + row}: the {piece.column!r} list is null")
    offsets = np.asarray(column.offsets, np.int64)
    values = column.values
    if values.null_count:
        raise BadInputError(f"{redact_url(piece.file)}: column {piece.column!r} holds null ids")
    ids = np.asarray(values)[offsets[0]:offsets[-1]]
    return Samples(ids, offsets - offsets[0])
