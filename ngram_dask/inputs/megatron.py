"""Megatron indexed datasets (``MMIDIDX``), as Megatron-LM and GPT-NeoX write them, read
without torch or Megatron.

``<name>.idx``, little-endian::

    b"MMIDIDX\\x00\\x00"              9 bytes: magic
    uint64  version                  1
    uint8   dtype code               1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 6 float64, 7 float32, 8 uint16
    uint64  sequence count S
    uint64  document count D         document indices, with the leading 0: D = documents + 1
    int32   sizes[S]                 tokens per sequence
    int64   pointers[S]              byte offset of each sequence in the .bin
    int64   document_indices[D]      sequence index where each document starts; the last is S
    (int8   modes[S])                multimodal datasets only: refused, there is no token stream

``<name>.bin``: the sequences' ids back to back. Pythia's data (EleutherAI's
``pythia_deduped_pile_idxmaps``, ``pile-deduped-pythia-preshuffled``) is uint16.

In ``seq-len`` mode a file is the stream of all its sequences in index order (pointers
must be contiguous), cut every ``seq_len`` tokens; in ``documents`` mode each document
is one sample, and a piece is a range of documents whose sizes the worker reads from the
``.idx`` with ranged reads (the descriptor stays small).
"""

from __future__ import annotations

import posixpath
import struct

import numpy as np

from ngram_dask.errors import BadInputError
from ngram_dask.inputs.base import (
    InputPlan,
    Piece,
    Samples,
    file_piece_name,
    plan_of,
    read_range,
    stream_pieces,
    stream_samples,
    wide_or_narrow,
)
from ngram_dask.storage import get_fs, redact_url

__all__ = ["DTYPES", "MAGIC", "IndexHeader", "plan", "read", "read_header"]

MAGIC = b"MMIDIDX\x00\x00"
DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64, 7: np.float32,
          8: np.uint16}
_HEADER = struct.Struct("<9sQBQQ")  # magic, version, dtype code, sequences, document indices


class IndexHeader:
    """The fixed part of an ``.idx``, and where its arrays start."""

    def __init__(self, idx: str):
        fs, path = get_fs(idx)
        size = fs.size(path)
        raw = read_range(idx, 0, min(size, _HEADER.size))
        if len(raw) < _HEADER.size or raw[:9] != MAGIC:
            raise BadInputError(f"{redact_url(idx)} is not a Megatron index: it does not start with MMIDIDX")
        magic, version, code, self.sequences, self.documents = _HEADER.unpack(raw)
        if version != 1:
            raise BadInputError(f"{redact_url(idx)} is a Megatron index of version {version}; this reads version 1")
        if code not in DTYPES:
            raise BadInputError(f"{redact_url(idx)} has dtype code {code}, which is none of Megatron's")
        self.dtype = np.dtype(DTYPES[code]).newbyteorder("<")
        if self.dtype.kind not in "ui":
            raise BadInputError(f"{redact_url(idx)} stores {self.dtype.name} values: token ids must be integers")
        self.idx = idx
        self.sizes_at = _HEADER.size
        self.pointers_at = self.sizes_at + 4 * self.sequences
        self.documents_at = self.pointers_at + 8 * self.sequences
        end = self.documents_at + 8 * self.documents
        if size == end + self.sequences:
            raise BadInputError(f"{redact_url(idx)} is a multimodal Megatron index (sequence modes): "
                                "it holds no single token stream")
        if size != end:
            raise BadInputError(f"{redact_url(idx)} has {size} bytes; its header says {end}")

    def array(self, at: int, dtype: str, first: int, stop: int) -> np.ndarray:
        width = np.dtype(dtype).itemsize
        return np.frombuffer(read_range(self.idx, at + first * width, at + stop * width), dtype)

    def sizes(self, first: int = 0, stop: int | None = None) -> np.ndarray:
        return self.array(self.sizes_at, "<i4", first, self.sequences if stop is None else stop)

    def pointers(self) -> np.ndarray:
        return self.array(self.pointers_at, "<i8", 0, self.sequences)

    def document_indices(self, first: int = 0, stop: int | None = None) -> np.ndarray:
        return self.array(self.documents_at, "<i8", first, self.documents if stop is None else stop)


def read_header(idx: str) -> IndexHeader:
    return IndexHeader(idx)


def _check_file(bin_url: str, head: IndexHeader) -> tuple[int, np.ndarray]:
    """Total tokens, and the token index where each sequence starts; the .bin must hold them all."""
    sizes = head.sizes().astype(np.int64)
    starts = np.concatenate(([0], np.cumsum(sizes)))
    pointers = head.pointers()
    if not np.array_equal(pointers, starts[:-1] * head.dtype.itemsize):
        bad = int(np.flatnonzero(pointers != starts[:-1] * head.dtype.itemsize)[0])
        raise BadInputError(f"{redact_url(head.idx)}: sequence {bad} starts at byte {int(pointers[bad])}, not "
                            f"{int(starts[bad]) * head.dtype.itemsize}: the sequences are not back to back")
    docs = head.document_indices()
    if len(docs) and (docs[0] != 0 or docs[-1] != head.sequences or np.any(np.diff(docs) < 0)):
        raise BadInputError(f"{redact_url(head.idx)}: the document indices do not run from 0 to "
                            f"{head.sequences} in order")
    fs, path = get_fs(bin_url)
    if not fs.exists(path):
        raise BadInputError(f"{redact_url(bin_url)} is missing: {redact_url(head.idx)} indexes it")
    size = fs.size(path)
    need = int(starts[-1]) * head.dtype.itemsize
    if size < need:
        raise BadInputError(f"{redact_url(bin_url)} has {size} bytes, shorter than the {need} its index says")
    return int(starts[-1]), starts


def plan(bins: list[str], seq_len: int, samples: str, unit_tokens: int) -> InputPlan:
    pieces: list[Piece] = []
    for i, bin_url in enumerate(bins):
        idx = bin_url[:-4] + ".idx"
        fs, path = get_fs(idx)
        if not fs.exists(path):
            raise BadInputError(f"{redact_url(bin_url)} has no {posixpath.basename(idx)} beside it: a Megatron "
                                "dataset is a .bin and its .idx (or pass --input-format bin)")
        head = IndexHeader(idx)
        total, starts = _check_file(bin_url, head)
        dtype = wide_or_narrow(head.dtype)
        common = {"stored": head.dtype.str, "index": idx, "token_dtype": dtype}
        if samples == "seq-len":
            pieces += stream_pieces(bin_url, i, "megatron", total, seq_len, unit_tokens, **common)
            continue
        docs = head.document_indices()
        doc_tokens = starts[docs]  # token index where each document starts; the last is the total
        d = 0
        while d < len(docs) - 1:
            # documents [d, e): as many as fit unit_tokens, at least one
            e = int(np.searchsorted(doc_tokens, doc_tokens[d] + unit_tokens, side="right")) - 1
            e = min(max(e, d + 1), len(docs) - 1)
            a, b = int(doc_tokens[d]), int(doc_tokens[e])
            pieces.append(Piece("megatron", bin_url, i, file_piece_name(i, bin_url, d), b - a, d,
                                start=d, stop=e, tokens_start=a, samples=e - d, **common))
            d = e
    if not pieces or not sum(p.tokens for p in pieces) and samples == "seq-len":
        raise BadInputError(f"the Megatron input holds no tokens: {', '.join(map(redact_url, bins[:3]))}")
    return plan_of("megatron", pieces, bins, samples)


def read(piece: Piece) -> Samples:
    stored = np.dtype(piece.stored)
    if piece.seq_len:  # seq-len mode: a token range
        data = read_range(piece.file, piece.start * stored.itemsize, piece.stop * stored.itemsize)
        return stream_samples(piece, np.frombuffer(data, stored))
    head = IndexHeader(piece.index)
    docs = head.document_indices(piece.start, piece.stop + 1)
    sizes = head.sizes(int(docs[0]), int(docs[-1])).astype(np.int64)
    seq_starts = np.concatenate(([0], np.cumsum(sizes)))
    offsets = seq_starts[docs - docs[0]]
    a = piece.tokens_start
    data = read_range(piece.file, a * stored.itemsize, (a + int(offsets[-1])) * stored.itemsize)
    return Samples(np.frombuffer(data, stored), offsets.astype(np.int64))
