"""Pieces of the build benchmark (``scripts/bench_build.py``) that are not the benchmark itself.

* ``corpus``: the MDS corpus it builds from, made once and cached under ``bench-data/``
  (``corpus-<kind>-<tokens>-<MiB>MiB[-real<N>]/`` with ``bench-corpus.json`` beside the
  shards, and the tokenized text as ``text-tokens-<N>.u16``);
* ``baseline``: the original project's ``build_ngrams.py`` algorithm, the benchmark's
  baseline, writing the same four tables into its own DuckDB file;
* ``memory``: the peak RSS of a process tree and the bytes a run leaves on disk.

Scripts run as ``python scripts/<name>.py`` have ``scripts/`` on ``sys.path``, so they import
these as ``benchkit.<module>``.
"""
