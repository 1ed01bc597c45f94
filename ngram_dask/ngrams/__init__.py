"""The n-gram build, one module per step, in the order they run:

    counting   the pure core: token arrays in, packed n-gram keys and counts out
    explode    MDS shard groups -> partial counts, Parquet split by id0 % K (a Dask bag)
    aggregate  each id0 chunk -> its final counts and prefix table (a Dask DataFrame)
    load       the chunks -> the catalog database (the client: its only writer)
    top        the tokens table and the top_* tables (the top step)
    pipeline   runs them: checks, cluster, progress, resumption
    demo       the whole build on a corpus made on the spot
"""
