"""The catalog step: tables for people, built from the counts in the database.

* ``tokens(id, token)``: ``tokenizer.decode([id])`` for every id below ``vocab_size``
  (ids the tokenizer lacks, such as Pythia's padding, decode to '').
* ``top_<n-grams>``: prefixes that almost always predict one next token: rows of
  the prefix table with ``frac_max`` and ``sum_count`` above the configured
  thresholds, with each token as text and ``seq`` their concatenation.
"""

from __future__ import annotations

from .config import CatalogConfig
from .schema import id_columns, prefix_table

# n -> (min frac_max, min sum_count) config fields; n without an entry gets no top table.
_THRESHOLDS = {2: ("top_bigram_min_frac", "top_bigram_min_count"),
               3: ("top_trigram_min_frac", "top_trigram_min_count")}


def top_table(n: int) -> str:
    return "top_" + prefix_table(n).replace("_prefixes", "s")


def decode_vocab(tokenizer, vocab_size: int) -> list[str]:
    """Each id decoded alone; ids beyond the tokenizer's vocabulary become ''."""
    known = len(tokenizer)
    out = tokenizer.batch_decode([[i] for i in range(min(known, vocab_size))],
                                 clean_up_tokenization_spaces=False)
    return out + [""] * max(0, vocab_size - known)


def write_tokens(con, tokenizer, vocab_size: int) -> int:
    import pyarrow as pa

    strings = decode_vocab(tokenizer, vocab_size)
    table = pa.table({"id": pa.array(range(vocab_size), pa.uint32()), "token": pa.array(strings, pa.string())})
    con.register("_tokens_arrow", table)
    con.execute("CREATE OR REPLACE TABLE tokens AS SELECT id, token FROM _tokens_arrow ORDER BY id")
    con.unregister("_tokens_arrow")
    return vocab_size


def top_sql(n: int) -> str:
    """CREATE statement of the top table for n; parameters: (min frac_max, min sum_count)."""
    ids = id_columns(n)
    joins = " ".join(f"JOIN tokens t{j} ON t{j}.id = p.{c}" for j, c in enumerate(ids))
    token_cols = ", ".join(f"t{j}.token AS token{j}" for j in range(n))
    seq = " || ".join(f"t{j}.token" for j in range(n))
    return (
        f"CREATE OR REPLACE TABLE {top_table(n)} AS "
        f"SELECT p.*, {token_cols}, {seq} AS seq FROM {prefix_table(n)} p {joins} "
        f"WHERE p.frac_max > ? AND p.sum_count > ? "
        f"ORDER BY p.frac_max DESC, p.sum_count DESC, {', '.join('p.' + c for c in ids)}"
    )


def catalog_tables(ngrams: list[int]) -> list[str]:
    return ["tokens"] + [top_table(n) for n in ngrams if n in _THRESHOLDS]


def build_catalog(con, tokenizer, vocab_size: int, ngrams: list[int], cfg: CatalogConfig) -> dict[str, int]:
    """Write ``tokens`` and the top tables in one transaction; returns rows per table."""
    rows = {}
    con.execute("BEGIN TRANSACTION")
    try:
        rows["tokens"] = write_tokens(con, tokenizer, vocab_size)
        for n in ngrams:
            if n not in _THRESHOLDS:
                continue
            frac_key, count_key = _THRESHOLDS[n]
            con.execute(top_sql(n), [float(getattr(cfg, frac_key)), int(getattr(cfg, count_key))])
            rows[top_table(n)] = con.execute(f"SELECT count(*) FROM {top_table(n)}").fetchone()[0]
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return rows
