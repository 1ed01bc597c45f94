"""The command line: thin wrappers that turn flags into a Config and call a stage.

User errors (bad input, bad config, a refused database) print one line and exit 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable

from .errors import UserError

# flag -> dotted config key; the flag's type comes from the config field.
CLUSTER_FLAGS = {
    "--scheduler": "cluster.scheduler",
    "--n-workers": "cluster.n_workers",
    "--threads-per-worker": "cluster.threads_per_worker",
    "--memory-limit": "cluster.memory_limit",
    "--dashboard-address": "cluster.dashboard_address",
    "--host": "cluster.host",
    "--tls-ca": "cluster.tls_ca",
    "--tls-cert": "cluster.tls_cert",
    "--tls-key": "cluster.tls_key",
    "--performance-report": "cluster.performance_report",
}
BUILD_FLAGS = {
    "--input": "input",
    "--work-dir": "work_dir",
    "--db": "db",
    "--tokenizer": "tokenizer",
    "--vocab-size": "vocab_size",
    "--chunks": "build.chunks",
    "--ngrams": "build.ngrams",
    "--steps": "build.steps",
    "--token-dtype": "build.token_dtype",
    "--aggregate-method": "build.aggregate_method",
    "--spill-dir": "build.spill_dir",
    "--explode-task-tokens": "build.explode_task_tokens",
    "--count-engine": "build.count_engine",
}
STORAGE_FLAGS = {
    "--s3-endpoint-url": "storage.s3_endpoint_url",
    "--s3-region": "storage.s3_region",
}
BOOL_FLAGS = {
    "--drop-eos": "build.drop_eos",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, like every other user error
        self.exit(2, f"ngram-dask: error: {message}\n")


def _add(parser: argparse.ArgumentParser, flags: dict[str, str]) -> None:
    for flag, key in flags.items():
        parser.add_argument(flag, dest=key, default=None, metavar=key.split(".")[-1].upper(),
                            help=f"config key {key}")


def _add_bools(parser: argparse.ArgumentParser, flags: dict[str, str]) -> None:
    for flag, key in flags.items():
        parser.add_argument(flag, dest=key, action="store_const", const=True, default=None,
                            help=f"config key {key}")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", dest="_config", default=None, help="YAML config file (see configs/)")
    parser.add_argument("-q", "--quiet", dest="_quiet", action="store_true", help="print only errors")
    parser.add_argument("-v", "--verbose", dest="_verbose", action="count", default=0,
                        help="more logging (-vv for Dask's own)")


def _config_from(args: argparse.Namespace):
    from .config import load_config

    overrides = {k: v for k, v in vars(args).items() if not k.startswith("_") and v is not None}
    return load_config(args._config, overrides)


def _announcer(args) -> Callable[[str], None]:
    if args._quiet:
        return lambda msg: None
    return lambda msg: print(msg, flush=True)


def cmd_build(args) -> int:
    from .pipeline import run_build, summary_lines

    cfg = _config_from(args)
    announce = _announcer(args)
    report = run_build(cfg, announce)
    for line in summary_lines(report):
        announce(line)
    return 0


def cmd_verify(args) -> int:
    from .verify import verify

    announce = _announcer(args)
    cfg = _config_from(args)
    if not cfg.db:
        raise UserError("verify needs --db")
    announce(f"verify {cfg.db}")
    checks = verify(cfg.db, announce)
    announce(f"all {len(checks)} checks passed")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(out_dir=args.out, announce=_announcer(args), n_workers=args.n_workers)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ngram-dask", description="Exact n-gram catalogs of tokenized corpora on Dask.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"ngram-dask {__version__}")
    sub = parser.add_subparsers(dest="_command", required=True, parser_class=_Parser)

    p = sub.add_parser("build", help="MDS -> id0-partitioned Parquet -> per-chunk DuckDB -> catalog database")
    _common(p)
    _add(p, BUILD_FLAGS)
    _add_bools(p, BOOL_FLAGS)
    _add(p, STORAGE_FLAGS)
    _add(p, CLUSTER_FLAGS)
    p.set_defaults(_run=cmd_build)

    p = sub.add_parser("verify", help="check every invariant of a catalog database")
    _common(p)
    _add(p, {"--db": "db"})
    p.set_defaults(_run=cmd_verify)

    p = sub.add_parser("demo", help="build a catalog of a small corpus made on the spot (no network)")
    p.add_argument("--out", default="demo-output", help="folder for the demo's MDS, work dir and database")
    p.add_argument("--n-workers", type=int, default=None)
    p.add_argument("-q", "--quiet", dest="_quiet", action="store_true")
    p.add_argument("-v", "--verbose", dest="_verbose", action="count", default=0)
    p.set_defaults(_run=cmd_demo)

    for register in _extra_commands():
        register(sub, _common, _add, _config_from, _announcer)
    return parser


def _extra_commands():
    """Commands of later stages register themselves here (convert, query, export, score, scan...)."""
    import importlib

    found = []
    for name in ("convert", "query", "export", "report", "score", "scan", "serve"):
        try:
            module = importlib.import_module(f".commands.{name}", __package__)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.endswith(f"commands.{name}"):
                continue
            raise
        found.append(module.register)
    return found


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
    try:
        return args._run(args)
    except UserError as exc:
        print(f"ngram-dask: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("ngram-dask: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
