"""``ngram-dask``: the parser, and one-line errors for everything a user can fix."""

from __future__ import annotations

import importlib
import logging
import os
import sys

from ngram_dask.cli.common import Parser
from ngram_dask.errors import UserError

# What a process killed by SIGPIPE reports (128 + 13), as `cat` would under `| head`.
EXIT_BROKEN_PIPE = 141

# In the order `ngram-dask --help` lists them: the pipeline's order.
COMMANDS = ("demo", "convert", "build", "contexts", "exposure", "verify", "query", "serve", "score", "scan", "report",
            "export")


def build_parser() -> Parser:
    from ngram_dask import __version__

    parser = Parser(prog="ngram-dask", description="Exact n-gram catalogs of tokenized corpora on Dask.")
    parser.add_argument("--version", action="version", version=f"ngram-dask {__version__}")
    sub = parser.add_subparsers(dest="_command", required=True, parser_class=Parser)
    for name in COMMANDS:
        importlib.import_module(f"ngram_dask.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(getattr(args, "_verbose", 0), 2)
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # Dask's loggers keep their own INFO level; the handler decides what is shown.
    for handler in logging.root.handlers:
        handler.setLevel(level)
    if getattr(args, "_verbose", 0) < 2:
        # Dask's own warnings (a worker slow to close, say) and offline hub retries would
        # break the one-line promise; ngram-dask reports lost workers itself.
        for name in ("distributed", "bokeh", "tornado", "huggingface_hub", "urllib3"):
            logging.getLogger(name).setLevel(logging.ERROR)
        # huggingface_hub and transformers reset their loggers' levels when first imported
        # (later, lazily) and print hub retries through handlers of their own: their
        # verbosity variables are the setting they keep. Worker processes inherit them.
        os.environ.setdefault("HF_HUB_VERBOSITY", "error")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        code = args._run(args)
        sys.stdout.flush()  # here, not at exit: a reader that is gone must end in the handler below
        return code
    except BrokenPipeError:
        # `ngram-dask query --json | head`: the reader has all it wants. Nothing more can be
        # written; stdout goes to /dev/null so that Python's own flush at exit stays quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except UserError as exc:
        print(f"ngram-dask: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("ngram-dask: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
