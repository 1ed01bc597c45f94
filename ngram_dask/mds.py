"""Read MosaicML Streaming (MDS) datasets of token ids, without importing ``streaming``.

``import streaming`` pulls in torch and torchvision (seconds per worker process), so
the counting path reads the format itself: a root ``index.json`` lists shards (also
shards in subfolders, as ``streaming``'s ``merge_index`` writes them), and one shard
file is::

    uint32 num_samples | uint32 offsets[num_samples + 1] | config json | samples

where sample ``i`` spans ``[offsets[i], offsets[i+1])`` and starts with one ``uint32``
size per variable-size column, then the columns' bytes in (sorted) column order.
Compressed shards (``zip_data``) are one zstd frame of that file.

Every error here is a ``BadInputError`` naming the shard (and sample) so the client
can print it as one line, however late a worker finds it.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

import fsspec
import numpy as np

from ngram_dask.errors import BadInputError

TOKENS_COLUMN = "tokens"
SIDECAR = "ngram_dask.json"  # written by `convert`: {"token_dtype": "uint16" | "uint32", ...}


@dataclass(frozen=True)
class ShardRef:
    """Everything a worker needs to read one shard; small, so it travels in the task graph."""

    root: str  # dataset root URL
    index: int  # position in the root index
    basename: str  # path of the file to read, relative to root
    samples: int
    compression: str | None
    raw_bytes: int
    column_names: tuple[str, ...]
    column_encodings: tuple[str, ...]
    column_sizes: tuple[int | None, ...]
    hashes: tuple[tuple[str, str], ...] = field(default=())

    @property
    def url(self) -> str:
        return join_url(self.root, self.basename)

    @property
    def name(self) -> str:
        """A stable file-name-safe id: shard position plus its path."""
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in self.basename)
        return f"{self.index:06d}-{safe}"


class Samples(NamedTuple):
    """Consecutive samples (of an MDS shard or any input piece) concatenated, with ``len(samples) + 1`` boundaries."""

    tokens: np.ndarray
    offsets: np.ndarray

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def join_url(root: str, rel: str) -> str:
    if "://" in root:
        return root.rstrip("/") + "/" + rel
    return posixpath.join(root, rel)


def _read_json(url: str) -> dict:
    try:
        with fsspec.open(url, "rb") as f:
            return json.loads(f.read())
    except FileNotFoundError:
        raise
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadInputError(f"{url} is not valid JSON: {exc}") from None


def read_sidecar(root: str) -> dict:
    fs, path = fsspec.core.url_to_fs(root)
    try:
        return _read_json(join_url(root, SIDECAR)) if fs.exists(posixpath.join(path, SIDECAR)) else {}
    except FileNotFoundError:
        return {}


def _shard_from_entry(root: str, i: int, entry: dict, index_url: str) -> ShardRef:
    try:
        if entry.get("format") != "mds":
            raise BadInputError(
                f"{index_url}: shard {i} has format {entry.get('format')!r}; only 'mds' is supported"
            )
        names = tuple(entry["column_names"])
        if TOKENS_COLUMN not in names:
            raise BadInputError(
                f"{index_url}: shard {i} has no '{TOKENS_COLUMN}' column (columns: {', '.join(names)})"
            )
        encodings = tuple(entry["column_encodings"])
        if encodings[names.index(TOKENS_COLUMN)] != "bytes":
            raise BadInputError(
                f"{index_url}: shard {i} column '{TOKENS_COLUMN}' is "
                f"{encodings[names.index(TOKENS_COLUMN)]!r}, expected 'bytes'"
            )
        compression = entry.get("compression")
        data = entry["zip_data"] if compression else entry["raw_data"]
        return ShardRef(
            root=root,
            index=i,
            basename=data["basename"],
            samples=int(entry["samples"]),
            compression=compression,
            raw_bytes=int(entry["raw_data"]["bytes"]),
            column_names=names,
            column_encodings=encodings,
            column_sizes=tuple(entry["column_sizes"]),
            hashes=tuple(sorted((data.get("hashes") or {}).items())),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BadInputError(f"{index_url}: shard {i} entry is invalid ({type(exc).__name__}: {exc})") from None


def list_shards(root: str) -> list[ShardRef]:
    """The shards of the MDS dataset at ``root`` (local path or fsspec URL).

    A root ``index.json`` is used as is (its basenames may point into subfolders).
    Without one, every ``*/index.json`` one level down is merged, in sorted order,
    the way ``streaming.base.util.merge_index`` would.
    """
    root = root.rstrip("/") if root not in ("/",) else root
    fs, path = fsspec.core.url_to_fs(root)
    if not fs.exists(path):
        raise BadInputError(f"input dataset not found: {root}")
    index_url = join_url(root, "index.json")
    if fs.exists(posixpath.join(path, "index.json")):
        subsets = [("", index_url)]
    else:
        found = sorted(fs.glob(posixpath.join(path, "*", "index.json")))
        if not found:
            raise BadInputError(f"{root} has no index.json (nor subfolders with one): not an MDS dataset")
        subsets = [
            (posixpath.basename(posixpath.dirname(p)), join_url(root, posixpath.relpath(p, path)))
            for p in found
        ]
    shards: list[ShardRef] = []
    for prefix, url in subsets:
        index = _read_json(url)
        entries = index.get("shards") if isinstance(index, dict) else None
        if not isinstance(entries, list):
            raise BadInputError(f"{url} has no 'shards' list: not an MDS index")
        for entry in entries:
            ref = _shard_from_entry(root, len(shards), entry, url)
            if prefix:
                ref = _with_basename(ref, posixpath.join(prefix, ref.basename))
            shards.append(ref)
    return shards


def _with_basename(ref: ShardRef, basename: str) -> ShardRef:
    from dataclasses import replace

    return replace(ref, basename=basename)


def _check_hashes(ref: ShardRef, data: bytes) -> None:
    for algo, expected in ref.hashes:
        if algo.startswith("xxh"):
            import xxhash

            hasher = getattr(xxhash, f"{algo}_hexdigest", None)
            got = hasher(data) if hasher else None
        elif algo in hashlib.algorithms_available:
            got = hashlib.new(algo, data).hexdigest()
        else:
            got = None
        if got is not None and got != expected:
            raise BadInputError(
                f"shard {ref.url}: {algo} hash {got} does not match index.json ({expected}); "
                "the file is corrupt or was replaced"
            )


def _decompress(ref: ShardRef, data, into: np.ndarray | None = None):
    """The shard's raw bytes; zstd with ``into`` (uint8, at least ``raw_bytes``): written there
    and returned as a view of it (a worker reusing one buffer faults in no fresh pages)."""
    algo = ref.compression.split(":")[0]
    try:
        if algo == "zstd":
            import zstandard

            if into is None:
                return zstandard.ZstdDecompressor().decompress(data, max_output_size=ref.raw_bytes)
            reader, view, got = zstandard.ZstdDecompressor().stream_reader(data), memoryview(into), 0
            while got < ref.raw_bytes and (k := reader.readinto(view[got:ref.raw_bytes])):
                got += k
            if got != ref.raw_bytes or reader.read(1):  # (the one-shot path raises on a broken frame too)
                how = f"ends after {got:,} of" if got < ref.raw_bytes else "runs past"
                raise BadInputError(f"shard {ref.url} cannot be decompressed ({algo}): its data {how} "
                                    f"the {ref.raw_bytes:,} bytes index.json says")
            return into[:got]
        if algo == "gz":
            import gzip

            return gzip.decompress(data)
        if algo == "bz2":
            import bz2

            return bz2.decompress(data)
        if algo == "br":
            import brotli

            return brotli.decompress(data)
        if algo == "snappy":
            import snappy

            return snappy.decompress(data)
    except BadInputError:
        raise
    except Exception as exc:  # each codec has its own error class
        raise BadInputError(f"shard {ref.url} cannot be decompressed ({algo}): {exc}") from None
    raise BadInputError(f"shard {ref.url}: unsupported compression {ref.compression!r}")


Buffers = Callable[[str, int, Any], np.ndarray]  # (name, size, dtype) -> a reused array: ``runtime.thread_buffer``


def read_shard_bytes(ref: ShardRef, verify_hashes: bool = True, buffers: Buffers | None = None):
    """The shard's raw (decompressed) bytes. With ``buffers``, the file and its decompressed
    bytes go into two buffers it gives (returned as a view of one): under Dask's
    ``MALLOC_TRIM_THRESHOLD_`` a fresh ``bytes`` per shard faults in every page again, which
    took a worker's read of a 75M-token group from 0.14 s to 0.24 s."""
    try:
        with fsspec.open(ref.url, "rb") as f:
            size = getattr(f, "size", None) if buffers is not None else None
            if size is None:
                data = f.read()
            else:
                buf = buffers("shard-file", int(size), np.uint8)
                data = buf[:f.readinto(memoryview(buf)[:int(size)])]
    except FileNotFoundError:
        raise BadInputError(f"shard file missing: {ref.url}") from None
    if verify_hashes:
        _check_hashes(ref, data)
    if ref.compression:
        raw = buffers("shard-raw", ref.raw_bytes, np.uint8) if buffers is not None else None
        data = _decompress(ref, data, raw)
    if len(data) != ref.raw_bytes:
        raise BadInputError(
            f"shard {ref.url} holds {len(data)} bytes, index.json says {ref.raw_bytes}: truncated or corrupt"
        )
    return data


def decode_shard(ref: ShardRef, data: bytes, token_dtype: np.dtype, out: np.ndarray | None = None) -> Samples:
    """The ``tokens`` column of every sample of a raw shard, vectorised (no per-sample loop);
    with ``out`` (of ``token_dtype``, at least the shard's ids long: ``raw_bytes / width``
    is always enough), written into its start, so a reader of many shards copies once."""
    token_dtype = np.dtype(token_dtype).newbyteorder("<")
    width = token_dtype.itemsize
    buf = np.frombuffer(data, dtype=np.uint8)
    if len(buf) < 8:
        raise BadInputError(f"shard {ref.url} is too short to be an MDS shard")
    n = int(np.frombuffer(data, np.uint32, count=1)[0])
    if n != ref.samples or 4 + 4 * (n + 1) > len(buf):
        raise BadInputError(
            f"shard {ref.url} says it holds {n} samples, index.json says {ref.samples}: corrupt shard"
        )
    offsets = np.frombuffer(data, np.uint32, count=n + 1, offset=4).astype(np.int64)
    if n and (offsets[-1] != len(buf) or np.any(np.diff(offsets) < 0) or offsets[0] < 4 + 4 * (n + 1)):
        raise BadInputError(f"shard {ref.url} has inconsistent sample offsets: corrupt shard")

    var_cols = [i for i, s in enumerate(ref.column_sizes) if s is None]
    col = ref.column_names.index(TOKENS_COLUMN)
    head = 4 * len(var_cols)
    if n and np.any(np.diff(offsets) < head):
        raise BadInputError(f"shard {ref.url} has samples shorter than their headers: corrupt shard")

    def col_size(c: int) -> np.ndarray:
        if ref.column_sizes[c] is not None:
            return np.full(n, ref.column_sizes[c], np.int64)
        k = var_cols.index(c)
        return buf[(offsets[:-1, None] + 4 * k + np.arange(4))].view("<u4").reshape(n).astype(np.int64)

    begin = offsets[:-1] + head
    for c in range(col):
        begin = begin + col_size(c)
    nbytes = col_size(col)
    if n and np.any(begin + nbytes > offsets[1:]):
        raise BadInputError(f"shard {ref.url} has a column running past its sample: corrupt shard")
    odd = np.flatnonzero(nbytes % width)
    if len(odd):
        raise BadInputError(
            f"shard {ref.url}, sample {int(odd[0])}: '{TOKENS_COLUMN}' holds {int(nbytes[odd[0]])} bytes, "
            f"not a multiple of {width} ({token_dtype.name} token ids)"
        )

    total = int(nbytes.sum())
    if out is not None and (out.dtype != token_dtype.newbyteorder("=") or len(out) * width < total):
        raise ValueError(f"out holds {len(out)} {out.dtype} ids, shard {ref.url} needs {total // width} {token_dtype}")
    dest = out[:total // width] if out is not None and np.little_endian else None  # (else copied below)
    if n > 1 and (nbytes == nbytes[0]).all() and (np.diff(begin) == begin[1] - begin[0]).all():
        # samples of one length at one stride (what `convert` writes): one strided copy
        rows = np.lib.stride_tricks.as_strided(buf[begin[0]:], (n, int(nbytes[0])), (int(begin[1] - begin[0]), 1),
                                               writeable=False)
        if dest is not None:
            np.copyto(dest.view(np.uint8).reshape(n, int(nbytes[0])), rows)
            tokens = dest
        else:
            tokens = rows.reshape(-1).view(token_dtype)
    else:
        # Keep the token bytes of every sample and drop what lies between them (headers,
        # other columns) with one boolean mask built from alternating run lengths.
        gaps = begin - np.concatenate(([0], begin[:-1] + nbytes[:-1])) if n else np.zeros(0, np.int64)
        runs = np.empty(2 * n + 1, np.int64)
        runs[0:-1:2] = gaps
        runs[1::2] = nbytes
        runs[-1] = len(buf) - (begin[-1] + nbytes[-1]) if n else len(buf)
        keep = np.repeat(np.tile(np.array([False, True]), n + 1)[: 2 * n + 1], runs)
        if dest is not None:
            np.compress(keep, buf, out=dest.view(np.uint8))
            tokens = dest
        else:
            tokens = buf[keep].view(token_dtype)
    if token_dtype.byteorder not in ("<", "=", "|"):
        tokens = tokens.astype(token_dtype.newbyteorder("="))
    if out is not None and tokens is not dest:
        out[:len(tokens)] = tokens
        tokens = out[:len(tokens)]
    token_offsets = np.concatenate(([0], np.cumsum(nbytes // width))).astype(np.int64)
    return Samples(tokens, token_offsets)


def read_shard(ref: ShardRef, token_dtype="uint16", vocab_size: int | None = None,
               verify_hashes: bool = True, out: np.ndarray | None = None, buffers: Buffers | None = None) -> Samples:
    """Read and validate one shard: every id below ``vocab_size`` (``out``: as ``decode_shard``'s)."""
    shard = decode_shard(ref, read_shard_bytes(ref, verify_hashes, buffers), np.dtype(token_dtype), out)
    # (a maximum reads the ids once, without the bool array of a comparison)
    if vocab_size is not None and len(shard.tokens) and int(shard.tokens.max()) >= vocab_size:
        pos = int(np.flatnonzero(shard.tokens >= vocab_size)[0])
        sample = int(np.searchsorted(shard.offsets, pos, side="right") - 1)
        raise BadInputError(
            f"shard {ref.url}, sample {sample}: token id {int(shard.tokens[pos])} at position "
            f"{pos - int(shard.offsets[sample])} is >= vocab_size {vocab_size}"
        )
    return shard


def resolve_token_dtype(configured: str, root: str) -> str:
    if configured != "auto":
        return configured
    return str(read_sidecar(root).get("token_dtype", "uint16"))
