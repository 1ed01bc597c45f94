"""docs/options.md: every command's config flags, written from the settings ``--help`` reads.

    python -m ngram_dask.cli.options_doc > docs/options.md
"""

from __future__ import annotations

import argparse

from ngram_dask.cli.main import build_parser
from ngram_dask.config import setting_help


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;")


def options_markdown() -> str:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    out = ["# Options", "",
           "Every flag below is also a key of a YAML config (`--config FILE`; flags override the file; an",
           "unknown key or flag is an error). The text is each setting's help in `ngram_dask/config.py`,",
           "where it is declared and checked; `ngram-dask <command> --help` shows the same.",
           "Written by `python -m ngram_dask.cli.options_doc > docs/options.md`; a test fails when it is stale.",
           ""]
    for name, p in sub.choices.items():
        rows = [(", ".join(f"`{o}`" for o in a.option_strings), a.dest, *setting_help(a.dest))
                for a in p._actions if a.help and "(config key " in a.help]
        if not rows:
            continue
        out += [f"## ngram-dask {name}", "", "| flag | config key | default | meaning |", "|---|---|---|---|"]
        out += [f"| {flags} | `{key}` | {f'`{default}`' if default else '–'} | {_cell(text)} |"
                for flags, key, text, default in rows]
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(options_markdown(), end="")
