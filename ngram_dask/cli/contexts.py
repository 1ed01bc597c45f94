"""``ngram-dask contexts``: real examples of every task: where each top prompt occurs in the input.

Read the build's input again (the one recorded in the database, or --input, which must
be that one), one Dask task per explode-sized piece, find every occurrence of every
prompt of top_bigrams and top_trigrams that sum_count counts, and keep up to
--per-task of them per prompt, chosen uniformly at random with --seed (the same
examples however the work is split). Writes the tables contexts and context_counts
into the database. Done pieces are kept in the work dir (default: <db>.contexts-work)
and skipped on a rerun; contexts already in the database are kept.
"""

from __future__ import annotations

from ngram_dask.cli.common import (
    CLUSTER_FLAGS,
    CLUSTER_SWITCHES,
    STORAGE_FLAGS,
    add_renamed,
    add_switches,
    command,
    stage,
)

CONTEXTS_FLAGS = {
    "--db": "db",
    "--input": "input",
    "--work-dir": "work_dir",
    "--per-task": "contexts.per_task",
    "--seed": "contexts.seed",
    "--before": "contexts.before",
    "--after": "contexts.after",
    "--prune-rows": "contexts.prune_rows",
    "--cutoff-sigmas": "contexts.cutoff_sigmas",
    "--explode-unit-tokens": "build.explode_unit_tokens",
    "--eos-id": "build.eos_id",
}


def register(sub) -> None:
    p = command(sub, __doc__, [CONTEXTS_FLAGS, STORAGE_FLAGS, CLUSTER_FLAGS])
    add_switches(p, CLUSTER_SWITCHES)
    add_renamed(p, {"--explode-task-tokens": "build.explode_task_tokens"})
    p.set_defaults(_run=stage("ngram_dask.contexts.run", "run_contexts"))
