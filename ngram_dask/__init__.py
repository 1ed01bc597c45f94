"""ngram-dask: exact n-gram catalogs of tokenized corpora, built with Dask, Parquet and DuckDB.

The pipeline, one package per stage family:

    convert/   raw text -> tokenized MDS
    inputs/    the corpora a build reads: MDS, Megatron .bin/.idx, flat .bin/.npy, Parquet
    ngrams/    the build: explode -> aggregate -> load -> top (the n-gram and top tables)
    contexts/  examples of every task from the corpus (contexts, context_counts)
    lm/        score / scan with causal language models
    catalog/   reading the finished catalog: query, serve, frames, verify, report, export
    cli/       the thin command line

and what they stand on: ``runtime`` (``run_stage``, which runs every stage: checks,
manifest, cluster, skipping done units, progress, report, the single writer; resumable units),
``db`` (the only module that opens DuckDB), ``cluster`` (where the work runs),
``config`` (every setting, checked once), ``storage`` (fsspec edges), ``mds`` (the
MDS format), ``schema`` (table layouts), ``faults`` (the test hooks).

Public API: ``ngram_dask.Catalog`` (read a catalog) and ``ngram_dask.counts`` (its
tables as Dask DataFrames). The words have one meaning each: docs/glossary.md.
"""

__version__ = "0.1.0"

__all__ = ["Catalog", "counts", "__version__"]


def __getattr__(name):
    # Imported on first use: `import ngram_dask` stays cheap for workers and the CLI.
    if name == "counts":
        from ngram_dask.catalog.frames import counts

        return counts
    if name == "Catalog":
        from ngram_dask.catalog.api import Catalog

        return Catalog
    raise AttributeError(f"module 'ngram_dask' has no attribute {name!r}")
