"""Where the documents come from: finding the source shards and reading their documents.

A source shard is one source file (local path or fsspec glob of ``.jsonl``, ``.txt``
or ``.parquet``; ``.gz``/``.zst`` compression is inferred for text files) or one
source shard of a streamed Hugging Face dataset, in a stable order. Its documents
are handed out in batches small enough to bound a task's memory; one that is not
valid UTF-8 is an error, or is counted and skipped (``invalid_utf8``).
"""

from __future__ import annotations

import json
import os
import posixpath
import re
from typing import Iterator

import fsspec
import numpy as np

from ngram_dask.config import ConvertConfig
from ngram_dask.convert.settings import ConvertSettings, SourceShard
from ngram_dask.errors import BadInputError, UserError
from ngram_dask.storage import get_fs, is_local, local_path

HF_PREFIX = "hf:"
TEXT_COMPRESSIONS = (".gz", ".zst", ".zstd", ".bz2", ".xz")
KINDS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".txt": "txt", ".parquet": "parquet"}
BATCH_DOCS = 1024  # documents per tokenizer call
BATCH_CHARS = 8 << 20  # ... or fewer when they are long: bounds a task's memory


# ---------------------------------------------------------------------------- finding shards


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name).lstrip(".") or "_"


def file_kind(url: str) -> str:
    """jsonl / txt / parquet from the file name (a compression suffix is allowed on text)."""
    name = posixpath.basename(url).lower()
    stem = name
    for suffix in TEXT_COMPRESSIONS:
        if name.endswith(suffix):
            stem = name[: -len(suffix)]
            break
    ext = posixpath.splitext(stem)[1]
    kind = KINDS.get(ext)
    if kind is None or (kind == "parquet" and stem != name):
        raise BadInputError(
            f"{url}: unsupported source file type (expected .jsonl, .txt or .parquet; "
            f"jsonl and txt may end in {', '.join(TEXT_COMPRESSIONS)})"
        )
    return kind


def _is_hub_id(source: str) -> bool:
    if source.startswith(HF_PREFIX):
        return True
    if "://" in source or any(c in source for c in "*?[") or os.path.exists(source):
        return False
    return bool(re.fullmatch(r"[\w.-]+(/[\w.-]+)?", source)) and not _known(source)


def _glob_files(source: str) -> list[tuple[str, int]]:
    """Files matching ``source`` (a path, a folder, or a glob), with their sizes, sorted."""
    fs, path = get_fs(source)
    protocol = None if is_local(source) else source.split("://", 1)[0]
    try:
        if fs.isdir(path):
            found = {p: info for p, info in fs.glob(posixpath.join(path, "**"), detail=True).items()
                     if info.get("type") == "file" and _known(p)}
        else:
            found = fs.glob(path, detail=True) if any(c in path for c in "*?[") else (
                {path: fs.info(path)} if fs.exists(path) else {})
            found = {p: info for p, info in found.items() if info.get("type") == "file"}
    except OSError as exc:
        raise BadInputError(f"cannot list source {source}: {exc}") from None
    files = []
    for p in sorted(found):
        url = p if protocol is None else f"{protocol}://{p}"
        files.append((url, int(found[p].get("size") or 0)))
    return files


def _known(path: str) -> bool:
    try:
        file_kind(path)
        return True
    except BadInputError:
        return False


def discover_shards(c: ConvertConfig) -> list[SourceShard]:
    """All source shards, in a stable order (sorted files, or the hub dataset's shards)."""
    source = c.source
    if _is_hub_id(source):
        dataset_id = source[len(HF_PREFIX):] if source.startswith(HF_PREFIX) else source
        n = getattr(_load_hf(dataset_id, c.hf_config, c.hf_split), "num_shards", None)
        if not n:
            raise BadInputError(f"dataset {dataset_id!r} (split {c.hf_split!r}) has no shards to stream")
        width = max(5, len(str(n - 1)))
        return [SourceShard(i, f"shard-{i:0{width}d}-of-{n:0{width}d}", "hf", dataset_id, n) for i in range(n)]

    files = _glob_files(source)
    if not files:
        raise BadInputError(f"no source files match {source}")
    urls = [u for u, _ in files]
    base = posixpath.dirname(urls[0]) if len(urls) == 1 else posixpath.commonpath(
        [local_path(u) if is_local(u) else u.split("://", 1)[1] for u in urls])
    width = max(5, len(str(len(files) - 1)))
    shards = []
    for i, (url, size) in enumerate(files):
        kind = file_kind(url)
        if size == 0:
            raise BadInputError(f"source file {url} is empty")
        rel = posixpath.relpath(local_path(url) if is_local(url) else url.split("://", 1)[1], base)
        shards.append(SourceShard(i, f"{i:0{width}d}-{_safe(rel.replace('/', '_'))}", kind, url))
    return shards


def _load_hf(dataset_id: str, config: str | None, split: str):
    """``datasets.load_dataset(..., streaming=True)``, or a UserError that says why not."""
    import datasets

    try:
        return datasets.load_dataset(dataset_id, config, split=split, streaming=True)
    except (OSError, ValueError) as exc:  # DatasetNotFoundError and ConnectionError are OSErrors
        offline = os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = " (offline mode: only local folders and the datasets cache are searched)" if offline else ""
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot load dataset {dataset_id!r}{hint}: {first}") from None


# ---------------------------------------------------------------------------- reading documents


class Utf8:
    """Decodes documents; undecodable ones are counted and skipped, or an error (invalid_utf8)."""

    def __init__(self, policy: str):
        self.policy, self.skipped, self.first = policy, 0, None

    def decode(self, data: bytes, where: str) -> str | None:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            return self.bad(where, f"byte {exc.start}")

    def check(self, text: str, where: str) -> str | None:
        """JSON can escape lone surrogates (\\ud800), which no UTF-8 encoder accepts."""
        try:
            text.encode("utf-8")
            return text
        except UnicodeEncodeError as exc:
            return self.bad(where, f"character {exc.start}")

    def bad(self, where: str, detail: str) -> None:
        if self.policy == "error":
            raise BadInputError(f"{where}: document is not valid UTF-8 ({detail}); "
                                "pass --invalid-utf8 skip to count and skip such documents")
        self.skipped += 1
        self.first = self.first or where
        return None


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _text_of(record, text_field: str, where: str) -> str:
    if not isinstance(record, dict):
        raise BadInputError(f"{where}: expected a JSON object with a {text_field!r} field")
    if text_field not in record:
        known = ", ".join(sorted(map(str, record))) or "none"
        raise BadInputError(f"{where}: no text field {text_field!r} (fields: {known}); set --text-field")
    text = record[text_field]
    if not isinstance(text, str):
        raise BadInputError(f"{where}: field {text_field!r} is {type(text).__name__}, not a string")
    return text


def _lines(f, chunk: int = 1 << 20) -> Iterator[bytes]:
    """Lines of a binary stream, without their newline; by chunks, since some decompressing
    streams (zstd) have no readline."""
    rest = b""
    while True:
        data = f.read(chunk)
        if not data:
            break
        lines = (rest + data).split(b"\n")
        rest = lines.pop()
        yield from lines
    if rest:
        yield rest


def _jsonl_documents(url: str, s: ConvertSettings, utf8: Utf8) -> Iterator[str]:
    with fsspec.open(url, "rb", compression="infer") as f:
        for lineno, line in enumerate(_lines(f), 1):
            if not line.strip():
                continue
            where = f"{url}:{lineno}"
            raw = utf8.decode(line, where)
            if raw is None:
                continue
            try:
                record = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise BadInputError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
            text = _text_of(record, s.text_field, where)
            if _SURROGATE_ESCAPE.search(line) and utf8.check(text, where) is None:
                continue
            yield text


def _txt_documents(url: str, s: ConvertSettings, utf8: Utf8) -> Iterator[str]:
    with fsspec.open(url, "rb", compression="infer") as f:
        if s.txt_mode == "file":
            text = utf8.decode(f.read(), url)
            if text is not None:
                yield text
            return
        for lineno, line in enumerate(_lines(f), 1):
            line = line.rstrip(b"\r")
            if line.strip():  # blank lines are not documents
                text = utf8.decode(line, f"{url}:{lineno}")
                if text is not None:
                    yield text


def _parquet_documents(url: str, s: ConvertSettings, utf8: Utf8) -> Iterator[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with fsspec.open(url, "rb") as f:
        try:
            pf = pq.ParquetFile(f)
        except (pa.ArrowInvalid, OSError) as exc:
            raise BadInputError(f"{url}: not a readable Parquet file ({exc})") from None
        names = pf.schema_arrow.names
        if s.text_field not in names:
            raise BadInputError(f"{url}: no text column {s.text_field!r} (columns: {', '.join(names)}); "
                                "set --text-field")
        kind = pf.schema_arrow.field(s.text_field).type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)
                or pa.types.is_binary(kind) or pa.types.is_large_binary(kind)):
            raise BadInputError(f"{url}: column {s.text_field!r} is {kind}, not text")
        row = 0
        for batch in pf.iter_batches(batch_size=BATCH_DOCS, columns=[s.text_field]):
            col = batch.column(0)
            if col.null_count:
                first = row + int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
                raise BadInputError(f"{url}: row {first} has no text (null {s.text_field!r})")
            # Arrow does not promise valid UTF-8 in files it did not write: decode ourselves.
            binary = pa.large_binary() if pa.types.is_large_string(kind) or pa.types.is_large_binary(kind) \
                else pa.binary()
            for i, data in enumerate(col.cast(binary).to_pylist()):
                text = utf8.decode(data, f"{url}: row {row + i}")
                if text is not None:
                    yield text
            row += len(col)


def _hf_documents(shard: SourceShard, s: ConvertSettings, utf8: Utf8) -> Iterator[str]:
    ds = _load_hf(shard.url, s.hf_config, s.hf_split).shard(num_shards=shard.hf_shards, index=shard.index)
    for i, record in enumerate(ds):
        where = f"{shard.url} shard {shard.index}/{shard.hf_shards}, row {i}"
        text = utf8.check(_text_of(record, s.text_field, where), where)
        if text is not None:
            yield text


def iter_documents(shard: SourceShard, s: ConvertSettings, utf8: Utf8) -> Iterator[str]:
    if shard.kind == "hf":
        return _hf_documents(shard, s, utf8)
    reader = {"jsonl": _jsonl_documents, "txt": _txt_documents, "parquet": _parquet_documents}[shard.kind]
    return reader(shard.url, s, utf8)


def batches(docs: Iterator[str]) -> Iterator[list[str]]:
    batch, chars = [], 0
    for doc in docs:
        batch.append(doc)
        chars += len(doc)
        if len(batch) >= BATCH_DOCS or chars >= BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch
