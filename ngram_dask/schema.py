"""The catalog's layout: table names and columns, derived from n (never written per n),
and how token ids are stored (their narrowest type, and n of them packed in one key).

Pure names and arithmetic: every layer may import this module.
"""

from __future__ import annotations

import json
import os
import re
from typing import Mapping

import numpy as np

from ngram_dask.errors import ConfigError

SCHEMA_VERSION = 1
TOOL = "ngram-dask"

INFO = "catalog_info"  # key/value: the build's identity, versions, rules, scores
LEDGER = "load_ledger"  # (n, chunk) rows: which chunks the database holds
TOKENS = "tokens"
TOP_NGRAMS = (2, 3)  # the n that get a top table (thresholds in config.TopConfig)

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
    """The tables the build's top step writes for these n."""
    return [TOKENS] + [top_table(n) for n in ngrams if n in TOP_NGRAMS]


# --- the scan's tables and the score columns --------------------------------------------
#
# Every reader and writer of these names asks here; nothing else parses them.

_SCAN = re.compile(r"scan_(\d+)")
SCORE_PREFIX = "p_"  # p_<model>: a model's probability of a top table's expected token
SCORED_MODELS = "scored_models"  # catalog_info key: JSON {column: {model, tables: {table: rows}, ...}}


def scan_table(seq_len: int) -> str:
    """``scan_<L>``: the first-token deletion scan with short windows of L tokens."""
    return f"scan_{int(seq_len)}"


def scan_length(name: str) -> int | None:
    """L of a ``scan_<L>`` table, else None."""
    m = _SCAN.fullmatch(name)
    return int(m.group(1)) if m else None


def is_scan_table(name: str) -> bool:
    return scan_length(name) is not None


def score_column(model: str) -> str:
    """``p_<model>`` as a plain SQL identifier: ``EleutherAI/pythia-1.4b-deduped`` ->
    ``p_pythia_1_4b_deduped`` (the last part of a path or hub id; short names are expanded
    by the caller, ``lm.models.column_name``)."""
    base = os.path.basename(model.strip().rstrip("/")) or "model"
    return SCORE_PREFIX + re.sub(r"[^0-9a-zA-Z]+", "_", base).strip("_").lower()


def is_score_column(column: str) -> bool:
    """Whether a column of a top table is a score (the scan tables' ``p_long``... are not:
    ask only of top tables)."""
    return column.startswith(SCORE_PREFIX) and len(column) > len(SCORE_PREFIX)


def score_column_model(column: str) -> str:
    """The model part of a score column's name: ``p_pythia_70m_deduped`` -> ``pythia_70m_deduped``."""
    return column[len(SCORE_PREFIX):] if is_score_column(column) else column


def scored_models(info: Mapping[str, str]) -> dict[str, dict]:
    """The ``scored_models`` record of ``catalog_info``: column -> its entry (model, tables, ...).
    A missing or unreadable record, or an entry that is not a mapping, counts as not there."""
    try:
        value = json.loads(info.get(SCORED_MODELS) or "{}")
    except (TypeError, ValueError):
        return {}
    if not isinstance(value, dict):
        return {}
    return {c: e for c, e in value.items() if isinstance(e, dict)}


def scored_models_info(scored: Mapping[str, dict]) -> dict[str, str]:
    """The ``catalog_info`` row that records ``scored`` (the inverse of :func:`scored_models`)."""
    return {SCORED_MODELS: json.dumps(dict(scored), sort_keys=True)}


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


# --- scores across training checkpoints (``score --revisions``, ``exposure``) -------------

SCORES = "scores"  # one row per model, revision and prompt of the top tables
LEARNING = "learning"  # per model and prompt: when p crossed the threshold for good
EXPOSURE = "exposure"  # per prompt and step: occurrences in the sequences trained before it
SCORED_REVISIONS = "scored_revisions"  # catalog_info key: JSON {model: {revisions, threshold, final}}
EXPOSURE_INFO = "exposure"  # catalog_info key: the stream and settings the exposure table counts
_STEP = re.compile(r"step(\d+)")


def revision_step(revision: str) -> int | None:
    """The training step of a revision named ``step<N>`` (Pythia's checkpoints), else None."""
    m = _STEP.fullmatch(revision.strip())
    return int(m.group(1)) if m else None


def revision_name(step: int) -> str:
    return f"step{int(step)}"


PYTHIA_LOG_STEPS = tuple(1 << k for k in range(10))  # 1, 2, 4, ..., 512
PYTHIA_FINAL_STEP = 143_000


def pythia_steps() -> list[int]:
    """The 154 steps of Pythia's checkpoints."""
    return [0, *PYTHIA_LOG_STEPS, *range(1000, PYTHIA_FINAL_STEP + 1, 1000)]


def pythia_log_steps() -> list[int]:
    """step0, the ten log-spaced steps, every 10,000, and the final step143000 (26 in all)."""
    return [0, *PYTHIA_LOG_STEPS, *range(10_000, PYTHIA_FINAL_STEP, 10_000), PYTHIA_FINAL_STEP]


def _range(entry: str, key: str) -> list[int]:
    """``step1000:143000:4000`` (or ``1000:143000:4000``): start to stop inclusive, by stride."""
    parts = [p.strip().removeprefix("step") for p in entry.split(":")]
    try:
        start, stop, stride = (int(p) for p in parts) if len(parts) == 3 else (None, None, None)
    except ValueError:
        start = None
    if start is None or start < 0 or stop < start or stride < 1:
        raise ConfigError(f"{key}: {entry!r} is not a range stepSTART:STOP:STRIDE "
                          "(0 <= START <= STOP, STRIDE >= 1)")
    return list(range(start, stop + 1, stride))


def expand_revisions(entries: list[str], key: str = "score.revisions") -> list[str]:
    """The revisions named by ``entries`` (names, ``pythia``, ``pythia-log``, ranges), each
    once, sorted by step; revisions without a step keep their order, after the others."""
    names: list[str] = []
    for entry in (e.strip() for e in entries):
        if not entry:
            continue
        if entry == "pythia":
            names += [revision_name(s) for s in pythia_steps()]
        elif entry == "pythia-log":
            names += [revision_name(s) for s in pythia_log_steps()]
        elif ":" in entry:
            names += [revision_name(s) for s in _range(entry, key)]
        else:
            names.append(entry)
    names = list(dict.fromkeys(names))
    by_step: dict[int, str] = {}
    for name in names:
        step = revision_step(name)
        if step is not None and by_step.setdefault(step, name) != name:
            raise ConfigError(f"{key}: {by_step[step]!r} and {name!r} are the same step {step}")
    stepped = sorted((n for n in names if revision_step(n) is not None), key=revision_step)
    return stepped + [n for n in names if revision_step(n) is None]


def score_model(model: str) -> str:
    """The ``model`` value of the ``scores``/``learning`` rows: the name part of its ``p_<model>``."""
    return score_column_model(score_column(model))


def learned_columns(label: str) -> tuple[str, str]:
    """The top tables' columns that let the task browser filter and sort by a model's
    learning: ``learned_step_<model>`` (UINTEGER) and ``forgotten_<model>`` (0 or 1)."""
    return f"learned_step_{label}", f"forgotten_{label}"


def scores_columns(vocab_size: int) -> list[tuple[str, str]]:
    return [("model", "VARCHAR NOT NULL"), ("revision", "VARCHAR NOT NULL"), ("step", "UINTEGER")] \
        + prompt_columns(vocab_size) + [("p", "DOUBLE NOT NULL")]


def learning_columns(vocab_size: int) -> list[tuple[str, str]]:
    return [("model", "VARCHAR NOT NULL")] + prompt_columns(vocab_size) + [
        ("learned_step", "UINTEGER"),  # first scored step from which p >= threshold at every later one
        ("first_step_above", "UINTEGER"),  # first scored step with p >= threshold
        ("peak_p", "DOUBLE NOT NULL"),
        ("peak_step", "UINTEGER NOT NULL"),  # the earliest step at which peak_p was reached
        ("final_p", "DOUBLE NOT NULL"),  # p at the last scored step
        ("forgotten", "BOOLEAN NOT NULL"),  # above the threshold at some step, below at the last
        ("steps", "USMALLINT NOT NULL"),  # scored steps the row summarises
    ]


def exposure_columns(vocab_size: int) -> list[tuple[str, str]]:
    return prompt_columns(vocab_size) + [
        ("step", "UINTEGER NOT NULL"),  # a checkpoint: counts cover sequences < step * samples_per_step
        ("prompt_seen", "UBIGINT NOT NULL"),  # occurrences of the prompt in those sequences
        ("task_seen", "UBIGINT NOT NULL"),  # ... followed by the expected next id
    ]
