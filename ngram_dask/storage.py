"""File-system edges: fsspec URLs, atomic writes, completion markers, SQL quoting.

Work units (an exploded shard, an aggregated chunk) write their outputs under a
temporary name and rename them into place, then write a ``_done`` marker last, in
the style of datatrove: a rerun skips every unit whose marker exists, and a retried
task simply overwrites its own deterministic file names.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import posixpath
import uuid
from typing import Iterator

import fsspec


def is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def local_path(url: str) -> str:
    return url[len("file://"):] if url.startswith("file://") else url


def get_fs(url: str):
    """``(filesystem, path)`` for a local path or any fsspec URL."""
    return fsspec.core.url_to_fs(url)


def join(root: str, *parts: str) -> str:
    if "://" in root:
        return "/".join([root.rstrip("/"), *parts])
    return os.path.join(root, *parts)


def _tmp_name(path: str) -> str:
    head, tail = posixpath.split(path)
    return posixpath.join(head, f".{tail}.tmp-{uuid.uuid4().hex[:8]}")


def atomic_write_bytes(url: str, data: bytes, durable: bool = True) -> None:
    """Write under a temp name, then rename. ``durable`` also fsyncs: markers need it, bulk
    part files don't (a part whose marker is missing is rewritten anyway)."""
    fs, path = get_fs(url)
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    if is_local(url):
        tmp = _tmp_name(path)
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                if durable:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            # A full disk must not keep the half-written temp file: it holds the space a rerun needs.
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    else:  # one PUT is atomic on object stores
        with fs.open(path, "wb") as f:
            f.write(data)


@contextlib.contextmanager
def atomic_write_path(url: str, scratch: str) -> Iterator[str]:
    """``with atomic_write_path(url, scratch) as path:`` a local file for a writer that wants
    a path (DuckDB's ``COPY ... TO``), published as ``url`` when the block ends: renamed
    into place when ``url`` is local (``path`` lies beside it), else uploaded in one PUT
    from the local folder ``scratch``. A block that fails leaves ``url`` as it was and no
    temp file behind."""
    fs, dst = get_fs(url)
    if is_local(url):
        os.makedirs(os.path.dirname(dst) or ".", exist_ok=True)
        tmp = _tmp_name(dst)
    else:
        tmp = os.path.join(scratch, f"{uuid.uuid4().hex[:8]}-{posixpath.basename(dst)}")
    try:
        yield tmp
        if is_local(url):
            os.replace(tmp, dst)
        else:
            fs.makedirs(posixpath.dirname(dst), exist_ok=True)
            fs.put_file(tmp, dst)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def atomic_write_parquet(url: str, table, **kwargs) -> int:
    """Write an Arrow table as Parquet under a temp name, then rename; returns bytes."""
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf, **kwargs)
    data = buf.getvalue()
    atomic_write_bytes(url, data, durable=False)
    return len(data)


def atomic_write_arrow(url: str, table, compression: str | None = "zstd") -> int:
    """Write an Arrow table as an Arrow IPC file (its buffers ``compression``-compressed)
    under a temp name, then rename; returns bytes. For parts one reader reads whole: in one
    process 2.5x faster to write and 2-5x faster to read than zstd Parquet, about as small."""
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema, options=pa.ipc.IpcWriteOptions(compression=compression)) as w:
        w.write_table(table)
    data = sink.getvalue()
    atomic_write_bytes(url, data, durable=False)
    return data.size


def read_arrow(url: str):
    """An ``atomic_write_arrow`` file as an Arrow table."""
    import pyarrow as pa

    fs, path = get_fs(url)
    with fs.open(path, "rb") as f:
        return pa.ipc.open_file(pa.py_buffer(f.read())).read_all()


def write_marker(url: str, info: dict) -> None:
    atomic_write_bytes(url, json.dumps(info, sort_keys=True, indent=1).encode())


def read_marker(url: str) -> dict | None:
    fs, path = get_fs(url)
    try:
        with fs.open(path, "rb") as f:
            return json.loads(f.read())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError:
        return None  # a torn marker counts as missing: the unit is redone


def glob(url_pattern: str) -> list[str]:
    fs, path = get_fs(url_pattern)
    found = sorted(fs.glob(path))
    if is_local(url_pattern):
        return found
    protocol = url_pattern.split("://", 1)[0]
    return [f"{protocol}://{p}" for p in found]


def sql_string(value: str) -> str:
    """A SQL string literal: the one place a path enters SQL text (COPY TO takes no parameter)."""
    return "'" + str(value).replace("'", "''") + "'"


def sql_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def storage_options(s3_endpoint_url: str | None = None, s3_region: str | None = None) -> dict:
    """fsspec's per-protocol defaults for S3 (endpoint and region only: never credentials)."""
    kwargs = {}
    if s3_endpoint_url:
        kwargs["endpoint_url"] = s3_endpoint_url
    if s3_region:
        kwargs["region_name"] = s3_region
    return {"s3": {"client_kwargs": kwargs}} if kwargs else {}


def use_storage(s3_endpoint_url: str | None = None, s3_region: str | None = None) -> dict:
    """Apply the S3 endpoint and region to every later fsspec call here; returns the options
    (for ``cluster.install_storage_options`` to apply them on the workers too)."""
    options = storage_options(s3_endpoint_url, s3_region)
    apply_storage_options(options)
    return options


def apply_storage_options(options: dict) -> None:
    """Make every later ``fsspec`` call in this process use ``options``."""
    import fsspec.config

    for protocol, conf in options.items():
        merged = dict(fsspec.config.conf.get(protocol, {}))
        for key, value in conf.items():
            if isinstance(value, dict):
                merged[key] = {**merged.get(key, {}), **value}
            else:
                merged[key] = value
        fsspec.config.conf[protocol] = merged
    if options:
        fsspec.AbstractFileSystem.clear_instance_cache()


def check_access(input_url: str, work_dir: str) -> str | None:
    """Run on each worker before a build: can it read the input and write the work dir?"""
    import socket

    host = socket.gethostname()
    try:
        fs, path = get_fs(input_url)
        if not fs.exists(path):
            return f"worker on {host} cannot see the input {input_url}"
    except Exception as exc:  # any backend error means the worker cannot use it
        return f"worker on {host} cannot read the input {input_url}: {exc}"
    probe = join(work_dir, f".probe-{host}-{uuid.uuid4().hex[:8]}")
    try:
        atomic_write_bytes(probe, b"ok")
        fs, path = get_fs(probe)
        fs.rm(path)
    except Exception as exc:
        return f"worker on {host} cannot write to the work dir {work_dir}: {exc}"
    return None


def redact_url(url: str | None) -> str | None:
    """Drop ``user:password@`` from a URL before it is logged or recorded."""
    if not url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    netloc, _, path = rest.partition("/")
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    return f"{scheme}://{netloc}/{path}" if path or rest.endswith("/") else f"{scheme}://{netloc}"
