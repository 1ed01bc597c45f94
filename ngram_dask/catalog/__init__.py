"""Reading a finished catalog database; nothing here writes it.

    reader   open_catalog: open read-only, refuse in one line what cannot be read
    api      Catalog: one read-only catalog for query, serve and notebooks, made of
             lookups  (followers, counts, probabilities), browse (the task browser's SQL)
             and examples (a task's contexts)
    query    `ngram-dask query`
    serve    `ngram-dask serve`: the web page and JSON API (static/ holds the page)
    frames   counts(): the n-gram tables as a Dask DataFrame, one partition per id0 chunk
    verify   `ngram-dask verify`: every invariant of the tables
    report/  `ngram-dask report`: data (DuckDB aggregates), plots (PNG), page (index.html)
    export   `ngram-dask export`: Parquet + dataset cards (ours, or the original's layout)
"""
