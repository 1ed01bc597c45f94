"""Ask the catalog what follows a text: the n-gram tables as a next-token predictor.

The prompt is tokenized without special tokens; for every n-gram table with n >= 2
(longest context first) its last ``n - 1`` tokens are the context, and the top-k
followers of that context are returned with ``probability = count / prefix count``,
where the prefix count is the number of times the context is followed by any token
(``sum_count`` of the prefix table).
"""

from __future__ import annotations

from dataclasses import dataclass

from .catalog import Catalog, open_catalog
from .errors import UserError
from .schema import id_columns, ngram_table, prefix_table


class EmptyPromptError(UserError):
    """The prompt has no tokens to look up."""


@dataclass
class Completion:
    rank: int
    id: int
    token: str
    count: int
    probability: float


def resolve_tokenizer_name(flag: str | None, info: dict[str, str], configured: str) -> str:
    """``--tokenizer``, else the one the build recorded, else the configured one."""
    return flag or info.get("tokenizer") or configured


def tokenize(tokenizer, prompt: str) -> list[int]:
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if not ids:
        raise EmptyPromptError(f"the prompt {prompt!r} tokenizes to nothing: give some text to complete")
    return [int(i) for i in ids]


def token_strings(cat: Catalog, tokenizer, ids: list[int]) -> dict[int, str]:
    """Token text from the catalog's ``tokens`` table (what the top tables show), else the tokenizer."""
    out: dict[int, str] = {}
    known = sorted(i for i in set(ids) if cat.vocab_size is None or i < cat.vocab_size)
    if "tokens" in cat.tables and known:
        marks = ", ".join("?" for _ in known)
        out = dict(cat.con.execute(f"SELECT id, token FROM tokens WHERE id IN ({marks})", known).fetchall())
    for i in set(ids) - set(out):
        out[i] = tokenizer.decode([i], clean_up_tokenization_spaces=False)
    return out


def prefix_count(cat: Catalog, n: int, context: list[int]) -> int:
    """How often ``context`` is followed by any token (0 if never)."""
    where = " AND ".join(f"{c} = ?" for c in id_columns(n)[:-1])
    if prefix_table(n) in cat.tables:
        row = cat.con.execute(f"SELECT sum_count FROM {prefix_table(n)} WHERE {where}", context).fetchone()
    else:
        row = cat.con.execute(f"SELECT sum(count) FROM {ngram_table(n)} WHERE {where}", context).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def followers(cat: Catalog, n: int, context: list[int], k: int) -> list[tuple[int, int]]:
    """The k most frequent followers of ``context`` as (id, count); ties: smaller id first."""
    ids = id_columns(n)
    where = " AND ".join(f"{c} = ?" for c in ids[:-1])
    return [(int(i), int(c)) for i, c in cat.con.execute(
        f"SELECT {ids[-1]}, count FROM {ngram_table(n)} WHERE {where} "
        f"ORDER BY count DESC, {ids[-1]} LIMIT ?", [*context, k]
    ).fetchall()]


def lookup(cat: Catalog, n: int, prompt_ids: list[int], k: int) -> dict:
    """One table's answer: the context, its prefix count and the top-k completions (ids only)."""
    table = ngram_table(n)
    if len(prompt_ids) < n - 1:
        return {"n": n, "table": table, "context": None, "prefix_count": 0, "completions": [],
                "note": f"needs {n - 1} tokens of context, the prompt has {len(prompt_ids)}"}
    context = prompt_ids[len(prompt_ids) - (n - 1):]
    vocab = cat.vocab_size
    if vocab is not None and any(i >= vocab for i in context):
        total, rows = 0, []  # an id the build could not hold never occurs
    else:
        total = prefix_count(cat, n, context)
        rows = followers(cat, n, context, k) if total else []
    return {"n": n, "table": table, "context": context, "prefix_count": total,
            "completions": [{"rank": r, "id": i, "count": c, "probability": c / total}
                            for r, (i, c) in enumerate(rows, 1)],
            "note": None if total else "the context never occurs in the corpus"}


def run_query(db: str, prompt: str, top: int = 5, tokenizer_flag: str | None = None,
              configured_tokenizer: str = "EleutherAI/gpt-neox-20b", announce=None) -> dict:
    """The whole answer as a JSON-ready dict; ``found`` says whether any context occurs."""
    from .tokenizer import load_tokenizer

    if top < 1:
        raise UserError(f"--top must be >= 1, got {top}")
    with open_catalog(db) as cat:
        ns = cat.require_counts(min_n=2)
        name = resolve_tokenizer_name(tokenizer_flag, cat.info, configured_tokenizer)
        built_with = cat.info.get("tokenizer")
        if announce and built_with and name != built_with:
            announce(f"note: {db} was built with tokenizer {built_with!r}; tokenizing with {name!r}")
        tokenizer = load_tokenizer(name)
        ids = tokenize(tokenizer, prompt)
        lookups = [lookup(cat, n, ids, top) for n in sorted(ns, reverse=True)]
        needed = set(ids) | {c["id"] for lk in lookups for c in lk["completions"]}
        strings = token_strings(cat, tokenizer, list(needed))
    for lk in lookups:
        lk["context_tokens"] = [strings[i] for i in lk["context"]] if lk["context"] else []
        for c in lk["completions"]:
            c["token"] = strings[c["id"]]
    return {
        "prompt": prompt,
        "db": db,
        "tokenizer": name,
        "tokens": [{"id": i, "token": strings[i]} for i in ids],
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
