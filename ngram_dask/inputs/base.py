"""What every reader shares: the ``Piece`` descriptor, the plan, and the id checks."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ngram_dask.errors import BadInputError
from ngram_dask.mds import Samples
from ngram_dask.storage import get_fs, redact_url

__all__ = ["FORMATS", "InputPlan", "Piece", "Samples", "checked", "file_piece_name", "plan_of", "read_range",
           "stream_pieces", "wide_or_narrow"]

FORMATS = ("mds", "megatron", "bin", "npy", "parquet")


@dataclass(frozen=True)
class Piece:
    """One task's share of the input; small, so it travels in the Dask task graph.

    ``start``/``stop`` are token indices in the file for stream files (``stored`` ids
    from byte ``data_offset + start * itemsize``), row groups for Parquet, documents for
    Megatron in documents mode (then ``tokens_start`` is the first token's index).
    """

    format: str  # one of FORMATS
    file: str  # the data file it reads (megatron: the .bin), for messages and locations
    file_index: int  # position of that file in the input's sorted file list
    name: str  # file-name-safe, unique in the input, stable across runs
    tokens: int  # tokens it holds (MDS: an upper bound from the raw bytes)
    sample0: int  # index, in its file, of its first sample (document, row)
    token_dtype: str  # "uint16" | "uint32": the ids as the build holds them
    stored: str = "<u2"  # numpy dtype of the ids in the file
    samples: int = 0  # samples it holds (MDS samples, seq_len cuts, documents, rows)
    start: int = 0
    stop: int = 0
    data_offset: int = 0
    seq_len: int = 0  # stream files in seq-len mode: sample length
    tokens_start: int = 0
    index: str | None = None  # megatron: the .idx file
    column: str | None = None  # parquet: the list column
    extra: Any = field(default=None, compare=False)  # MDS: the ShardRef

    @property
    def location(self) -> str:
        """The file as an example's location names it: the MDS shard's path in its dataset, else its name."""
        return self.extra.basename if self.format == "mds" else posixpath.basename(self.file)

    def identity(self) -> list:
        """JSON-able: the work dir manifest refuses another input by these."""
        if self.format == "mds":
            ref = self.extra
            return [ref.basename, ref.samples, ref.raw_bytes]
        return [posixpath.basename(self.file), self.format, self.start, self.stop, self.tokens, self.seq_len]


@dataclass(frozen=True)
class InputPlan:
    format: str
    token_dtype: str
    pieces: list[Piece]
    files: list[str]
    samples: str  # "seq-len" | "documents"


def file_piece_name(file_index: int, file: str, start: int) -> str:
    base = "".join(c if c.isalnum() or c in "._-" else "_" for c in posixpath.basename(file))
    return f"{file_index:06d}-{base}-s{start:012d}"


def wide_or_narrow(stored: np.dtype) -> str:
    """The build's id type for ids stored as ``stored``: uint16 when they cannot pass 65535."""
    return "uint16" if stored.itemsize <= 2 and stored.kind in "ui" else "uint32"


def plan_of(fmt: str, pieces: list[Piece], files: list[str], samples: str) -> InputPlan:
    """The plan; every piece is read into one id type, the widest its files' ids need."""
    token = "uint32" if any(wide_or_narrow(np.dtype(p.stored)) == "uint32" for p in pieces) else "uint16"
    return InputPlan(fmt, token, [p if p.token_dtype == token else replace(p, token_dtype=token) for p in pieces],
                     files, samples)


def stream_pieces(file: str, file_index: int, fmt: str, total: int, seq_len: int, unit_tokens: int,
                  **fields) -> list[Piece]:
    """Pieces of a stream of ``total`` tokens: about ``unit_tokens`` each, on multiples of ``seq_len``."""
    step = max(seq_len, unit_tokens // seq_len * seq_len)
    return [Piece(fmt, file, file_index, file_piece_name(file_index, file, a), min(a + step, total) - a,
                  a // seq_len, start=a, stop=min(a + step, total), seq_len=seq_len,
                  samples=-(-(min(a + step, total) - a) // seq_len), **fields)
            for a in range(0, total, step)]


def read_range(file: str, start: int, stop: int) -> bytes:
    """Bytes ``[start, stop)`` of a file (a ranged read, never the whole file)."""
    fs, path = get_fs(file)
    if stop <= start:
        return b""
    data = fs.cat_file(path, start=start, end=stop)
    if len(data) != stop - start:
        raise BadInputError(f"{redact_url(file)} ends at byte {start + len(data)}: bytes up to {stop} "
                            "were expected (a truncated file?)")
    return data


def stream_samples(piece: Piece, ids: np.ndarray) -> Samples:
    """Cut a piece's ids into samples of ``seq_len`` (it starts on a sample boundary)."""
    n = len(ids)
    offsets = np.arange(0, n, piece.seq_len, dtype=np.int64)
    return Samples(ids, np.append(offsets, n).astype(np.int64) if n else np.zeros(1, np.int64))


def checked(piece: Piece, data: Samples, vocab_size: int | None) -> Samples:
    """Ids as the build holds them, every one in ``[0, vocab_size)``; else one line naming where."""
    ids = data.tokens
    bad = None
    if ids.dtype.kind == "i" and len(ids) and int(ids.min()) < 0:
        bad = int(np.flatnonzero(ids < 0)[0])
        what = f"negative token id {int(ids[bad])}"
    elif vocab_size is not None and len(ids) and int(ids.max()) >= vocab_size:
        bad = int(np.flatnonzero(ids >= vocab_size)[0])
        what = f"token id {int(ids[bad])} is >= vocab_size {vocab_size}"
    if bad is not None:
        sample = int(np.searchsorted(data.offsets, bad, side="right") - 1)
        unit = "document" if piece.format == "megatron" and not piece.seq_len else \
            "row" if piece.format == "parquet" else "sample"
        raise BadInputError(f"{redact_url(piece.file)}, {unit} {piece.sample0 + sample}: {what} "
                            f"at position {bad - int(data.offsets[sample])}")
    want = np.dtype(piece.token_dtype)
    if ids.dtype != want:
        ids = ids.astype(want)
    return Samples(ids, data.offsets)
