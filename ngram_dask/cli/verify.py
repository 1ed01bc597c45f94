"""``ngram-dask verify``: check every invariant of a catalog database (read-only)."""

from __future__ import annotations

from ngram_dask.cli.common import announcer, command, config_from


def run(args) -> int:
    from ngram_dask.catalog.verify import verify

    announce = announcer(args)
    cfg = config_from(args, "verify")
    announce(f"verify {cfg.db}")
    checks = verify(cfg.db, announce)
    announce(f"all {len(checks)} checks passed")
    return 0


def register(sub) -> None:
    p = command(sub, __doc__, [{"--db": "db"}])
    p.set_defaults(_run=run)
