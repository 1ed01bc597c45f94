"""The final counts as Dask DataFrames, one partition per id0 chunk.

    import ngram_dask
    tri = ngram_dask.counts("data/work", 3)                  # or "data/ngrams.duckdb", or "s3://…/work"
    tri.nlargest(100, "count").compute()                      # the 100 most frequent trigrams
    tri.groupby("id0")["count"].sum().compute()               # total count per first id

Partitioning (the contract): a build with K chunks gives K partitions; partition ``c``
holds exactly the rows whose ``id0 % K == c``, sorted by the id columns. So every
row of one ``id0`` (and of one prefix) is in one partition: per-prefix work needs no
shuffle (``map_partitions`` suffices). Divisions are unknown to Dask (chunks are
residues of ``id0``, not ranges), so use ``map_partitions``/reductions rather than
index-based joins.

Two sources give the same frames:

* a **work dir** (local or any fsspec URL such as ``s3://``): the aggregate step's
  per-chunk Parquet files, ``<work>/aggregate/n=<n>/{ngrams,prefixes}/chunk=<c>.parquet``
  (a chunk summed in key ranges has a row group per range, still one file, still sorted),
  read straight from storage by the workers: nothing is copied to one machine;
* a **catalog** (a local ``.duckdb`` file): each partition opens the database
  read-only and selects its chunk (the file must be reachable at the same path
  from every worker).

Columns are the catalog's: ``id0..id{n-1}`` (``uint16``, or ``uint32`` for wide
vocabularies) and ``count`` (``uint64``); prefixes have ``sum_count``, ``max_count``
(``uint64``) and ``frac_max`` (``float64``) after the ids.
"""

from __future__ import annotations

from dataclasses import dataclass

from ngram_dask.errors import UserError
from ngram_dask.schema import ngram_columns, ngram_table, prefix_columns, prefix_table
from ngram_dask.storage import get_fs, join

_SQL_TO_NUMPY = {"USMALLINT": "uint16", "UINTEGER": "uint32", "UBIGINT": "uint64", "DOUBLE": "float64"}
TABLES = ("ngrams", "prefixes")


@dataclass(frozen=True)
class _Source:
    kind: str  # "work_dir" or "catalog"
    location: str
    chunks: int
    vocab_size: int
    tables: frozenset[str] = frozenset()  # a catalog's tables (read with its info, one open)


def _columns(n: int, table: str, vocab_size: int) -> list[tuple[str, str]]:
    cols = ngram_columns(n, vocab_size) if table == "ngrams" else prefix_columns(n, vocab_size)
    return [(name, _SQL_TO_NUMPY[sql]) for name, sql in cols]


def _meta(columns: list[tuple[str, str]]):
    import pandas as pd

    return pd.DataFrame({name: pd.Series(dtype=dtype) for name, dtype in columns})


def work_dir_manifest(work_dir: str) -> dict | None:
    """What the build recorded in its work dir (``ngrams.pipeline.work_dir_manifest``)."""
    from ngram_dask.runtime import Manifest

    return Manifest(join(work_dir, "manifest.json"), {}, f"work dir {work_dir}").read()


def _open_source(source: str) -> _Source:
    if source.endswith(".duckdb") and "://" not in source:
        from ngram_dask.db import read_info, read_only, table_names

        with read_only(source) as con:
            try:
                info = read_info(con)
                tables = frozenset(table_names(con))
            except Exception:
                raise UserError(f"{source} is not an ngram-dask catalog (no catalog_info table)") from None
        if "chunks" not in info:
            raise UserError(f"{source} is not an ngram-dask catalog (catalog_info has no chunks)")
        return _Source("catalog", source, int(info["chunks"]), int(info["vocab_size"]), tables)
    manifest = work_dir_manifest(source)
    if manifest is None:
        raise UserError(f"{source} is neither a catalog (.duckdb) nor a work dir of ngram-dask (no manifest.json)")
    return _Source("work_dir", source, int(manifest["chunks"]), int(manifest["vocab_size"]))


# (Not named "columns": from_map passes a projection under that name to functions that take it.)
def _read_chunk_file(chunk: int, urls: dict[int, str], schema: list[tuple[str, str]], options: dict):
    """One partition from the work dir: the chunk's final Parquet file (or no rows)."""
    import pyarrow.parquet as pq

    _ensure_options(options)
    url = urls.get(chunk)
    if url is None:
        return _meta(schema)
    fs, path = get_fs(url)
    with fs.open(path, "rb") as f:
        frame = pq.read_table(f, columns=[c for c, _ in schema]).to_pandas()
    return frame.astype(dict(schema), copy=False)


def _read_chunk_catalog(chunk: int, db: str, table: str, chunks: int, schema: list[tuple[str, str]]):
    """One partition from the catalog: ``WHERE id0 % K = c``, in id order."""
    from ngram_dask.db import read_only

    names = [c for c, _ in schema]
    ids = [c for c in names if c.startswith("id")]
    with read_only(db) as con:
        frame = con.execute(
            f"SELECT {', '.join(names)} FROM {table} WHERE id0 % ? = ? ORDER BY {', '.join(ids)}",
            [chunks, chunk]).df()
    return frame.astype(dict(schema), copy=False)


def _ensure_options(options: dict) -> None:
    """Storage options on a worker: applied once per process (they travel with the graph)."""
    import fsspec.config

    from ngram_dask.storage import apply_storage_options

    if any(fsspec.config.conf.get(p) != {**fsspec.config.conf.get(p, {}), **c} for p, c in options.items()):
        apply_storage_options(options)


def counts(source: str, n: int = 3, table: str = "ngrams", s3_endpoint_url: str | None = None,
           s3_region: str | None = None):
    """The final ``table`` ("ngrams" or "prefixes") of ``n`` as a Dask DataFrame.

    ``source`` is a build's work dir (local or fsspec URL) or its catalog ``.duckdb``
    file. One partition per id0 chunk: partition ``c`` holds the rows with
    ``id0 % K == c``, sorted by the ids (see the module docstring). The S3 settings
    are the build's ``--s3-endpoint-url``/``--s3-region``; credentials come from the
    usual AWS settings of each worker.
    """
    import dask
    import dask.dataframe as dd

    from ngram_dask.storage import use_storage

    options = use_storage(s3_endpoint_url, s3_region)
    if table not in TABLES:
        raise UserError(f"table must be one of {', '.join(TABLES)}, got {table!r}")
    if table == "prefixes" and n < 2:
        raise UserError("prefix tables exist for n >= 2 only")
    src = _open_source(source)
    columns = _columns(n, table, src.vocab_size)
    chunk_ids = list(range(src.chunks))
    with dask.config.set({"dataframe.convert-string": False}):
        if src.kind == "catalog":
            name = ngram_table(n) if table == "ngrams" else prefix_table(n)
            if name not in src.tables:
                raise UserError(f"catalog {source} has no table {name}")
            return dd.from_map(_read_chunk_catalog, chunk_ids, args=[src.location, name, src.chunks, columns],
                               meta=_meta(columns), label=f"{name}-chunks", enforce_metadata=False)
        urls = _finished_chunk_files(src.location, n, table, src.chunks)
        return dd.from_map(_read_chunk_file, chunk_ids, args=[urls, columns, options], meta=_meta(columns),
                           label=f"{ngram_table(n) if table == 'ngrams' else prefix_table(n)}-chunks",
                           enforce_metadata=False)


def _finished_chunk_files(work_dir: str, n: int, table: str, chunks: int) -> dict[int, str]:
    """Chunk -> final file, from the aggregate markers; every chunk must be aggregated."""
    from ngram_dask.ngrams.aggregate import AggregateSettings, aggregate_chunk
    from ngram_dask.runtime import completed

    urls: dict[int, str] = {}
    missing = []
    settings = AggregateSettings(work_dir=work_dir)
    for c in range(chunks):
        marker = completed(aggregate_chunk, n, c, settings)
        if marker is None:
            missing.append(c)
            continue
        url = marker.get("files", {}).get(table)
        if url:
            urls[c] = url
    if missing:
        raise UserError(f"work dir {work_dir}: {len(missing)} chunk(s) of n={n} are not aggregated yet "
                        f"(first: {missing[0]}); run the build's aggregate step first")
    return urls

