"""`ngram-dask convert`: raw text -> tokenized MDS, one Dask task per source shard."""
