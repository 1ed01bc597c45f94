"""The units of input a contexts task reads: *pieces*, consecutive shards of the build's
input holding about ``build.explode_task_tokens`` tokens (the explode's task size).

``read_piece`` is the one function that reads input; it returns the samples
concatenated with, per sample, the index of its file in the dataset and its index in
that file (the location the examples record). The choice of examples does not depend
on how shards are grouped into pieces, so another grouping (or another reader, such as
``ngram_dask.inputs`` when it lands) changes nothing in the result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np

from ngram_dask.mds import ShardRef, read_shard


@dataclass(frozen=True)
class Piece:
    """Consecutive shards read by one task; small, so it travels in the task graph."""

    shards: tuple[ShardRef, ...]

    @property
    def name(self) -> str:
        first = self.shards[0].name
        return first if len(self.shards) == 1 else f"{first}+{len(self.shards) - 1}"


def make_pieces(shards: Sequence[ShardRef], task_tokens: int, token_bytes: int) -> list[Piece]:
    """Consecutive shards, greedily, until the next would pass ``task_tokens`` tokens
    (estimated from the index's raw byte sizes; a larger shard is a piece of its own)."""
    pieces: list[Piece] = []
    current: list[ShardRef] = []
    tokens = 0
    for ref in shards:
        est = ref.raw_bytes // max(1, token_bytes)
        if current and tokens + est > task_tokens:
            pieces.append(Piece(tuple(current)))
            current, tokens = [], 0
        current.append(ref)
        tokens += est
    if current:
        pieces.append(Piece(tuple(current)))
    return pieces


class PieceTokens(NamedTuple):
    """Every sample of a piece concatenated: ``offsets`` (samples + 1 boundaries), and per
    sample ``files`` (the file's index in the dataset) and ``samples`` (index in the file)."""

    tokens: np.ndarray
    offsets: np.ndarray
    files: np.ndarray
    samples: np.ndarray


def read_piece(piece: Piece, token_dtype: str, vocab_size: int, verify_hashes: bool = True) -> PieceTokens:
    parts = [read_shard(ref, token_dtype, vocab_size, verify_hashes) for ref in piece.shards]
    files = np.concatenate([np.full(len(p.offsets) - 1, ref.index, np.int64) for p, ref in zip(parts, piece.shards)])
    samples = np.concatenate([np.arange(len(p.offsets) - 1, dtype=np.int64) for p in parts])
    if len(parts) == 1:
        return PieceTokens(parts[0].tokens, np.asarray(parts[0].offsets, np.int64), files, samples)
    tokens = np.concatenate([p.tokens for p in parts])
    starts = np.cumsum([0] + [len(p.tokens) for p in parts[:-1]])
    offsets = np.concatenate([np.asarray(parts[0].offsets[:1], np.int64)]
                             + [np.asarray(p.offsets[1:], np.int64) + base for p, base in zip(parts, starts)])
    return PieceTokens(tokens, offsets, files, samples)
