"""``ngram-dask build``: MDS -> id0-partitioned Parquet -> per-chunk aggregates -> the catalog database.

Explode the MDS samples into partial counts per id0 chunk (a Dask bag of shard
groups), aggregate each chunk (a Dask DataFrame of chunks), load them into the one
DuckDB file and write the tokens and top tables. With --contexts, then find real
examples of every task (the contexts stage, `ngram-dask contexts`). Rerun the same
command to resume. With --plan, print what the build would do (in seconds, no build)
and stop.
"""

from __future__ import annotations

import importlib

from ngram_dask.cli.common import (
    CLUSTER_FLAGS,
    CLUSTER_SWITCHES,
    STORAGE_FLAGS,
    add_renamed,
    add_switches,
    announcer,
    command,
    config_from,
)

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
    "--explode-unit-tokens": "build.explode_unit_tokens",
    "--aggregate-budget-bytes": "build.aggregate_budget_bytes",
    "--block-rows": "build.block_rows",
    "--mark-rows": "build.mark_rows",
    "--count-engine": "build.count_engine",
    "--plan-sample-tokens": "build.plan_sample_tokens",
    "--plan-sample-pieces": "build.plan_sample_pieces",
    "--plan-unit-sample-tokens": "build.plan_unit_sample_tokens",
    "--plan-tokens": "build.plan_tokens",
    "--plan-client-cores": "build.plan_client_cores",
}


def run(args) -> int:
    cfg = config_from(args)
    announce = announcer(args)
    if cfg.build.plan:
        plan = importlib.import_module("ngram_dask.ngrams.plan")
        cfg.check("plan")
        for line in plan.plan_lines(plan.plan_build(cfg)):
            announce(line)
        return 0
    run_build_and_contexts(cfg, announce)
    return 0


def run_build_and_contexts(cfg, announce) -> None:
    """The build's steps, then the contexts stage with ``build.contexts`` (the stage
    families do not import each other, so the two stages meet here)."""
    if cfg.build.steps:
        pipeline = importlib.import_module("ngram_dask.ngrams.pipeline")
        report = pipeline.run_build(cfg, announce)
        for line in pipeline.summary_lines(report):
            announce(line)
    if cfg.build.contexts:
        contexts = importlib.import_module("ngram_dask.contexts.run")
        report = contexts.run_contexts(cfg, announce)
        for line in contexts.summary_lines(report):
            announce(line)


def register(sub) -> None:
    p = command(sub, __doc__, [BUILD_FLAGS, STORAGE_FLAGS, CLUSTER_FLAGS])
    add_switches(p, CLUSTER_SWITCHES)
    add_switches(p, {"--drop-eos": ("build.drop_eos", True), "--contexts": ("build.contexts", True),
                     "--plan": ("build.plan", True)})
    add_renamed(p, {"--explode-task-tokens": "build.explode_task_tokens"})
    p.set_defaults(_run=run)
