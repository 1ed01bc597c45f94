"""Writers of the token formats ``ngram_dask.inputs`` reads, for tests and benchmarks.

``write_megatron`` follows the published MMIDIDX layout (see ``ngram_dask/inputs/megatron.py``)
and is checked byte for byte against Megatron-LM's own ``IndexedDatasetBuilder``
(``write_megatron_with_megatron``, PyPI ``megatron-core``) in tests/inputs.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Sequence

import numpy as np

MEGATRON_CODES = {np.dtype(np.uint8): 1, np.dtype(np.int8): 2, np.dtype(np.int16): 3, np.dtype(np.int32): 4,
                  np.dtype(np.int64): 5, np.dtype(np.float64): 6, np.dtype(np.float32): 7,
                  np.dtype(np.uint16): 8}


def write_megatron(prefix: str | Path, documents: Sequence[Sequence[Sequence[int]]], dtype=np.uint16) -> Path:
    """``<prefix>.bin/.idx``: each document a list of sequences (lists of ids)."""
    dtype = np.dtype(dtype)
    seqs = [np.asarray(s, dtype) for doc in documents for s in doc]
    sizes = np.array([len(s) for s in seqs], np.int32)
    pointers = np.concatenate(([0], np.cumsum(sizes.astype(np.int64))[:-1])) * dtype.itemsize if len(seqs) \
        else np.zeros(0, np.int64)
    doc_idx = np.concatenate(([0], np.cumsum([len(doc) for doc in documents]))).astype(np.int64)
    prefix = Path(prefix)
    with open(f"{prefix}.bin", "wb") as f:
        for s in seqs:
            f.write(s.tobytes())
    with open(f"{prefix}.idx", "wb") as f:
        f.write(b"MMIDIDX\x00\x00")
        f.write(struct.pack("<Q", 1))
        f.write(struct.pack("<B", MEGATRON_CODES[dtype]))
        f.write(struct.pack("<Q", len(seqs)))
        f.write(struct.pack("<Q", len(doc_idx)))
        f.write(sizes.tobytes())
        f.write(pointers.astype(np.int64).tobytes())
        f.write(doc_idx.tobytes())
    return prefix


def write_megatron_with_megatron(prefix: str | Path, documents: Sequence[Sequence[Sequence[int]]],
                                 dtype=np.uint16) -> Path:
    """The same files written by Megatron-LM's own builder (``megatron-core``, on the CPU)."""
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=np.dtype(dtype).type)
    for doc in documents:
        for s in doc:
            builder.add_item(torch.tensor(np.asarray(s, np.int64)))
        builder.end_document()
    builder.finalize(f"{prefix}.idx")
    return Path(prefix)


def write_bin(path: str | Path, stream: Sequence[int], dtype=np.uint16) -> Path:
    np.asarray(stream, np.dtype(dtype).newbyteorder("<")).tofile(path)
    return Path(path)


def write_npy(path: str | Path, stream: Sequence[int], dtype=np.uint16) -> Path:
    np.save(path, np.asarray(stream, dtype))
    return Path(path)


def write_parquet(path: str | Path, rows: Sequence[Sequence[int]], column: str = "input_ids",
                  value_type: str = "int64", row_group_size: int = 1000, extra: bool = True) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = {column: pa.array([list(map(int, r)) for r in rows], pa.list_(getattr(pa, value_type)()))}
    if extra:
        cols["text"] = pa.array([f"row {i}" for i in range(len(rows))])
    pq.write_table(pa.table(cols), path, row_group_size=row_group_size)
    return Path(path)


def cut(stream: Sequence[int], seq_len: int) -> list[list[int]]:
    """The samples a stream file gives: ``seq_len`` tokens each, the last one shorter."""
    stream = list(stream)
    return [stream[i:i + seq_len] for i in range(0, len(stream), seq_len)]
