"""``ngram-dask score``: score the top tables with causal LMs (p_<model> columns).

Add a p_<model> column per model to the catalog's top tables: the model's probability
of each row's expected next token.
"""

from __future__ import annotations

import argparse

from ngram_dask.cli.common import (
    CLUSTER_FLAGS,
    CLUSTER_SWITCHES,
    add_flags,
    add_renamed,
    add_switches,
    command,
    flag_help,
    stage,
)

SCORE_FLAGS = {
    "--db": "db",
    "--models": "score.models",
    "--device": "score.device",
    "--dtype": "score.dtype",
    "--batch-size": "score.batch_size",
    "--batch-sizes": "score.batch_sizes",
    "--rows-per-unit": "score.rows_per_unit",
    "--cpu-threads": "score.cpu_threads",
    "--revisions": "score.revisions",
    "--final-revision": "score.final_revision",
    "--learned-threshold": "score.learned_threshold",
}

EPILOG = """\
examples:
  ngram-dask score --db ngrams.duckdb --models 70m,160m,410m,1b,1.4b,2.8b,6.9b,12b
  ngram-dask score --db ngrams.duckdb --models ./my-local-model --device cpu --table top_bigrams
  ngram-dask score --config configs/pile.yaml --scheduler tcp://gpu-box:8786
  ngram-dask score --db ngrams.duckdb --models 70m,410m --revisions pythia-log
  ngram-dask score --db ngrams.duckdb --models ./ckpts --revisions step0,step1000:143000:4000

Short names (70m ... 12b) expand to EleutherAI/pythia-<size>-deduped. A model already
scored is skipped unless --force. Workers started with `--resources GPU=1` run one
scoring task (one model) per GPU at a time. With --revisions every prompt is scored at
each training checkpoint into the scores table (a local folder's revision r is its
subfolder r) and the learning table says when each task was learned; revisions
scored earlier are skipped, so adding revisions scores only the new ones."""


def register(sub) -> None:
    p = command(sub, __doc__, [SCORE_FLAGS], epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--table", "--tables", dest="score.tables", default=None, metavar="TABLES",
                   help=flag_help("score.tables"))
    add_switches(p, {"--force": ("score.force", True)})
    add_renamed(p, {"--rows-per-task": "score.rows_per_task"})
    add_flags(p, CLUSTER_FLAGS)
    add_switches(p, CLUSTER_SWITCHES)
    p.set_defaults(_run=stage("ngram_dask.lm.score", "run_score"))
