"""The corpus the catalog tests build (test_catalog, test_query, test_export, test_report).

Real GPT-NeoX token ids, so the text reads as text:

* " telomeres" 998 times and " telome is" twice: the bigram (" telome", "res") has
  count 998 of 1000, so ``query " telome"`` answers "res" with 99.8%;
* "sodium chloride, or common salt." 1100 times and "water, or ice." 100 times: the
  trigram prefix ("," " or") occurs 1200 times (> 1000, a top trigram), followed by
  " common" 1100 times;
* 3000 ids drawn from a pool of 40 (seeded), for prefixes of every frac_max with ties,
  and one document of padding ids (>= 50277) that decode to ''.

Documents are joined with <|endoftext|> (id 0) and cut into samples of 256 tokens.
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
    pool = [i for i in rng.sample(range(1, 50277), 41) if i != TELOME][:40]
    docs += [[rng.choice(pool) for _ in range(300)] for _ in range(10)]
    docs.append([50300, 50301, 50431, 50300, 50301])
    rng.shuffle(docs)
    stream: list[int] = []
    for d in docs:
        stream += d + [0]
    return [stream[i:i + 256] for i in range(0, len(stream), 256)]


def build_catalog_db(root: Path, scheduler: str, tokenizer_path: str, **overrides) -> tuple[Path, list[list[int]]]:
    """MDS of the corpus -> ``ngram-dask build`` (with the catalog step) on ``scheduler``."""
    from transformers import AutoTokenizer

    from ngram_dask.config import load_config
    from ngram_dask.pipeline import run_build

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
