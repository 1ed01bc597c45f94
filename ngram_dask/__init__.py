"""ngram-dask: exact n-gram catalogs of tokenized corpora, built with Dask, Parquet and DuckDB.

The pipeline, one module per stage:

    convert -> explode -> aggregate -> load -> catalog -> score / scan -> export

``counting`` is the pure core (arrays in, arrays out); ``cluster`` decides where the
work runs; ``config`` holds every setting; ``cli`` is a thin command line.
"""

__version__ = "0.1.0"
