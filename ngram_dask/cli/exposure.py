"""``ngram-dask exposure``: how often each task had been seen before each training checkpoint.

Read the training stream IN TRAINING ORDER (Pythia's preshuffled data: Megatron shards of
2,049-token sequences, sequence i trained at step i // 1024) once on the cluster and count,
for every prompt of top_bigrams and top_trigrams and every checkpoint step S of
--revisions, its occurrences in the sequences before S x samples-per-step, and how many of
them are followed by the expected token: the table exposure (n, id0, id1, step,
prompt_seen, task_seen). Done pieces are kept in the work dir (default:
<db>.exposure-work) and skipped on a rerun.
"""

from __future__ import annotations

import argparse

from ngram_dask.cli.common import CLUSTER_FLAGS, STORAGE_FLAGS, command, stage

EXPOSURE_FLAGS = {
    "--db": "db",
    "--input": "input",
    "--work-dir": "work_dir",
    "--revisions": "exposure.revisions",
    "--seq-len": "exposure.seq_len",
    "--samples-per-step": "exposure.samples_per_step",
    "--input-format": "build.input_format",
    "--explode-unit-tokens": "build.explode_unit_tokens",
}

EPILOG = """\
examples:
  ngram-dask exposure --db ngrams.duckdb --input /data/pythia_pile_deduped/ --revisions pythia-log
  ngram-dask exposure --db ngrams.duckdb --input tokens.bin --seq-len 2049 --samples-per-step 1024

A stream that is not in training order gives counts with no meaning: check that the
first sequences of the input decode to the first sequences of the training data."""


def register(sub) -> None:
    p = command(sub, __doc__, [EXPOSURE_FLAGS, STORAGE_FLAGS, CLUSTER_FLAGS], epilog=EPILOG,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(_run=stage("ngram_dask.contexts.exposure", "run_exposure"))
