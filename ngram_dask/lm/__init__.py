"""Language-model stages: they run causal LMs (Pythia by default) over the catalog or the corpus.

    models        loading (cached per worker process), devices, dtypes, batch limits
    score_worker  the scoring task: one partition of rows -> its probabilities
    score         p_<model>: each top table's probability of its expected next token (the client)
    scan_stats    the scan's pure core: model + samples -> statistics of every position
    scan_gather   the scan's parts on disk -> decoded, deduplicated, sorted table
    scan          the first-token deletion scan over the MDS samples: batches, task, client
"""
