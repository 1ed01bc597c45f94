"""``ngram-dask export``: every table to Parquet plus a dataset card, ready for `datasets` and the Hub."""

from __future__ import annotations


def register(sub, common, add, config_from, announcer) -> None:
    p = sub.add_parser(
        "export",
        help="tables -> Parquet + dataset card (README.md) loadable with datasets / the Hub",
        description="Write each table of the catalog database to <out>/<table>/train-*.parquet "
                    "(large tables split by id0 % chunks) and a dataset card <out>/README.md.",
    )
    common(p)
    add(p, {"--db": "db"})
    p.add_argument("--out", dest="_out", required=True, metavar="DIR", help="folder for the export")
    p.add_argument("--tables", dest="_tables", default=None, metavar="T1,T2",
                   help="only these tables (default: all but catalog_info and load_ledger)")
    p.add_argument("--split-rows", dest="_split_rows", type=int, default=None, metavar="ROWS",
                   help="split tables with more rows than this into one file per id0 chunk "
                        "(default 1000000)")
    p.add_argument("--push-to-hub", dest="_repo", default=None, metavar="REPO",
                   help="then upload the folder as the Hugging Face dataset REPO (needs HF_TOKEN "
                        "or `huggingface-cli login`)")
    p.add_argument("--private", dest="_private", action="store_true",
                   help="with --push-to-hub: create the repo private")

    def run(args) -> int:
        from ..export import SPLIT_ROWS, check_hub_token, export_catalog, push_to_hub

        cfg = config_from(args)
        announce = announcer(args)
        token = check_hub_token() if args._repo else None  # fail before the work, not after
        tables = [t.strip() for t in args._tables.split(",") if t.strip()] if args._tables else None
        announce(f"export {cfg.db} -> {args._out}")
        res = export_catalog(cfg.db, args._out, tables=tables,
                             split_rows=SPLIT_ROWS if args._split_rows is None else args._split_rows,
                             announce=announce)
        announce(f"dataset card: {res.card}")
        if args._repo:
            push_to_hub(args._out, args._repo, token, private=args._private, announce=announce)
        return 0

    p.set_defaults(_run=run)
