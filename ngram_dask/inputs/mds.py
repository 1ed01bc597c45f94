"""MDS datasets (``convert``'s output, MosaicML Streaming's format) as pieces: one shard
each, read by ``ngram_dask.mds`` (which reads the format without importing streaming)."""

from __future__ import annotations

from ngram_dask.errors import BadInputError
from ngram_dask.inputs.base import InputPlan, Piece, Samples
from ngram_dask.mds import list_shards, read_shard, resolve_token_dtype
from ngram_dask.storage import redact_url

__all__ = ["plan", "read"]


def plan(url: str, token_dtype: str = "auto") -> InputPlan:
    shards = list_shards(url)
    if not shards or sum(s.samples for s in shards) == 0:
        raise BadInputError(f"input dataset {redact_url(url)} is empty: no samples in {len(shards)} shard(s)")
    dtype = resolve_token_dtype(token_dtype, url)
    width = 4 if dtype == "uint32" else 2
    pieces = [Piece("mds", ref.url, ref.index, ref.name, ref.raw_bytes // width, 0, dtype, samples=ref.samples,
                    extra=ref) for ref in shards]
    return InputPlan("mds", dtype, pieces, [ref.url for ref in shards], "seq-len")


def read(piece: Piece, vocab_size: int | None, verify_hashes: bool, out=None, buffers=None) -> Samples:
    """One shard's samples; with ``out`` and ``buffers`` (``read_shard``'s), its ids written
    there and its bytes read into buffers it gives."""
    return read_shard(piece.extra, piece.token_dtype, vocab_size, verify_hashes, out, buffers)
