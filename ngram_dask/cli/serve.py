"""``ngram-dask serve``: explore the catalog in a browser and over a JSON API (read-only).

Serve a web page (completions, a task browser, task views, scan tables, CSV/Parquet
downloads) and the JSON API of docs/serve.md. Binds 127.0.0.1 unless --host says
otherwise; --port 0 picks a free port. Exit status: 0 after Ctrl-C, 2 for a user
error (no database, port in use...).
"""

from __future__ import annotations

from ngram_dask.cli.common import READER_FLAGS, command, config_from


def register(sub) -> None:
    p = command(sub, __doc__, [READER_FLAGS])
    # Not the cluster's --host: dest starts with '_' so no config key picks it up.
    p.add_argument("--host", dest="_host", default="127.0.0.1", metavar="ADDRESS",
                   help="address to listen on (default 127.0.0.1; 0.0.0.0 exposes the catalog to the network)")
    p.add_argument("--port", dest="_port", type=int, default=8000, metavar="PORT",
                   help="port (default 8000; 0: any free port)")

    def run(args) -> int:
        from ngram_dask.catalog.serve import run_server
        from ngram_dask.errors import UserError

        if not 0 <= args._port <= 65535:
            raise UserError(f"--port must be between 0 and 65535, got {args._port}")
        flag_tokenizer = args.tokenizer  # None unless given: then the build's own tokenizer wins
        cfg = config_from(args)
        return run_server(cfg.db, host=args._host, port=args._port, tokenizer=flag_tokenizer,
                          configured_tokenizer=cfg.tokenizer,
                          announce=lambda msg: print(msg, flush=True))

    p.set_defaults(_run=run)
