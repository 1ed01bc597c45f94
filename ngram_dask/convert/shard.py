"""The one task per source shard: its documents -> an MDS sub-dataset under ``out/``.

On disk, for ``out`` a local folder or any fsspec URL::

    out/<shard>/index.json, shard.00000.mds.zstd, ...   # one MDS sub-dataset per source shard
    out/<shard>/finished                                 # written last: the shard's statistics

A task writes its sub-dataset into a temporary folder (``out/.staging-*`` when
``out`` is local), moves it into place and writes ``finished`` last; a rerun skips
shards whose marker matches and redoes the others from scratch, so nothing
half-written ever looks finished.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid

import numpy as np

from ngram_dask.convert.samples import SampleCutter, encode_documents, worker_tokenizer
from ngram_dask.convert.settings import ConvertSettings, SourceShard
from ngram_dask.convert.sources import Utf8, batches, iter_documents
from ngram_dask.errors import BadInputError
from ngram_dask.runtime import resumable
from ngram_dask.storage import get_fs, is_local, join, local_path

MARKER = "finished"
STAGING = ".staging-"  # prefix of a task's temporary sub-dataset folder under out/


def is_finished(done: dict, shard: SourceShard, s: ConvertSettings) -> bool:
    """A marker counts only when it was written for this source with these settings."""
    return done.get("identity") == s.identity_dict and done.get("source") == shard.source


@resumable(lambda shard, s: join(s.out, shard.name, MARKER), accept=is_finished)
def convert_shard(shard: SourceShard, s: ConvertSettings) -> dict:
    """Tokenize one source shard into ``out/<shard.name>/`` (a resumable task)."""
    tokenizer = worker_tokenizer(s.tokenizer)
    if is_local(s.out):  # a sibling of the destination, so that moving it there is one rename
        staging = join(local_path(s.out), f"{STAGING}{shard.name}-{uuid.uuid4().hex[:8]}")
        os.makedirs(staging)
    else:  # written on the worker's disk, uploaded when complete
        staging = tempfile.mkdtemp(prefix=f"ngram-dask-convert-{shard.name}-")
    try:
        stats = _write_sub_dataset(shard, s, tokenizer, join(staging, "mds"))
        _publish(join(staging, "mds"), s.out, shard.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    stats.update(identity=s.identity_dict, source=shard.source, index=shard.index, name=shard.name)
    return stats


def _write_sub_dataset(shard: SourceShard, s: ConvertSettings, tokenizer, folder: str) -> dict:
    from streaming import MDSWriter

    dtype = np.dtype(s.token_dtype).newbyteorder("<")
    utf8 = Utf8(s.invalid_utf8)
    cutter = SampleCutter(s.seq_len, s.wrap, dtype)
    limit = s.max_samples_per_shard
    documents = tokens = samples = 0

    with MDSWriter(out=folder, columns={"tokens": "bytes"}, compression=s.compression,
                   size_limit=s.size_limit) as writer:

        def write(stream: np.ndarray, bounds: np.ndarray) -> None:
            nonlocal samples, tokens
            n = len(bounds) - 1 if limit is None else min(len(bounds) - 1, limit - samples)
            for a, b in zip(bounds[:n], bounds[1:n + 1]):
                writer.write({"tokens": stream[a:b].tobytes()})
            samples += n
            tokens += int(bounds[n] - bounds[0])

        for texts in batches(iter_documents(shard, s, utf8)):
            ids, offsets = encode_documents(tokenizer, texts, s.bos_id, s.eos_id, dtype)
            documents += len(texts)
            write(*cutter.cut(ids, offsets))
            if limit is not None and samples >= limit:
                break
        rest = cutter.finish()
        if len(rest) and (limit is None or samples < limit):
            write(rest, np.array([0, len(rest)]))

    if documents == 0:
        what = "only documents that are not valid UTF-8" if utf8.skipped else "no documents"
        raise BadInputError(f"source {shard.source} holds {what} (empty input)")
    with open(os.path.join(folder, "index.json"), "rb") as f:
        index = json.load(f)
    nbytes = sum((e.get("zip_data") or e["raw_data"])["bytes"] for e in index["shards"])
    return {"documents": documents, "tokens": tokens, "samples": samples, "bytes": nbytes,
            "invalid_utf8": utf8.skipped, "first_invalid": utf8.first}


def _publish(staging: str, out: str, name: str) -> None:
    """Replace ``out/<name>`` (an unfinished leftover, if any) with the complete staging folder."""
    fs, dst = get_fs(join(out, name))
    if fs.exists(dst):
        fs.rm(dst, recursive=True)
    if is_local(out):
        os.replace(staging, local_path(join(out, name)))
    else:
        fs.put(staging.rstrip("/") + "/", dst, recursive=True)
