"""``ngram-dask demo``: build a catalog of a corpus made on the spot (no network)."""

from __future__ import annotations

from ngram_dask.cli.common import announcer


def run(args) -> int:
    from ngram_dask.ngrams.demo import run_demo

    return run_demo(out_dir=args.out, announce=announcer(args), n_workers=args.n_workers,
                    after_build=_contexts_step)


def _contexts_step(cfg, announce) -> None:
    """The demo's config has the contexts step: real examples of every task."""
    if "contexts" not in cfg.build.steps:
        return
    from ngram_dask.contexts.run import run_contexts, summary_lines

    for line in summary_lines(run_contexts(cfg, announce)):
        announce(line)


def register(sub) -> None:
    p = sub.add_parser("demo", help="build a catalog of a small corpus made on the spot (no network)")
    p.add_argument("--out", default="demo-output", help="folder for the demo's MDS, work dir and database")
    p.add_argument("--n-workers", type=int, default=None)
    p.add_argument("-q", "--quiet", dest="_quiet", action="store_true")
    p.add_argument("-v", "--verbose", dest="_verbose", action="count", default=0)
    p.set_defaults(_run=run)
