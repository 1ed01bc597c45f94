"""``ngram-dask demo``: build a catalog of a small corpus made on the spot (no network).

Tokenize the docstrings of this Python's standard library with the bundled GPT-NeoX-20B
tokenizer, build their catalog with the packaged demo config under --out, and print the
most predictive prompts.
"""

from __future__ import annotations

from ngram_dask.cli.common import announcer, command, config_from

DEMO_FLAGS = {"--out": "demo.out", "--n-workers": "demo.n_workers"}


def run(args) -> int:
    from ngram_dask.ngrams.demo import run_demo

    cfg = config_from(args, "demo")
    return run_demo(out_dir=cfg.demo.out, announce=announcer(args), n_workers=cfg.demo.n_workers,
                    after_build=_contexts_step)


def _contexts_step(cfg, announce) -> None:
    """The demo's config runs the contexts stage after the build: real examples of every task."""
    if not cfg.build.contexts:
        return
    from ngram_dask.contexts.run import run_contexts, summary_lines

    for line in summary_lines(run_contexts(cfg, announce)):
        announce(line)


def register(sub) -> None:
    p = command(sub, __doc__, [DEMO_FLAGS])
    p.set_defaults(_run=run)
