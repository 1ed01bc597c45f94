"""``ngram-dask report``: PNG plots and an index.html about a catalog database."""

from __future__ import annotations


def register(sub, common, add, config_from, announcer) -> None:
    p = sub.add_parser(
        "report",
        help="plots (frac_max, sum_count, Zipf, coverage, model scores) + index.html",
        description="Write PNG plots and one index.html that shows them to OUT (read-only on --db).",
    )
    common(p)
    add(p, {"--db": "db"})
    p.add_argument("--out", dest="_out", required=True, metavar="DIR", help="folder for the PNGs and index.html")

    def run(args) -> int:
        from ..report import make_report

        cfg = config_from(args)
        announce = announcer(args)
        announce(f"report {cfg.db} -> {args._out}")
        rep = make_report(cfg.db, args._out, announce=announce)
        for note in rep.notes:
            announce(f"  note: {note}")
        announce(f"open {rep.index}")
        return 0

    p.set_defaults(_run=run)
