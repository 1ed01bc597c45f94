"""ngram-dask: exact n-gram catalogs of tokenized corpora, built with Dask, Parquet and DuckDB.

The pipeline, one module per stage:

    convert -> explode -> aggregate -> load -> catalog -> score / scan -> export

``counting`` is the pure core (arrays in, arrays out); ``cluster`` decides where the
work runs; ``config`` holds every setting; ``cli`` is a thin command line.
"""

__version__ = "0.1.0"

__all__ = ["counts", "__version__"]


def __getattr__(name):
    # Imported on first use: `import ngram_dask` stays cheap for workers and the CLI.
    if name == "counts":
        from .frames import counts

        return counts
    raise AttributeError(f"module 'ngram_dask' has no attribute {name!r}")
