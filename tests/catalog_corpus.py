"""The corpus the catalog tests build (test_catalog, test_query, test_export, test_report).

Real GPT-NeoX token ids, so the text reads as text:

* " telomeres" 998 times and " telome is" twice: the bigram (" telome", "res") has
  count 998 of 1000, so ``query " telome"`` answers "res" with 99.8%;
* "sodium chloride, or common salt." 1100 times and "water, or ice." 100 times: the
  trigram prefix ("," " or") occurs 1200 times (> 1000, a top trigram), followed by
  " common" 1100 times;
* 3000 ids of a seeded Markov chain over 60 ids, for prefixes of every frac_max,
  and one document of padding ids (>= 50277) that decode to ''.

Each document ends with <|endoftext|> (id 0); whole documents are packed into samples
of at most 256 tokens, so no sentence is cut by a sample boundary.
"""

from __future__ import annotations

import random
from pathlib import Path

from helpers import write_mds

VOCAB_SIZE = 50432
CHUNKS = 4
TELOME, RES = 38103, 373


def corpus_samples(tokenizer) -> list[list[int]]:
    def enc(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    docs: list[list[int]] = []
    docs += [enc(" telomeres protect chromosome ends.")] * 998
    docs += [enc(" telome is rare.")] * 2
    docs += [enc("sodium chloride, or common salt.")] * 1100
    docs += [enc("water, or ice.")] * 100
    rng = random.Random(1234)
    # A Markov chain over 60 ids: each id has a favourite follower it picks with its own
    # probability, so the prefixes spread over every frac_max (ties included).
    pool = [i for i in rng.sample(range(1, 50277), 61) if i != TELOME][:60]
    favourite = {t: rng.choice(pool) for t in pool}
    strength = {t: rng.random() for t in pool}
    for _ in range(12):
        t, doc = rng.choice(pool), []
        for _ in range(250):
            doc.append(t)
            t = favourite[t] if rng.random() < strength[t] else rng.choice(pool)
        docs.append(doc)
    docs.append([50300, 50301, 50431, 50300, 50301])
    rng.shuffle(docs)
    # Whole documents per sample (n-grams never cross samples, so none is cut in two).
    samples: list[list[int]] = [[]]
    for d in docs:
        if len(samples[-1]) + len(d) + 1 > 256:
            samples.append([])
        samples[-1] += d + [0]
    return samples


def build_catalog_db(root: Path, scheduler: str, tokenizer_path: str, **overrides) -> tuple[Path, list[list[int]]]:
    """MDS of the corpus -> ``ngram-dask build`` (with the top step) on ``scheduler``."""
    from transformers import AutoTokenizer

    from ngram_dask.config import load_config
    from ngram_dask.ngrams.pipeline import run_build

    tok = AutoTokenizer.from_pretrained(tokenizer_path)
    samples = corpus_samples(tok)
    write_mds(root / "mds", samples)
    db = root / "ngrams.duckdb"
    cfg = load_config(None, {
        "input": str(root / "mds"), "work_dir": str(root / "work"), "db": str(db),
        "tokenizer": tokenizer_path, "vocab_size": VOCAB_SIZE, "build.chunks": CHUNKS,
        "build.ngrams": [2, 3], "cluster.scheduler": scheduler, **overrides,
    })
    run_build(cfg, announce=lambda msg: None)
    return db, samples


def _copy(good: Path, dest: Path, *sql: str) -> Path:
    import shutil

    import duckdb

    shutil.copy(good, dest)
    con = duckdb.connect(str(dest))
    try:
        for stmt in sql:
            con.execute(stmt)
    finally:
        con.close()
    return dest


def bad_databases(good: Path, tmp: Path) -> dict[str, tuple[Path, str]]:
    """Databases the readers (query, export, report) must refuse: name -> (path, words of the error)."""
    import duckdb

    tmp.mkdir(parents=True, exist_ok=True)
    text = tmp / "notes.duckdb"
    text.write_text("not a database\n" * 100)
    other = tmp / "other-tool.duckdb"
    con = duckdb.connect(str(other))
    con.execute("CREATE TABLE bigrams (a INTEGER, b INTEGER)")
    con.close()
    return {
        "missing": (tmp / "nope.duckdb", "does not exist: run `ngram-dask build` first"),
        "not_duckdb": (text, "not a DuckDB database"),
        "other_tool": (other, "not written by ngram-dask"),
        "old_schema": (_copy(good, tmp / "old.duckdb",
                             "UPDATE catalog_info SET value = '0' WHERE key = 'schema_version'"),
                       "schema version 0"),
        "unfinished": (_copy(good, tmp / "unfinished.duckdb", "DELETE FROM load_ledger WHERE n = 3 AND chunk = 1"),
                       "unfinished build"),
        "no_bigrams": (_copy(good, tmp / "no-bigrams.duckdb", "DROP TABLE bigrams"),
                       "has no table bigrams: run `ngram-dask build` first"),
    }
