"""Stage 0, convert: raw text -> tokenized MDS, one Dask task per input shard.

An input shard is one source file (local path or fsspec glob of ``.jsonl``,
``.txt`` or ``.parquet``; ``.gz``/``.zst`` compression is inferred for text files)
or one source shard of a streamed Hugging Face dataset. Each task tokenizes its
shard's documents in batches with the fast tokenizer, wraps every document as
``BOS + text + EOS`` (ids taken from the tokenizer, not re-encoded from text),
concatenates them and cuts ``seq_len``-token samples, the remainder carrying over
into the next sample (``wrap``) or not (each document cut on its own). The last,
shorter sample of a shard is kept.

Output layout, for ``out`` a local folder or any fsspec URL::

    out/<shard>/index.json, shard.00000.mds.zstd, ...   # one MDS sub-dataset per input shard
    out/<shard>/finished                                 # written last: the shard's statistics
    out/index.json                                       # all finished sub-datasets, merged
    out/ngram_dask.json                                  # token_dtype, tokenizer, seq_len, ...

A task writes its sub-dataset into a temporary folder, moves it into place and
writes ``finished`` last; a rerun skips shards whose marker matches and redoes the
others from scratch, so nothing half-written ever looks finished. The root index is
written by the client at the end, from the finished shards only.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Iterator

import fsspec
import numpy as np

from ngram_dask.config import Config, ConvertConfig, parse_size
from ngram_dask.errors import BadInputError, ConfigError, UserError
from ngram_dask.mds import SIDECAR
from ngram_dask.runtime import DiskFull, map_tasks, resumable
from ngram_dask.storage import (
    apply_storage_options,
    atomic_write_bytes,
    get_fs,
    is_local,
    join,
    local_path,
    read_marker,
    redact_url,
    storage_options,
    write_marker,
)

Announce = Callable[[str], None]

MARKER = "finished"
HF_PREFIX = "hf:"
TEXT_COMPRESSIONS = (".gz", ".zst", ".zstd", ".bz2", ".xz")
KINDS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".txt": "txt", ".parquet": "parquet"}
BATCH_DOCS = 1024  # documents per tokenizer call
BATCH_CHARS = 8 << 20  # ... or fewer when they are long: bounds a task's memory
_STAGING = ".staging-"  # prefix of a task's temporary sub-dataset folder under out/


@dataclass(frozen=True)
class SourceShard:
    """One unit of work: a source file, or shard ``hf_index`` of ``hf_shards`` of a hub dataset."""

    index: int  # position among all source shards (before --begin/--end-shard)
    name: str  # the sub-dataset's folder name under out/
    kind: str  # jsonl | txt | parquet | hf
    url: str  # file URL or dataset id
    hf_shards: int = 0

    @property
    def source(self) -> str:
        """What the finished marker records: a rerun redoes the shard if this changes."""
        return f"{self.url}#{self.index}/{self.hf_shards}" if self.kind == "hf" else self.url


@dataclass(frozen=True)
class ConvertSettings:
    """Everything a task needs; small, so it travels in the task graph."""

    out: str
    tokenizer: str
    seq_len: int
    wrap: bool
    bos_id: int | None
    eos_id: int | None
    token_dtype: str
    text_field: str
    txt_mode: str
    compression: str | None
    size_limit: int
    max_samples_per_shard: int | None
    invalid_utf8: str
    hf_split: str
    hf_config: str | None
    identity: tuple[tuple[str, str], ...] = field(default=())

    @property
    def identity_dict(self) -> dict:
        """The settings the samples depend on, as JSON values (recorded in markers and the sidecar)."""
        return {k: json.loads(v) for k, v in self.identity}


@dataclass
class ConvertReport:
    out: str = ""  # the MDS root written
    shards_total: int = 0  # in the source
    shards_run: int = 0  # in --begin/--end-shard
    converted: int = 0
    skipped: int = 0  # finished by an earlier run
    documents: int = 0
    tokens: int = 0
    samples: int = 0
    bytes: int = 0
    invalid_utf8: int = 0
    first_invalid: str | None = None
    seconds: float = 0.0
    new_tokens: int = 0  # tokenized by this run (for the rate)
    indexed_shards: int = 0  # sub-datasets in the root index.json
    token_dtype: str = "uint16"
    dashboard: str | None = None


# ---------------------------------------------------------------------------- sources


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


class _Utf8:
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


def _jsonl_documents(url: str, s: ConvertSettings, utf8: _Utf8) -> Iterator[str]:
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


def _txt_documents(url: str, s: ConvertSettings, utf8: _Utf8) -> Iterator[str]:
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


def _parquet_documents(url: str, s: ConvertSettings, utf8: _Utf8) -> Iterator[str]:
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


def _hf_documents(shard: SourceShard, s: ConvertSettings, utf8: _Utf8) -> Iterator[str]:
    ds = _load_hf(shard.url, s.hf_config, s.hf_split).shard(num_shards=shard.hf_shards, index=shard.index)
    for i, record in enumerate(ds):
        where = f"{shard.url} shard {shard.index}/{shard.hf_shards}, row {i}"
        text = utf8.check(_text_of(record, s.text_field, where), where)
        if text is not None:
            yield text


def iter_documents(shard: SourceShard, s: ConvertSettings, utf8: _Utf8) -> Iterator[str]:
    if shard.kind == "hf":
        return _hf_documents(shard, s, utf8)
    reader = {"jsonl": _jsonl_documents, "txt": _txt_documents, "parquet": _parquet_documents}[shard.kind]
    return reader(shard.url, s, utf8)


def _batches(docs: Iterator[str]) -> Iterator[list[str]]:
    batch, chars = [], 0
    for doc in docs:
        batch.append(doc)
        chars += len(doc)
        if len(batch) >= BATCH_DOCS or chars >= BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


# ---------------------------------------------------------------------------- tokens -> samples


_per_thread = threading.local()


def _worker_tokenizer(name_or_path: str):
    """One tokenizer per worker thread, loaded on its first task.

    Per thread, not per process: a fast tokenizer resets its padding/truncation state
    on every call and refuses concurrent use ("Already borrowed").
    """
    from ngram_dask.tokenizer import load_tokenizer

    cache = _per_thread.__dict__.setdefault("tokenizers", {})
    if name_or_path not in cache:
        cache[name_or_path] = load_tokenizer(name_or_path)
    return cache[name_or_path]


def encode_documents(tokenizer, texts: list[str], bos_id: int | None, eos_id: int | None,
                     dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of ``BOS + text + EOS`` for each text, concatenated, and ``len + 1`` document offsets.

    The separators are inserted as ids, not as text: the tokenizer's own special tokens
    (``add_special_tokens``) are off.
    """
    encoded = tokenizer(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    bos = np.array([] if bos_id is None else [bos_id], dtype)
    eos = np.array([] if eos_id is None else [eos_id], dtype)
    pieces = []
    for ids in encoded:  # one step per document; the ids themselves are converted in C
        pieces += (bos, np.asarray(ids, dtype), eos)
    tokens = np.concatenate(pieces) if pieces else np.empty(0, dtype)
    lengths = np.fromiter((len(ids) for ids in encoded), np.int64, len(encoded)) + len(bos) + len(eos)
    return tokens, np.concatenate(([0], np.cumsum(lengths)))


class SampleCutter:
    """Cuts token streams into ``seq_len`` samples: returned as ``(tokens, boundaries)``.

    wrap: documents run together and the remainder of a batch carries into the next
    one (and into the shard's last, shorter sample). No wrap: every document is cut on
    its own, its last piece is a shorter sample, nothing carries over.
    """

    def __init__(self, seq_len: int, wrap: bool, dtype: np.dtype):
        self.seq_len, self.wrap = seq_len, wrap
        self.carry = np.empty(0, dtype)

    def cut(self, tokens: np.ndarray, doc_offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        L = self.seq_len
        if self.wrap:
            stream = np.concatenate((self.carry, tokens))
            full = len(stream) // L * L
            self.carry = stream[full:].copy()
            return stream[:full], np.arange(0, full + 1, L, dtype=np.int64)
        lengths = np.diff(doc_offsets)
        pieces = -(-lengths // L)  # ceil; an empty document (no separators) gives no sample
        first = np.repeat(np.cumsum(pieces) - pieces, pieces)
        starts = np.repeat(doc_offsets[:-1], pieces) + L * (np.arange(pieces.sum()) - first)
        ends = np.minimum(starts + L, np.repeat(doc_offsets[1:], pieces))
        # Documents are contiguous, so each sample ends where the next one starts.
        return tokens, np.concatenate(([0], ends)) if len(ends) else np.zeros(1, np.int64)

    def finish(self) -> np.ndarray:
        rest, self.carry = self.carry, self.carry[:0]
        return rest


# ---------------------------------------------------------------------------- one task


def _finished(done: dict, shard: SourceShard, s: ConvertSettings) -> bool:
    """A marker counts only when it was written for this source with these settings."""
    return done.get("identity") == s.identity_dict and done.get("source") == shard.source


@resumable(lambda shard, s: join(s.out, shard.name, MARKER), accept=_finished)
def convert_shard(shard: SourceShard, s: ConvertSettings) -> dict:
    """Tokenize one source shard into ``out/<shard.name>/`` (a resumable task)."""
    tokenizer = _worker_tokenizer(s.tokenizer)
    if is_local(s.out):  # a sibling of the destination, so that moving it there is one rename
        staging = join(local_path(s.out), f"{_STAGING}{shard.name}-{uuid.uuid4().hex[:8]}")
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
    utf8 = _Utf8(s.invalid_utf8)
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

        for texts in _batches(iter_documents(shard, s, utf8)):
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


# ---------------------------------------------------------------------------- the client


def settings_from(cfg: Config, tokenizer) -> ConvertSettings:
    c = cfg.convert
    compression = c.compression or None
    size_limit = parse_size(c.size_limit)

    bos_id = _special_id(tokenizer, c.bos_token, "bos")
    eos_id = _special_id(tokenizer, c.eos_token, "eos")
    vocab = len(tokenizer)
    token_dtype = "uint16" if vocab <= 1 << 16 else "uint32"
    identity = {  # what the samples depend on: a rerun with other values must not mix with these
        "tokenizer": cfg.tokenizer,
        "vocab_size": vocab,
        "token_dtype": token_dtype,
        "seq_len": c.seq_len,
        "wrap": c.wrap,
        "bos_id": bos_id,
        "eos_id": eos_id,
        "text_field": c.text_field,
        "txt_mode": c.txt_mode,
        "max_samples_per_shard": c.max_samples_per_shard,
        "invalid_utf8": c.invalid_utf8,
        "hf_split": c.hf_split,
        "hf_config": c.hf_config,
    }
    return ConvertSettings(
        out=c.out.rstrip("/") if c.out not in ("/",) else c.out, tokenizer=cfg.tokenizer,
        seq_len=c.seq_len, wrap=c.wrap, bos_id=bos_id, eos_id=eos_id, token_dtype=token_dtype,
        text_field=c.text_field, txt_mode=c.txt_mode, compression=compression, size_limit=size_limit,
        max_samples_per_shard=c.max_samples_per_shard, invalid_utf8=c.invalid_utf8,
        hf_split=c.hf_split, hf_config=c.hf_config,
        identity=tuple(sorted((k, json.dumps(v)) for k, v in identity.items())),
    )


def _special_id(tokenizer, configured: str | None, which: str) -> int | None:
    """The separator id: the configured token ('' = none), else the tokenizer's bos/eos token."""
    text = getattr(tokenizer, f"{which}_token") if configured is None else configured
    if not text:
        return None
    token_id = tokenizer.convert_tokens_to_ids(text)
    if token_id is None or (token_id == tokenizer.unk_token_id and text != tokenizer.unk_token):
        raise ConfigError(f"the tokenizer has no token {text!r} to use as {which.upper()} "
                          f"(set convert.{which}_token, or '' for none)")
    return int(token_id)


def _check_sidecar(s: ConvertSettings, source: str) -> dict:
    """out/ngram_dask.json: refuse an out folder converted with other settings, else (re)write it."""
    sidecar = {**s.identity_dict, "source": source}
    url = join(s.out, SIDECAR)
    existing = read_marker(url)
    if existing is None and fs_exists(join(s.out, "index.json")):
        raise UserError(f"{s.out} holds an MDS dataset that `ngram-dask convert` did not write; "
                        "use a fresh --out")
    fs, path = get_fs(s.out)
    if existing is not None and fs.glob(posixpath.join(path, "*", MARKER)):  # else nothing to mix with
        for key, value in sidecar.items():
            if existing.get(key) != value:
                raise UserError(
                    f"{s.out} holds a conversion with {key} = {existing.get(key)!r}, not {value!r}; "
                    "use a fresh --out (or delete this one)"
                )
    if existing == sidecar:
        return sidecar
    try:
        write_marker(url, sidecar)
    except OSError as exc:
        raise UserError(f"cannot write to {s.out}: {exc}") from None
    return sidecar


def fs_exists(url: str) -> bool:
    fs, path = get_fs(url)
    return fs.exists(path)


def _remove_staging_leftovers(out: str) -> int:
    """Staging folders of tasks that died (a killed worker or client) are never finished."""
    if not is_local(out):
        return 0
    root = local_path(out)
    stale = [e for e in os.listdir(root) if e.startswith(_STAGING)] if os.path.isdir(root) else []
    for entry in stale:
        shutil.rmtree(os.path.join(root, entry), ignore_errors=True)
    return len(stale)


def write_root_index(s: ConvertSettings, shards: list[SourceShard]) -> list[SourceShard]:
    """Merge the index.json of every finished sub-dataset into out/index.json (shard order).

    Basenames get their sub-folder prefixed, as ``streaming.base.util.merge_index``
    does, so ``StreamingDataset(local=out)`` and the build's reader see one dataset.
    """
    merged, included = [], []
    for shard in shards:
        done = read_marker(join(s.out, shard.name, MARKER))
        if done is None or not _finished(done, shard, s):
            continue
        with fsspec.open(join(s.out, shard.name, "index.json"), "rb") as f:
            index = json.load(f)
        for entry in index["shards"]:
            for key in ("raw_data", "zip_data", "raw_meta", "zip_meta"):
                if entry.get(key):
                    entry[key]["basename"] = posixpath.join(shard.name, entry[key]["basename"])
            merged.append(entry)
        included.append(shard)
    atomic_write_bytes(join(s.out, "index.json"), json.dumps({"version": 2, "shards": merged}).encode())
    return included


def run_convert(cfg: Config, announce: Announce = print) -> ConvertReport:
    from ngram_dask.cluster import get_client, install_storage_options, performance_report
    from ngram_dask.tokenizer import load_tokenizer

    cfg.check("convert")
    c = cfg.convert
    options = storage_options(cfg.storage.s3_endpoint_url, cfg.storage.s3_region)
    apply_storage_options(options)
    shards = discover_shards(c)
    if c.begin_shard >= len(shards):
        raise ConfigError(f"--begin-shard {c.begin_shard}: the source has {len(shards)} shard(s) "
                          f"(0..{len(shards) - 1})")
    todo = shards[c.begin_shard:c.end_shard]
    tokenizer = load_tokenizer(cfg.tokenizer)  # fail here, before any work, when it cannot be had
    s = settings_from(cfg, tokenizer)
    report = ConvertReport(shards_total=len(shards), shards_run=len(todo), token_dtype=s.token_dtype,
                           out=s.out)

    fs, out_path = get_fs(s.out)
    fs.makedirs(out_path, exist_ok=True)
    _check_sidecar(s, redact_url(c.source))
    _remove_staging_leftovers(s.out)
    sep = f"BOS {s.bos_id}, EOS {s.eos_id}"
    announce(f"convert: {len(todo)} of {len(shards)} source shard(s) -> {redact_url(s.out)} "
             f"({cfg.tokenizer}, {s.token_dtype}, seq_len {s.seq_len}{'' if s.wrap else ', no wrap'}, {sep})")

    t0 = time.perf_counter()
    with get_client(cfg.cluster, announce) as client:
        report.dashboard = client.dashboard_link
        install_storage_options(client, options)
        with performance_report(cfg.cluster.performance_report):
            disk = DiskFull(f"the output {redact_url(s.out)}")
            for i, st in enumerate(map_tasks(client, convert_shard, todo, disk, s=s), 1):
                _tally(report, st)
                what = "already done" if st["skipped"] else (
                    f"{st['documents']:,} docs, {st['tokens']:,} tokens, {st['samples']:,} samples, "
                    f"{st['bytes'] / 1e6:.2f} MB, {st['seconds']:.1f} s")
                bad = f", {st['invalid_utf8']} invalid UTF-8 skipped" if st.get("invalid_utf8") else ""
                announce(f"  [{i}/{len(todo)}] {st['name']}: {what}{bad}")
    report.seconds = time.perf_counter() - t0
    _remove_staging_leftovers(s.out)
    report.indexed_shards = len(write_root_index(s, shards))
    return report


def _tally(report: ConvertReport, st: dict) -> None:
    if st["skipped"]:
        report.skipped += 1
    else:
        report.converted += 1
        report.new_tokens += st["tokens"]
    report.documents += st["documents"]
    report.tokens += st["tokens"]
    report.samples += st["samples"]
    report.bytes += st["bytes"]
    report.invalid_utf8 += st.get("invalid_utf8", 0)
    report.first_invalid = report.first_invalid or st.get("first_invalid")


def summary_lines(report: ConvertReport) -> list[str]:
    out = report.out
    rate = report.new_tokens / report.seconds if report.seconds else 0.0
    lines = [
        "", "summary:",
        f"  shards {report.shards_run} ({report.converted} converted, {report.skipped} already done), "
        f"documents {report.documents:,}, tokens {report.tokens:,}, samples {report.samples:,}",
        f"  written {report.bytes / 1e6:,.2f} MB ({report.token_dtype} ids) in {report.seconds:.1f} s, "
        f"{rate / 1e6:.2f}M tokens/s",
    ]
    if report.invalid_utf8:
        lines.append(f"  skipped {report.invalid_utf8:,} document(s) that are not valid UTF-8 "
                     f"(first: {report.first_invalid})")
    lines.append(f"  {out}/index.json lists {report.indexed_shards} of {report.shards_total} source shard(s)")
    if report.indexed_shards < report.shards_total:
        lines.append("  convert the rest (--begin-shard/--end-shard) before building on the full corpus")
    return lines
