"""``ngram-dask build``: MDS -> id0-partitioned Parquet -> per-chunk aggregates -> the catalog database.

Explode the MDS samples into partial counts per id0 chunk (a Dask bag of shard
groups), aggregate each chunk (a Dask DataFrame of chunks), load them into the one
DuckDB file and write the tokens and top tables. Rerun the same command to resume.
"""

from __future__ import annotations

from ngram_dask.cli.common import CLUSTER_FLAGS, STORAGE_FLAGS, add_switches, command, stage

BUILD_FLAGS = {
    "--input": "input",
    "--work-dir": "work_dir",
    "--db": "db",
    "--tokenizer": "tokenizer",
    "--vocab-size": "vocab_size",
    "--chunks": "build.chunks",
    "--ngrams": "build.ngrams",
    "--steps": "build.steps",
    "--token-dtype": "build.token_dtype",
    "--input-format": "build.input_format",
    "--seq-len": "build.seq_len",
    "--samples": "build.samples",
    "--token-column": "build.token_column",
    "--aggregate-method": "build.aggregate_method",
    "--spill-dir": "build.spill_dir",
    "--explode-task-tokens": "build.explode_task_tokens",
    "--count-engine": "build.count_engine",
}


def register(sub) -> None:
    p = command(sub, __doc__, [BUILD_FLAGS, STORAGE_FLAGS, CLUSTER_FLAGS])
    add_switches(p, {"--drop-eos": ("build.drop_eos", True)})
    p.set_defaults(_run=stage("ngram_dask.ngrams.pipeline", "run_build"))
