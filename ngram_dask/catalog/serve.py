"""``ngram-dask serve``: the catalog in a browser and over a JSON API (Starlette + uvicorn).

Every endpoint is a thin wrapper over ``ngram_dask.catalog.api.Catalog`` (read-only, SQL with
parameters, names from an allow-list). A bad parameter answers HTTP 400 with
``{"error": "<one line>"}``. Endpoints are plain functions, which Starlette runs in its
thread pool, so concurrent requests each borrow their own DuckDB cursor. The page and
its script ship in ``ngram_dask/catalog/static/``: nothing is fetched from another host.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import tempfile
from pathlib import Path
from typing import Any, Callable

from ngram_dask.catalog.api import Catalog
from ngram_dask.errors import UserError
from ngram_dask.tokenizer import DEFAULT_TOKENIZER

STATIC = Path(__file__).resolve().parent / "static"
MAX_PAGE = 1000  # rows per page over HTTP; downloads have no limit
MAX_TOP = 1000
MAX_OFFSET = 1 << 62


class BadRequest(UserError):
    """A request parameter that cannot be used; answered with HTTP 400."""


# --- parameters ------------------------------------------------------------------------


def _int(params, name: str, default: int | None, lo: int, hi: int) -> int | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        raise BadRequest(f"{name} must be between {lo} and {hi}, got {value}")
    return value


def _ids(raw: str, name: str) -> list[int]:
    try:
        ids = [int(x) for x in raw.split(",") if x.strip() != ""]
    except ValueError:
        raise BadRequest(f"{name} must be comma-separated token ids, got {raw!r}") from None
    if not ids:
        raise BadRequest(f"{name} is empty: give comma-separated token ids")
    if any(not 0 <= i < 1 << 32 for i in ids):
        raise BadRequest(f"{name}: token ids are between 0 and 2^32-1")
    return ids


def _prompt(params, text: str = "text", ids: str = "ids"):
    if params.get(ids) not in (None, ""):
        if params.get(text) not in (None, ""):
            raise BadRequest(f"give {text} or {ids}, not both")
        return _ids(params[ids], ids)
    if params.get(text) is None:
        raise BadRequest(f"{text} (a prompt) or {ids} (comma-separated token ids) is required")
    return params[text]


def _check_known(params, allowed: set[str], prefixes: tuple[str, ...] = ()) -> None:
    for key in params.keys():
        if key not in allowed and not key.startswith(prefixes):
            raise BadRequest(f"unknown parameter {key!r} (known: {', '.join(sorted(allowed))}"
                             + (f", {'/'.join(prefixes)}<column>" if prefixes else "") + ")")


def selection(cat: Catalog, params) -> tuple[str, dict, str | None]:
    """(table, filters, sort) of a task-browser request; the same for a page and a download.

    Filters: ``contains=TEXT`` and ``min_<column>=X`` / ``max_<column>=X`` (inclusive) on
    any numeric column of the table; ``sort=-col,col2`` ('-' for descending).
    """
    table = params.get("table") or (cat.browsable() or ["top_trigrams"])[0]
    numeric = set(cat.numeric_columns(table))
    filters: dict[str, Any] = {}
    if params.get("contains"):
        filters["contains"] = params["contains"]
    if params.get("no_special") not in (None, "", "0"):
        filters["no_special"] = True
    for key, raw in params.items():
        for end, prefix in (("min", "min_"), ("max", "max_")):
            if key.startswith(prefix):
                col = key[len(prefix):]
                if col not in numeric:
                    raise BadRequest(f"{key}: {table} has no numeric column {col!r} "
                                     f"(numeric: {', '.join(sorted(numeric))})")
                if raw == "":
                    continue
                try:
                    x = float(raw)
                except ValueError:
                    raise BadRequest(f"{key} must be a number, got {raw!r}") from None
                if not math.isfinite(x):
                    raise BadRequest(f"{key} must be a finite number, got {raw!r}")
                filters.setdefault(col, {})[end] = x
    return table, filters, params.get("sort") or None


def _clean(value):
    """JSON-safe: NaN and infinities become null (JSON has neither)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    return value


# --- the app ---------------------------------------------------------------------------


def create_app(cat: Catalog):
    """The Starlette app over an open ``Catalog`` (which the caller closes)."""
    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.responses import FileResponse, Response
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    def json_response(obj, status: int = 200) -> Response:
        body = json.dumps(_clean(obj), ensure_ascii=False, allow_nan=False, default=str)
        return Response(body, status_code=status, media_type="application/json")

    def endpoint(fn: Callable) -> Callable:
        def run(request):
            try:
                return fn(request, request.query_params)
            except UserError as exc:
                return json_response({"error": str(exc).splitlines()[0] if str(exc) else type(exc).__name__}, 400)
        run.__name__ = fn.__name__
        return run

    @endpoint
    def info(request, q):
        _check_known(q, set())
        return json_response(cat.describe())

    @endpoint
    def next_tokens(request, q):
        _check_known(q, {"text", "ids", "top"})
        prompt = _prompt(q)
        top = _int(q, "top", 10, 1, MAX_TOP)
        ids = prompt if isinstance(prompt, list) else cat.tokenize(prompt)
        lookups = cat.lookups(ids, top)
        return json_response({"prompt": prompt if isinstance(prompt, str) else None,
                              "tokens": [{"id": i, "token": t} for i, t in zip(ids, cat.token_text(ids))],
                              "lookups": lookups, "found": any(lk["completions"] for lk in lookups)})

    @endpoint
    def count(request, q):
        _check_known(q, {"text", "ids"})
        prompt = _prompt(q)
        ids = prompt if isinstance(prompt, list) else cat.tokenize(prompt)
        return json_response({"ids": ids, "tokens": cat.token_text(ids), "count": cat.count(ids)})

    @endpoint
    def prob(request, q):
        _check_known(q, {"text", "ids", "next", "next_id"})
        prompt = _prompt(q)
        if q.get("next_id") not in (None, ""):
            if q.get("next") not in (None, ""):
                raise BadRequest("give next or next_id, not both")
            nxt: Any = _ids(q["next_id"], "next_id")
            if len(nxt) != 1:
                raise BadRequest("next_id is one token id")
            nxt = nxt[0]
        elif q.get("next"):
            nxt = q["next"]
        else:
            raise BadRequest("next (a one-token text) or next_id is required")
        table = cat.prob(prompt, nxt)
        nxt_id = nxt if isinstance(nxt, int) else cat.tokenize(nxt)[0]
        return json_response({"next": {"id": nxt_id, "token": cat.token_text([nxt_id])[0]},
                              "rows": table.to_pylist()})

    page_params = {"table", "contains", "no_special", "sort", "limit", "offset"}

    @endpoint
    def rows(request, q):
        _check_known(q, page_params, ("min_", "max_"))
        table, filters, sort = selection(cat, q)
        limit = _int(q, "limit", 50, 1, MAX_PAGE)
        offset = _int(q, "offset", 0, 0, MAX_OFFSET)
        page = cat.tasks(table, filters, sort, limit, offset)
        return json_response({"table": table, "total": cat.count_tasks(table, filters), "offset": offset,
                              "limit": limit, "sort": sort or ",".join(cat.default_order(table)),
                              "columns": page.column_names, "rows": page.to_pylist()})

    @endpoint
    def task(request, q):
        _check_known(q, {"table", "ids", "top"})
        table = q.get("table") or "top_trigrams"
        if not q.get("ids"):
            raise BadRequest("ids (the task's context ids, comma-separated) is required")
        return json_response(cat.task(table, _ids(q["ids"], "ids"), top=_int(q, "top", 20, 1, MAX_TOP)))

    @endpoint
    def contexts(request, q):
        _check_known(q, {"prompt", "ids", "limit"})
        prompt = _prompt(q, text="prompt")
        return json_response(cat.contexts(prompt, limit=_int(q, "limit", 20, 1, MAX_PAGE)))

    @endpoint
    def curve(request, q):
        _check_known(q, {"prompt", "ids"})
        return json_response(cat.curve(_prompt(q, text="prompt")))

    @endpoint
    def download(request, q):
        _check_known(q, (page_params | {"format"}) - {"limit", "offset"}, ("min_", "max_"))
        fmt = q.get("format", "csv")
        if fmt not in ("csv", "parquet"):
            raise BadRequest(f"format must be csv or parquet, got {fmt!r}")
        table, filters, sort = selection(cat, q)
        reader, cur = cat.tasks_reader(table, filters, sort)
        fd, path = tempfile.mkstemp(prefix="ngram-dask-", suffix="." + fmt)
        os.close(fd)
        try:
            _write(reader, path, fmt)
        except BaseException:
            os.unlink(path)
            raise
        finally:
            cur.close()
        return FileResponse(path, filename=f"{table}.{fmt}", background=BackgroundTask(os.unlink, path),
                            media_type="text/csv" if fmt == "csv" else "application/vnd.apache.parquet")

    def index(request):
        return FileResponse(STATIC / "index.html", media_type="text/html")

    routes = [
        Route("/", index),
        Route("/api/info", info),
        Route("/api/next", next_tokens),
        Route("/api/count", count),
        Route("/api/prob", prob),
        Route("/api/rows", rows),
        Route("/api/task", task),
        Route("/api/contexts", contexts),
        Route("/api/curve", curve),
        Route("/api/download", download),
        Mount("/static", StaticFiles(directory=str(STATIC)), name="static"),
    ]
    return Starlette(routes=routes)


def _write(reader, path: str, fmt: str) -> None:
    """Stream Arrow batches to a file, so a selection of millions of rows never sits in memory."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        with pq.ParquetWriter(path, reader.schema, compression="zstd") as w:
            for batch in reader:
                w.write_batch(batch)
    else:
        import pyarrow as pa
        import pyarrow.csv as pcsv

        # CSV has no list type: nested columns (the scan tables' ids) are written as JSON text.
        nested = [i for i, f in enumerate(reader.schema) if pa.types.is_nested(f.type)]
        schema = reader.schema
        for i in nested:
            schema = schema.set(i, pa.field(schema.field(i).name, pa.string()))
        with pcsv.CSVWriter(path, schema) as w:
            for batch in reader:
                cols = list(batch.columns)
                for i in nested:
                    cols[i] = pa.array([None if v is None else json.dumps(v) for v in cols[i].to_pylist()], pa.string())
                w.write_batch(pa.RecordBatch.from_arrays(cols, schema=schema))


# --- running it ------------------------------------------------------------------------


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, or a one-line UserError (port in use, unknown host...)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UserError(f"cannot resolve --host {host!r}: {exc.strerror}") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno in (98, 48):  # EADDRINUSE on Linux, macOS
            raise UserError(f"port {port} on {host} is in use: pick another with --port") from None
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}/"


def run_server(db: str, host: str = "127.0.0.1", port: int = 8000, tokenizer: str | None = None,
               configured_tokenizer: str = DEFAULT_TOKENIZER, announce=print) -> int:
    """Open ``db`` read-only, listen on host:port (0: any free port) and serve until interrupted.

    The first line announced is ``serving <db> at <url>`` once the socket listens.
    """
    import uvicorn

    with Catalog(db, tokenizer=tokenizer, configured_tokenizer=configured_tokenizer) as cat:
        if not cat.browsable() and not any(re.fullmatch(r"[a-z]+grams", t) for t in cat.tables):
            raise UserError(f"database {db} has neither n-gram nor top tables: run `ngram-dask build` first")
        cat.describe()  # fills the schema caches before the first request
        if any(n >= 2 for n in cat.ngrams) and "tokens" in cat.tables:
            cat.token_text([0])  # the token strings, loaded once
        if cat.info.get("tokenizer") or tokenizer:
            try:
                _ = cat.tokenizer  # loaded now, so the first completion does not wait for it
            except UserError as exc:
                announce(f"note: prompts cannot be tokenized ({exc}); token ids still work")
        sock = bind(host, port)
        try:
            config = uvicorn.Config(create_app(cat), log_level="warning", access_log=False, lifespan="off",
                                    timeout_graceful_shutdown=5)
            server = uvicorn.Server(config)
            announce(f"serving {db} at {url_of(sock)} (read-only; Ctrl-C stops)")
            server.run(sockets=[sock])
        finally:
            sock.close()
    return 0
