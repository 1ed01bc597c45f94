"""``ngram-dask serve``: explore the catalog in a browser and over a JSON API (read-only).

Serve a web page (completions, a task browser, task views, scan tables, CSV/Parquet
downloads) and the JSON API of docs/serve.md. Binds 127.0.0.1 unless --host says
otherwise; --port 0 picks a free port. Exit status: 0 after Ctrl-C, 2 for a user
error (no database, port in use...).
"""

from __future__ import annotations

from ngram_dask.cli.common import READER_FLAGS, command, config_from

# Not the cluster's --host: serve has no cluster.
SERVE_FLAGS = {"--host": "serve.host", "--port": "serve.port"}


def register(sub) -> None:
    p = command(sub, __doc__, [READER_FLAGS, SERVE_FLAGS])

    def run(args) -> int:
        from ngram_dask.catalog.serve import run_server

        flag_tokenizer = args.tokenizer  # None unless given: then the build's own tokenizer wins
        cfg = config_from(args, "serve")
        return run_server(cfg.db, host=cfg.serve.host, port=cfg.serve.port, tokenizer=flag_tokenizer,
                          configured_tokenizer=cfg.tokenizer,
                          announce=lambda msg: print(msg, flush=True))

    p.set_defaults(_run=run)
