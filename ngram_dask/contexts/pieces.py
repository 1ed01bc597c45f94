"""The units of input a contexts task reads: *pieces*, consecutive pieces of the build's
input (``ngram_dask.inputs``: MDS shards, byte ranges of Megatron / .bin / .npy files,
Parquet row groups) holding about ``build.explode_task_tokens`` tokens, grouped as the
explode groups them.

``read_piece`` is the one function that reads input; it returns the samples
concatenated with, per sample, the index of its file in the dataset and its index in
that file (the location the examples record). The choice of examples does not depend
on how the input is grouped into pieces.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np

from ngram_dask import inputs


@dataclass(frozen=True)
class Piece:
    """Consecutive input pieces read by one task; small, so it travels in the task graph."""

    shards: tuple[inputs.Piece, ...]

    @property
    def name(self) -> str:
        first = self.shards[0].name
        return first if len(self.shards) == 1 else f"{first}+{len(self.shards) - 1}"


def make_pieces(parts: Sequence[inputs.Piece], task_tokens: int) -> list[Piece]:
    """Consecutive input pieces, as many as hold ``task_tokens`` tokens, per task (as the explode groups)."""
    return [Piece(group) for group in inputs.group_pieces(list(parts), task_tokens)]


class PieceTokens(NamedTuple):
    """Every sample of a piece concatenated: ``offsets`` (samples + 1 boundaries), and per
    sample ``files`` (the file's index in the dataset) and ``samples`` (index in the file)."""

    tokens: np.ndarray
    offsets: np.ndarray
    files: np.ndarray
    samples: np.ndarray


def read_piece(piece: Piece, vocab_size: int, verify_hashes: bool = True) -> PieceTokens:
    parts = [inputs.read_piece(part, vocab_size, verify_hashes) for part in piece.shards]
    files = np.concatenate([np.full(len(p.offsets) - 1, part.file_index, np.int64)
                            for p, part in zip(parts, piece.shards)])
    samples = np.concatenate([part.sample0 + np.arange(len(p.offsets) - 1, dtype=np.int64)
                              for p, part in zip(parts, piece.shards)])
    if len(parts) == 1:
        return PieceTokens(parts[0].tokens, np.asarray(parts[0].offsets, np.int64), files, samples)
    tokens = np.concatenate([p.tokens for p in parts])
    starts = np.cumsum([0] + [len(p.tokens) for p in parts[:-1]])
    offsets = np.concatenate([np.asarray(parts[0].offsets[:1], np.int64)]
                             + [np.asarray(p.offsets[1:], np.int64) + base for p, base in zip(parts, starts)])
    return PieceTokens(tokens, offsets, files, samples)
