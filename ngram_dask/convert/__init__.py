"""`ngram-dask convert`: raw text -> tokenized MDS, one Dask task per source shard, one module per step:

    settings   what travels to the tasks: the source shard and the conversion settings
    sources    source files or hub datasets -> source shards -> batches of documents
    samples    documents -> token ids (BOS + text + EOS) -> seq_len samples
    shard      the task: one source shard -> one MDS sub-dataset and its finished marker
    run        the client: checks, cluster, progress, the root index and the sidecar
"""
