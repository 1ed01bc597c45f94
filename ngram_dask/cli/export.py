"""``ngram-dask export``: tables -> Parquet + dataset card (README.md) loadable with datasets / the Hub.

Write each table of the catalog database to <out>/<table>/train-*.parquet (large
tables split by id0 % chunks) and a dataset card <out>/README.md; with --layout
original, one folder per table in the original project's published layout
(<out>/<table>/README.md + data/<split>-*.parquet).
"""

from __future__ import annotations

from ngram_dask.cli.common import add_switches, announcer, command, config_from

EXPORT_FLAGS = {
    "--db": "db",
    "--out": "export.out",
    "--tables": "export.tables",
    "--split-rows": "export.split_rows",
    "--layout": "export.layout",
    "--counts": "export.counts",
    "--push-to-hub": "export.push_to_hub",
}


def register(sub) -> None:
    p = command(sub, __doc__, [EXPORT_FLAGS])
    add_switches(p, {"--private": ("export.private", True), "--tasks": ("export.tasks", True)})

    def run(args) -> int:
        from ngram_dask.catalog.export import export_catalog
        from ngram_dask.catalog.hub import check_hub_name, check_hub_token, hub_plan, push_plan

        cfg = config_from(args, "export")
        e = cfg.export
        announce = announcer(args)
        if e.tasks:
            from ngram_dask.catalog.export_tasks import export_tasks

            if e.push_to_hub is not None or e.tables or e.layout != "default":
                from ngram_dask.errors import UserError

                raise UserError("--tasks writes the prompt sets alone: drop --tables, --layout and --push-to-hub")
            announce(f"export the task prompts of {cfg.db} -> {e.out}")
            export_tasks(cfg.db, e.out, announce)
            return 0
        token = None
        if e.push_to_hub is not None:  # fail before the work, not after
            check_hub_name(e.push_to_hub, e.layout)
            token = check_hub_token()
        announce(f"export {cfg.db} -> {e.out}" + (" (layout original)" if e.layout == "original" else ""))
        res = export_catalog(cfg.db, e.out, tables=e.tables or None, split_rows=e.split_rows,
                             announce=announce, layout=e.layout, counts=e.counts)
        announce(f"dataset card: {res.card}" if res.layout == "default" else f"index: {res.card}")
        if e.push_to_hub is not None:
            plan = hub_plan(res, e.push_to_hub)
            for target in plan:
                announce(f"  {target.folder} -> {target.repo_id}")
            push_plan(plan, token, private=e.private, announce=announce)
        return 0

    p.set_defaults(_run=run)
