"""Flat token files: ``.bin`` (raw little-endian ids, ``uint16`` or ``uint32`` as the
caller says: the file has no header) and ``.npy`` (a 1-D integer array; dtype and data
offset from its header, read with one small ranged read).

Each file is one stream of tokens, cut into samples of ``seq_len`` from its start.
"""

from __future__ import annotations

import io

import numpy as np

from ngram_dask.errors import BadInputError
from ngram_dask.inputs.base import (
    InputPlan,
    Piece,
    Samples,
    plan_of,
    read_range,
    stream_pieces,
    stream_samples,
    wide_or_narrow,
)
from ngram_dask.storage import get_fs, redact_url

__all__ = ["npy_header", "plan", "read"]

_NPY_HEADER_MAX = 1 << 16


def npy_header(file: str) -> tuple[np.dtype, int, int]:
    """``(dtype, tokens, data offset)`` of a 1-D integer ``.npy``; else one line saying why."""
    from numpy.lib import format as npformat

    fs, path = get_fs(file)
    size = fs.size(path)
    head = io.BytesIO(read_range(file, 0, min(size, _NPY_HEADER_MAX)))
    try:
        version = npformat.read_magic(head)
        reader = npformat.read_array_header_1_0 if version == (1, 0) else npformat.read_array_header_2_0
        shape, fortran, dtype = reader(head)
    except ValueError as exc:
        raise BadInputError(f"{redact_url(file)} is not a .npy file numpy can read: {exc}") from None
    if dtype.kind not in "ui":
        raise BadInputError(f"{redact_url(file)} holds {dtype} values: token ids must be integers")
    if len(shape) != 1:
        raise BadInputError(f"{redact_url(file)} is an array of shape {shape}: a token file is 1-D")
    offset = head.tell()
    if size - offset != shape[0] * dtype.itemsize:
        raise BadInputError(f"{redact_url(file)} holds {size - offset} data bytes, its header says "
                            f"{shape[0]} x {dtype.itemsize}")
    return dtype.newbyteorder("<") if dtype.byteorder == ">" else dtype, int(shape[0]), offset


def plan(files: list[str], fmt: str, token_dtype: str, seq_len: int, unit_tokens: int) -> InputPlan:
    pieces: list[Piece] = []
    for i, file in enumerate(files):
        if fmt == "npy":
            stored, total, offset = npy_header(file)
        else:
            stored, offset = np.dtype("<u4" if token_dtype == "uint32" else "<u2"), 0
            fs, path = get_fs(file)
            size = fs.size(path)
            if size % stored.itemsize:
                raise BadInputError(f"{redact_url(file)} has {size} bytes, not a multiple of {stored.itemsize} "
                                    f"({stored.name} ids; --token-dtype says how wide they are)")
            total = size // stored.itemsize
        pieces += stream_pieces(file, i, fmt, total, seq_len, unit_tokens, stored=stored.str,
                                data_offset=offset, token_dtype=wide_or_narrow(stored))
    if not pieces:
        raise BadInputError(f"the input's {fmt} files hold no tokens: {', '.join(map(redact_url, files[:3]))}")
    return plan_of(fmt, pieces, files, "seq-len")


def read(piece: Piece) -> Samples:
    stored = np.dtype(piece.stored)
    data = read_range(piece.file, piece.data_offset + piece.start * stored.itemsize,
                      piece.data_offset + piece.stop * stored.itemsize)
    return stream_samples(piece, np.frombuffer(data, stored))
