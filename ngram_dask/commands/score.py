"""`ngram-dask score`: a p_<model> column per model on the catalog's top tables."""

from __future__ import annotations

SCORE_FLAGS = {
    "--db": "db",
    "--models": "score.models",
    "--device": "score.device",
    "--dtype": "score.dtype",
    "--batch-size": "score.batch_size",
    "--batch-sizes": "score.batch_sizes",
    "--rows-per-task": "score.rows_per_task",
    "--cpu-threads": "score.cpu_threads",
}

EPILOG = """\
examples:
  ngram-dask score --db ngrams.duckdb --models 70m,160m,410m,1b,1.4b,2.8b,6.9b,12b
  ngram-dask score --db ngrams.duckdb --models ./my-local-model --device cpu --table top_bigrams
  ngram-dask score --config configs/pile.yaml --scheduler tcp://gpu-box:8786

Short names (70m ... 12b) expand to EleutherAI/pythia-<size>-deduped. A model already
scored is skipped unless --force. Workers started with `--resources GPU=1` run one
scoring task (one model) per GPU at a time."""


def cmd_score(args, _config_from, _announcer) -> int:
    from ..score import run_score, summary_lines

    cfg = _config_from(args)
    announce = _announcer(args)
    report = run_score(cfg, announce)
    for line in summary_lines(report):
        announce(line)
    return 0


def register(sub, _common, _add, _config_from, _announcer) -> None:
    import argparse

    from ..cli import CLUSTER_FLAGS

    p = sub.add_parser("score", help="score the top tables with causal LMs (p_<model> columns)",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p)
    _add(p, SCORE_FLAGS)
    p.add_argument("--table", "--tables", dest="score.tables", default=None, metavar="TABLES",
                   help="config key score.tables: top_bigrams and/or top_trigrams, comma-separated")
    p.add_argument("--force", dest="score.force", action="store_const", const=True, default=None,
                   help="config key score.force: rescore models already scored")
    _add(p, CLUSTER_FLAGS)
    p.set_defaults(_run=lambda args: cmd_score(args, _config_from, _announcer))
