"""``ngram-dask report``: plots (frac_max, sum_count, Zipf, coverage, model scores) + index.html.

Write PNG plots and one index.html that shows them to OUT (read-only on --db).
"""

from __future__ import annotations

from ngram_dask.cli.common import announcer, command, config_from


def register(sub) -> None:
    p = command(sub, __doc__, [{"--db": "db", "--out": "report.out"}])

    def run(args) -> int:
        from ngram_dask.catalog.report import make_report

        cfg = config_from(args, "report")
        announce = announcer(args)
        announce(f"report {cfg.db} -> {cfg.report.out}")
        rep = make_report(cfg.db, cfg.report.out, announce=announce)
        for note in rep.notes:
            announce(f"  note: {note}")
        announce(f"open {rep.index}")
        return 0

    p.set_defaults(_run=run)
