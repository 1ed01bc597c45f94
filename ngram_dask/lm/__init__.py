"""Language-model stages: they run causal LMs (Pythia by default) over the catalog or the corpus.

    models   loading (cached per worker process), devices, dtypes, batch limits
    score    p_<model>: each top table's probability of its expected next token
    scan     the first-token deletion scan over the MDS samples
"""
