"""Ask the catalog what follows a text: the n-gram tables as a next-token predictor.

The prompt is tokenized without special tokens; for every n-gram table with n >= 2
(longest context first) its last ``n - 1`` tokens are the context, and the top-k
followers of that context are returned with ``probability = count / prefix count``,
where the prefix count is the number of times the context is followed by any token
(``sum_count`` of the prefix table, which is the sum of the followers' counts).
"""

from __future__ import annotations

from ngram_dask.catalog.api import Catalog, EmptyPromptError, resolve_tokenizer_name  # noqa: F401  (re-exported)
from ngram_dask.errors import UserError
from ngram_dask.tokenizer import DEFAULT_TOKENIZER


def run_query(db: str, prompt: str, top: int = 5, tokenizer_flag: str | None = None,
              configured_tokenizer: str = DEFAULT_TOKENIZER, announce=None) -> dict:
    """The whole answer as a JSON-ready dict; ``found`` says whether any context occurs.

    The lookups are ``Catalog.lookups`` (the same code the server and notebooks use).
    """
    if top < 1:
        raise UserError(f"--top must be >= 1, got {top}")
    with Catalog(db, tokenizer=tokenizer_flag, configured_tokenizer=configured_tokenizer) as cat:
        cat.require_counts(min_n=2)  # a missing table is reported before a tokenizer is loaded
        name = cat.tokenizer_name
        built_with = cat.info.get("tokenizer")
        if announce and built_with and name != built_with:
            announce(f"note: {db} was built with tokenizer {built_with!r}; tokenizing with {name!r}")
        ids = cat.tokenize(prompt)
        lookups = cat.lookups(ids, top)
        strings = cat.token_text(ids)
    return {
        "prompt": prompt,
        "db": db,
        "tokenizer": name,
        "tokens": [{"id": i, "token": t} for i, t in zip(ids, strings)],
        "lookups": lookups,
        "found": any(lk["completions"] for lk in lookups),
    }


def _pct(p: float) -> str:
    if p >= 0.0005 or p == 0:
        return f"{100 * p:.1f}%"
    return "<0.1%"


def _show(token: str) -> str:
    """A token as a quoted Python literal, so spaces and newlines are visible."""
    return repr(token)


def format_result(res: dict) -> str:
    """The answer as text tables, one per n-gram table (longest context first)."""
    toks = " ".join(f"{_show(t['token'])}({t['id']})" for t in res["tokens"])
    lines = [f"prompt {_show(res['prompt'])} -> {len(res['tokens'])} token(s): {toks}"]
    for lk in res["lookups"]:
        lines.append("")
        if lk["context"] is None:
            lines.append(f"{lk['table']}: {lk['note']}")
            continue
        ctx = " ".join(_show(t) for t in lk["context_tokens"])
        if not lk["completions"]:
            lines.append(f"{lk['table']}: after {ctx}: never occurs in the corpus")
            continue
        lines.append(f"{lk['table']}: after {ctx} (prefix count {lk['prefix_count']:,}):")
        header = ("rank", "next", "id", "prob", "count", "prefix_count")
        body = [(str(c["rank"]), _show(c["token"]), str(c["id"]), _pct(c["probability"]),
                 f"{c['count']:,}", f"{lk['prefix_count']:,}") for c in lk["completions"]]
        widths = [max(len(r[j]) for r in [header, *body]) for j in range(len(header))]
        left = {1}  # the token column reads best left-aligned
        for row in [header, *body]:
            cells = [cell.ljust(w) if j in left else cell.rjust(w) for j, (cell, w) in enumerate(zip(row, widths))]
            lines.append("  " + "  ".join(cells).rstrip())
    if not res["found"]:
        lines.append("")
        lines.append(f"no completions: the last tokens of {_show(res['prompt'])} never occur in {res['db']}")
    return "\n".join(lines)
