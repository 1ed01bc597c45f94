"""The catalog's layout: table names and columns, derived from n (never written per n),
and how token ids are stored (their narrowest type, and n of them packed in one key).

Pure names and arithmetic: every layer may import this module.
"""

from __future__ import annotations

import numpy as np

SCHEMA_VERSION = 1
TOOL = "ngram-dask"

INFO = "catalog_info"  # key/value: the build's identity, versions, rules, scores
LEDGER = "load_ledger"  # (n, chunk) rows: which chunks the database holds
TOKENS = "tokens"
TOP_NGRAMS = (2, 3)  # the n that get a top table (thresholds in config.CatalogConfig)

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


def top_table(n: int) -> str:
    """``top_bigrams``, ``top_trigrams``: the prefixes that almost always predict one token."""
    return "top_" + prefix_table(n).replace("_prefixes", "s")


def catalog_tables(ngrams: list[int]) -> list[str]:
    """The tables the build's catalog step writes for these n."""
    return [TOKENS] + [top_table(n) for n in ngrams if n in TOP_NGRAMS]


# --- token ids --------------------------------------------------------------------------
#
# An n-gram of ids ``(t0, ..., t{n-1})`` packs into one ``uint64`` key, ``bits`` bits per
# id, ``t0`` in the most significant place: sorting keys sorts n-grams.


def key_bits(vocab_size: int) -> int:
    """Bits per token id in a packed key: enough for ids in ``[0, vocab_size)``."""
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be at least 2, got {vocab_size}")
    return int(vocab_size - 1).bit_length()


def check_key_fits(n: int, bits: int) -> None:
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if n * bits > 64:
        raise ValueError(
            f"{n}-grams of {bits}-bit ids need {n * bits} bits, more than one 64-bit key holds; "
            f"ids of {bits} bits fit n <= {64 // bits}"
        )


def id_dtype(vocab_size: int) -> np.dtype:
    """The narrowest unsigned dtype that holds every id (``uint16`` for GPT-NeoX)."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


# --- contexts: real examples of every task (``ngram-dask contexts``) ---------------------

CONTEXTS = "contexts"  # up to per_task examples per prompt of the top tables
CONTEXT_COUNTS = "context_counts"  # per prompt: occurrences counted (= its sum_count)
CONTEXTS_LEDGER = "contexts_ledger"  # one row per piece of input the tables hold
CONTEXTS_INFO = "contexts"  # catalog_info key: the settings the tables were written with


def prompt_columns(vocab_size: int) -> list[tuple[str, str]]:
    """A prompt of a top table: ``n`` (2: top_bigrams, 3: top_trigrams) and its ids;
    ``id1`` is NULL for a bigram prompt (one id)."""
    t = id_sql_type(vocab_size)
    return [("n", "UTINYINT NOT NULL"), ("id0", f"{t} NOT NULL"), ("id1", t)]


def contexts_columns(vocab_size: int) -> list[tuple[str, str]]:
    t = id_sql_type(vocab_size)
    return prompt_columns(vocab_size) + [
        ("rank", "USMALLINT NOT NULL"),  # 1..per_task within the prompt, by priority
        ("expected", f"{t} NOT NULL"),  # the top table's next id
        ("actual", f"{t} NOT NULL"),  # the id that follows here
        ("shard", "UINTEGER NOT NULL"),  # the file's index in the input's shard list
        ("shard_file", "VARCHAR NOT NULL"),  # its path relative to the input root
        ("sample", "UINTEGER NOT NULL"),  # the sample's index in that file
        ("pos", "UINTEGER NOT NULL"),  # offset of the prompt's first id in the sample
        ("window_start", "UINTEGER NOT NULL"),  # offset of window_ids[1] in the sample
        ("prompt_at", "USMALLINT NOT NULL"),  # pos - window_start: the prompt's place in window_ids (0-based)
        ("window_ids", f"{t}[] NOT NULL"),  # before, the prompt, the next id, after
        ("priority", "UBIGINT NOT NULL"),  # the hash that chose it (smallest first)
    ]


def context_counts_columns(vocab_size: int) -> list[tuple[str, str]]:
    return prompt_columns(vocab_size) + [("occurrences", "UBIGINT NOT NULL")]


def contexts_ledger_columns() -> list[tuple[str, str]]:
    return [("piece", "VARCHAR NOT NULL"), ("samples", "UBIGINT NOT NULL"), ("tokens", "UBIGINT NOT NULL"),
            ("occurrences", "UBIGINT NOT NULL"), ("kept", "UBIGINT NOT NULL")]


def typed_create_sql(table: str, columns: list[tuple[str, str]], replace: bool = False) -> str:
    """CREATE TABLE with the columns' full types (constraints included)."""
    cols = ", ".join(f"{name} {typ}" for name, typ in columns)
    return f"CREATE {'OR REPLACE ' if replace else ''}TABLE {table} ({cols})"
