"""``ngram-dask contexts``: real examples of every task of the catalog.

* ``kernel``: the pure core (occurrences, counts, priorities, the k smallest, windows);
* ``pieces``: the units of input one task reads (the one place that reads input);
* ``task``: the resumable Dask task of one piece, writing its parts;
* ``write``: the single writer: merges the parts, writes the tables in one transaction;
* ``run``: the client (checks, plan, submit, write).
"""
