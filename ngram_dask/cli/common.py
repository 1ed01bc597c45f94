"""What every command shares: the parser, flags whose help comes from the config, and the
config/announce/summary plumbing."""

from __future__ import annotations

import argparse
import importlib
import re
import textwrap
from typing import Callable, Iterable

from ngram_dask.config import describe, load_config

# flag -> dotted config key; the type and the help text come from the config field.
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
    "--scheduler-file": "cluster.scheduler_file",
    "--wait-workers": "cluster.wait_workers",
    "--wait-timeout": "cluster.wait_timeout",
    **{f"--slurm-{key.replace('_', '-')}": f"cluster.slurm.{key}" for key in (
        "jobs", "min_jobs", "max_jobs", "cores", "memory", "processes", "walltime", "partition", "account",
        "gres", "local_directory", "job_extra", "prologue", "interface", "python", "job_name", "log_directory")},
}
# --slurm: cluster.kind slurm (every stage command that takes CLUSTER_FLAGS takes these)
CLUSTER_SWITCHES = {"--slurm": ("cluster.kind", "slurm")}
STORAGE_FLAGS = {
    "--s3-endpoint-url": "storage.s3_endpoint_url",
    "--s3-region": "storage.s3_region",
}

# The catalog readers (query, serve): the database, and the tokenizer for text prompts.
READER_FLAGS = {"--db": "db", "--tokenizer": "tokenizer"}

Announce = Callable[[str], None]


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, like every other user error
        self.exit(2, f"ngram-dask: error: {message}\n")


def flag_help(key: str) -> str:
    """The config field's help text, as argparse wants it (a literal % doubled)."""
    return describe(key).replace("%", "%%")


def add_flags(parser: argparse.ArgumentParser, flags: dict[str | tuple[str, ...], str]) -> None:
    """``--flag VALUE`` for each config key (the value is checked when the config loads); a
    tuple of flags is one option with aliases (``("--top", "-k")``)."""
    for flag, key in flags.items():
        names = (flag,) if isinstance(flag, str) else flag
        parser.add_argument(*names, dest=key, default=None, metavar=key.split(".")[-1].upper(),
                            help=flag_help(key))


def add_renamed(parser: argparse.ArgumentParser, flags: dict[str, str]) -> None:
    """Flags from before a rename (docs/glossary.md), hidden from --help: they set the old
    config key, which the config moves to its new name with a deprecation line."""
    for flag, old_key in flags.items():
        parser.add_argument(flag, dest=old_key, default=None, help=argparse.SUPPRESS)


def add_switches(parser: argparse.ArgumentParser, flags: dict[str, tuple[str, bool]]) -> None:
    """``--flag`` (no value) that sets a boolean config key to the given value."""
    for flag, (key, value) in flags.items():
        parser.add_argument(flag, dest=key, action="store_const", const=value, default=None,
                            help=flag_help(key))


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", dest="_config", default=None, metavar="FILE",
                        help="YAML config file (see configs/)")
    parser.add_argument("-q", "--quiet", dest="_quiet", action="store_true", help="print only errors")
    parser.add_argument("-v", "--verbose", dest="_verbose", action="count", default=0,
                        help="more logging (-vv for Dask's own)")


def command(sub, doc: str, flags: Iterable[dict] = (), **parser_kwargs) -> argparse.ArgumentParser:
    r"""A subcommand with the common options and the given config flags.

    ``doc`` is the command module's docstring, the one source of its help: it starts
    ``\`\`ngram-dask NAME\`\`: <one-line help>``, and the paragraphs after it are the
    description ``NAME --help`` prints.
    """
    first, _, rest = doc.strip().partition("\n")
    m = re.fullmatch(r"``ngram-dask (\w+)``: (.+?)\.?", first.strip())
    if not m:
        raise ValueError(f"a command docstring starts with ``ngram-dask NAME``: help, not {first!r}")
    name, help_line = m.groups()
    description = textwrap.dedent(rest).strip() or None
    parser = sub.add_parser(name, help=help_line, description=description, **parser_kwargs)
    add_common(parser)
    for table in flags:
        add_flags(parser, table)
    return parser


def config_from(args: argparse.Namespace, check: str | None = None):
    """The config: defaults < --config file < flags (every dest without a leading '_');
    with ``check``, checked for what that command needs (``Config.check``)."""
    overrides = {k: v for k, v in vars(args).items() if not k.startswith("_") and v is not None}
    cfg = load_config(args._config, overrides)
    if check:
        cfg.check(check)
    return cfg


def announcer(args) -> Announce:
    if args._quiet:
        return lambda msg: None
    return lambda msg: print(msg, flush=True)


def stage(module: str, run: str, prepare: Callable | None = None) -> Callable[[argparse.Namespace], int]:
    """The body of a stage command: config from flags, ``module.run(cfg, announce)``, then
    ``module.summary_lines(report)``. The stage is imported only when the command runs.

    ``prepare(args, cfg)`` may adjust the config from flags that are not config keys.
    """

    def body(args: argparse.Namespace) -> int:
        stage_module = importlib.import_module(module)
        cfg = config_from(args)
        if prepare:
            prepare(args, cfg)
        announce = announcer(args)
        report = getattr(stage_module, run)(cfg, announce)
        for line in stage_module.summary_lines(report):
            announce(line)
        return 0

    return body
