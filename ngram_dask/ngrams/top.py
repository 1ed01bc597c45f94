"""The build's top step: tables for people, built from the counts in the database.

* ``tokens(id, token)``: ``tokenizer.decode([id])`` for every id below ``vocab_size``
  (ids the tokenizer lacks, such as Pythia's padding, decode to ''). Decoded without
  cleaning up spaces, so ``' ,'`` stays ``' ,'`` and ``seq`` is the exact text.
* ``top_<n-grams>``: prefixes that almost always predict one next token: rows of
  the prefix table with ``frac_max`` and ``sum_count`` above the configured
  thresholds, with each token as text and ``seq`` their concatenation, ordered by
  ``frac_max`` desc, ``sum_count`` desc (then the ids, so the order is deterministic).

The last step of the build: it runs on the build's own writer connection.
"""

from __future__ import annotations

from ngram_dask.config import TopConfig
from ngram_dask.db import scalar, table_names, transaction
from ngram_dask.schema import INFO, TOKENS, TOP_NGRAMS, id_columns, id_sql_type, prefix_table, top_table

# n -> (min frac_max, min sum_count) config fields, for each n of schema.TOP_NGRAMS.
_THRESHOLDS = {2: ("top_bigram_min_frac", "top_bigram_min_count"),
               3: ("top_trigram_min_frac", "top_trigram_min_count")}
assert set(_THRESHOLDS) == set(TOP_NGRAMS)


def rule_key(n: int) -> str:
    """catalog_info key holding the filter a top table was built with."""
    return f"{top_table(n)}_rule"


def decode_vocab(tokenizer, vocab_size: int) -> list[str]:
    """Each id decoded alone (``tokenizer.decode([id])`` without space clean-up); ids beyond
    the tokenizer's vocabulary become ''."""
    known = min(len(tokenizer), vocab_size)
    singles = [[i] for i in range(known)]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # a fast tokenizer: what its decode() calls, in one batch
        out = backend.decode_batch(singles, skip_special_tokens=False)
    else:
        out = tokenizer.batch_decode(singles, clean_up_tokenization_spaces=False)
    return list(out) + [""] * max(0, vocab_size - known)


def write_tokens(con, tokenizer, vocab_size: int) -> int:
    import pyarrow as pa

    strings = decode_vocab(tokenizer, vocab_size)
    table = pa.table({"id": pa.array(range(vocab_size), pa.uint32()), "token": pa.array(strings, pa.string())})
    con.register("_tokens_arrow", table)
    try:
        # Same id type as the n-gram tables (USMALLINT below 2^16 ids).
        con.execute(f"CREATE OR REPLACE TABLE tokens AS SELECT id::{id_sql_type(vocab_size)} AS id, token "
                    "FROM _tokens_arrow ORDER BY id")
    finally:
        con.unregister("_tokens_arrow")
    return vocab_size


def top_sql(n: int) -> str:
    """CREATE statement of the top table for n; parameters: (min frac_max, min sum_count)."""
    ids = id_columns(n)
    # LEFT JOIN: an id without a tokens row (cannot happen in a valid build) keeps its
    # n-gram with '' as text instead of silently dropping it.
    joins = " ".join(f"LEFT JOIN tokens t{j} ON t{j}.id = p.{c}" for j, c in enumerate(ids))
    token_cols = ", ".join(f"coalesce(t{j}.token, '') AS token{j}" for j in range(n))
    seq = " || ".join(f"coalesce(t{j}.token, '')" for j in range(n))
    return (
        f"CREATE OR REPLACE TABLE {top_table(n)} AS "
        f"SELECT p.*, {token_cols}, {seq} AS seq FROM {prefix_table(n)} p {joins} "
        f"WHERE p.frac_max > ? AND p.sum_count > ? "
        f"ORDER BY p.frac_max DESC, p.sum_count DESC, {', '.join('p.' + c for c in ids)}"
    )


def _thresholds(n: int, cfg: TopConfig) -> tuple[float, int]:
    frac_key, count_key = _THRESHOLDS[n]
    return float(getattr(cfg, frac_key)), int(getattr(cfg, count_key))


def top_rules(ngrams: list[int], cfg: TopConfig) -> dict[str, str]:
    """``{top_bigrams_rule: "frac_max > 0.5 AND sum_count > 0", ...}`` for this configuration."""
    rules = {}
    for n in ngrams:
        if n in _THRESHOLDS:
            min_frac, min_count = _thresholds(n, cfg)
            rules[rule_key(n)] = f"frac_max > {min_frac:g} AND sum_count > {min_count}"
    return rules


def build_top_tables(con, tokenizer, vocab_size: int, ngrams: list[int], cfg: TopConfig) -> dict[str, int]:
    """Write ``tokens`` and the top tables in one transaction; returns rows per table.

    The filter of each top table is recorded in ``catalog_info`` (``top_bigrams_rule``...)
    so exports and reports can say what the table holds.
    """
    rows = {}
    rules = top_rules(ngrams, cfg)
    has_info = INFO in table_names(con)
    with transaction(con):
        rows[TOKENS] = write_tokens(con, tokenizer, vocab_size)
        for n in ngrams:
            if n not in _THRESHOLDS:
                continue
            con.execute(top_sql(n), list(_thresholds(n, cfg)))
            rows[top_table(n)] = scalar(con, f"SELECT count(*) FROM {top_table(n)}")
            if has_info:
                con.execute(f"INSERT OR REPLACE INTO {INFO} VALUES (?, ?)", [rule_key(n), rules[rule_key(n)]])
    return rows
