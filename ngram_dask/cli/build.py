"""``ngram-dask build``: MDS -> id0-partitioned Parquet -> per-chunk aggregates -> the catalog database."""

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
    "--aggregate-method": "build.aggregate_method",
    "--spill-dir": "build.spill_dir",
    "--explode-task-tokens": "build.explode_task_tokens",
    "--count-engine": "build.count_engine",
}


def register(sub) -> None:
    p = command(sub, "build", [BUILD_FLAGS, STORAGE_FLAGS, CLUSTER_FLAGS],
                help="MDS -> id0-partitioned Parquet -> per-chunk DuckDB -> catalog database")
    add_switches(p, {"--drop-eos": ("build.drop_eos", True)})
    p.set_defaults(_run=stage("ngram_dask.build.pipeline", "run_build"))
