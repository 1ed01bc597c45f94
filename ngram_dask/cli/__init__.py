"""The command line: one module per command, each a thin layer over its stage.

``ngram-dask <command>`` turns flags into a ``Config`` (``common.config_from``), runs
the stage and prints its summary. User errors (bad input, bad config, a refused
database) print one line and exit 2; anything else is a bug and keeps its traceback.
"""

from ngram_dask.cli.main import main

__all__ = ["main"]
