"""Names and column layouts of the catalog tables, derived from n (never written per n)."""

from __future__ import annotations

SCHEMA_VERSION = 1
TOOL = "ngram-dask"

_NAMES = {1: "unigrams", 2: "bigrams", 3: "trigrams", 4: "fourgrams", 5: "fivegrams",
          6: "sixgrams", 7: "sevengrams", 8: "eightgrams"}


def ngram_table(n: int) -> str:
    return _NAMES.get(n, f"n{n}grams")


def prefix_table(n: int) -> str:
    """Prefix table of the n-grams: ``(id0..id{n-2})`` -> most frequent ``id{n-1}``."""
    return ngram_table(n)[:-1] + "_prefixes"


def id_columns(n: int) -> list[str]:
    return [f"id{j}" for j in range(n)]


def id_sql_type(vocab_size: int) -> str:
    return "USMALLINT" if vocab_size <= 1 << 16 else "UINTEGER"


def ngram_columns(n: int, vocab_size: int) -> list[tuple[str, str]]:
    t = id_sql_type(vocab_size)
    return [(c, t) for c in id_columns(n)] + [("count", "UBIGINT")]


def prefix_columns(n: int, vocab_size: int) -> list[tuple[str, str]]:
    t = id_sql_type(vocab_size)
    return [(c, t) for c in id_columns(n)] + [
        ("sum_count", "UBIGINT"),
        ("max_count", "UBIGINT"),
        ("frac_max", "DOUBLE"),
    ]


def create_sql(table: str, columns: list[tuple[str, str]]) -> str:
    cols = ", ".join(f"{name} {typ} NOT NULL" for name, typ in columns)
    return f"CREATE TABLE IF NOT EXISTS {table} ({cols})"
