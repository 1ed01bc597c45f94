"""``ngram-dask query``: top next-token completions of a text in the n-gram tables (read-only).

Tokenize PROMPT (no special tokens) and print the most frequent next tokens after its
last two tokens (trigrams) and its last token (bigrams), with probability, count and
prefix count. Exit status: 0 when some context of the prompt occurs in the corpus; 1
when none does (like grep: the answer "never occurs" is printed, it is not an error);
2 for a user error (no database, another tool's database, an empty prompt...).
"""

from __future__ import annotations

import json
import sys

from ngram_dask.cli.common import READER_FLAGS, add_switches, command, config_from

EXIT_NOT_FOUND = 1


def register(sub) -> None:
    p = command(sub, __doc__, [READER_FLAGS, {("--top", "-k"): "query.top"}])
    add_switches(p, {"--json": ("query.json", True)})
    p.add_argument("_prompt", metavar="PROMPT", help="text whose next token to look up, e.g. ' telome'")

    def run(args) -> int:
        from ngram_dask.catalog.query import format_result, run_query

        flag_tokenizer = args.tokenizer  # None unless given: then the build's own tokenizer wins
        cfg = config_from(args, "query")
        res = run_query(cfg.db, args._prompt, top=cfg.query.top, tokenizer_flag=flag_tokenizer,
                        configured_tokenizer=cfg.tokenizer,
                        announce=None if args._quiet else (lambda msg: print(msg, file=sys.stderr)))
        if cfg.query.json:
            print(json.dumps(res, ensure_ascii=False, indent=2))
        else:
            print(format_result(res))
        return 0 if res["found"] else EXIT_NOT_FOUND

    p.set_defaults(_run=run)
