"""``ngram-dask export``: tables -> Parquet + dataset card (README.md) loadable with datasets / the Hub.

Write each table of the catalog database to <out>/<table>/train-*.parquet (large
tables split by id0 % chunks) and a dataset card <out>/README.md; with --layout
original, one folder per table in the original project's published layout
(<out>/<table>/README.md + data/<split>-*.parquet). With --tasks, instead, one prompt
set per task family (<out>/bigram_prompts.*, <out>/trigram_prompts.*, Parquet and
JSONL) from the examples `ngram-dask contexts` found: text before the prompt and the
prompt, the expected next token and where it came from.
"""

from __future__ import annotations

from ngram_dask.cli.common import announcer, command, config_from


def register(sub) -> None:
    p = command(sub, __doc__, [{"--db": "db"}])
    p.add_argument("--out", dest="_out", required=True, metavar="DIR", help="folder for the export")
    p.add_argument("--tables", dest="_tables", default=None, metavar="T1,T2",
                   help="only these tables (default: all but catalog_info and load_ledger)")
    p.add_argument("--split-rows", dest="_split_rows", type=int, default=None, metavar="ROWS",
                   help="split tables with more rows than this into one file per id0 chunk "
                        "(default 1000000)")
    p.add_argument("--layout", dest="_layout", choices=["default", "original"], default="default",
                   help="default: one dataset, one config per table (split train). original: what the "
                        "original project published, one dataset folder per table with the table's "
                        "name as the split, p_<size> score names, id0_chunk on the n-gram tables")
    p.add_argument("--counts", dest="_counts", choices=["uint64", "uint32"], default="uint64",
                   help="with --layout original: uint32 writes count and max_count as the original's "
                        "uint32 (refused if any does not fit); default uint64")
    p.add_argument("--push-to-hub", dest="_repo", default=None, metavar="REPO",
                   help="then upload to the Hugging Face hub (needs HF_TOKEN or `huggingface-cli "
                        "login`): the folder as the dataset REPO, or with --layout original each "
                        "table's folder as the dataset REPO<table> (REPO is a prefix, e.g. me/pile_)")
    p.add_argument("--private", dest="_private", action="store_true",
                   help="with --push-to-hub: create the repo(s) private")
    p.add_argument("--tasks", dest="_tasks", action="store_true",
                   help="write the prompt sets of the task families instead (bigram_prompts, trigram_prompts; "
                        "Parquet and JSONL), from the examples of `ngram-dask contexts`")

    def run(args) -> int:
        from ngram_dask.catalog.export import SPLIT_ROWS, export_catalog
        from ngram_dask.catalog.hub import check_hub_name, check_hub_token, hub_plan, push_plan

        cfg = config_from(args)
        announce = announcer(args)
        if args._tasks:
            from ngram_dask.catalog.export_tasks import export_tasks

            if args._repo is not None or args._tables or args._layout != "default":
                from ngram_dask.errors import UserError

                raise UserError("--tasks writes the prompt sets alone: drop --tables, --layout and --push-to-hub")
            announce(f"export the task prompts of {cfg.db} -> {args._out}")
            export_tasks(cfg.db, args._out, announce)
            return 0
        token = None
        if args._repo is not None:  # fail before the work, not after
            check_hub_name(args._repo, args._layout)
            token = check_hub_token()
        tables = [t.strip() for t in args._tables.split(",") if t.strip()] if args._tables else None
        announce(f"export {cfg.db} -> {args._out}" + (" (layout original)" if args._layout == "original" else ""))
        res = export_catalog(cfg.db, args._out, tables=tables,
                             split_rows=SPLIT_ROWS if args._split_rows is None else args._split_rows,
                             announce=announce, layout=args._layout, counts=args._counts)
        announce(f"dataset card: {res.card}" if res.layout == "default" else f"index: {res.card}")
        if args._repo is not None:
            plan = hub_plan(res, args._repo)
            for target in plan:
                announce(f"  {target.folder} -> {target.repo_id}")
            push_plan(plan, token, private=args._private, announce=announce)
        return 0

    p.set_defaults(_run=run)
