"""The benchmark's corpus: ``ceil(tokens / 2048)`` samples of 2048 uint16 tokens, written with
``streaming.MDSWriter`` (zstd) and cached.

On disk, under the cache folder (``bench-data/`` by default)::

    text-tokens-<N>.u16                                   the first N tokens of real text (raw uint16)
    corpus-<text|zipf>-<tokens>-<MiB>MiB[-real<N>]/       the MDS shards (one column ``tokens``: bytes)
        bench-corpus.json                                 what it holds, written last: its presence
                                                          means the corpus is complete

Real text is Python sources and docs found on this machine, in a fixed order, tokenized with
the bundled GPT-NeoX tokenizer; ``synthetic`` gives i.i.d. Zipf tokens instead.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TOKENIZER = REPO / "ngram_dask" / "tokenizers" / "gpt-neox-20b"  # the bundled copy
SEQ_LEN = 2048
VOCAB = 50432  # Pythia's padded GPT-NeoX vocabulary: 16-bit ids
EOS = 0

# Where the real text comes from: sources and docs already on this machine, in a fixed order.
TEXT_ROOTS = [
    Path(sys.base_prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}",
    REPO / ".venv" / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages",
    Path("/usr/lib/python3"),
]
TEXT_SUFFIXES = {".py", ".pyi", ".rst", ".md", ".txt", ".c", ".h", ".cpp", ".hpp"}


def _text_files():
    for root in TEXT_ROOTS:
        if not root.exists():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                p = Path(dirpath) / name
                if p.suffix in TEXT_SUFFIXES and not p.is_symlink():
                    try:
                        if 0 < p.stat().st_size <= 4 << 20:
                            yield p
                    except OSError:
                        continue


def _real_token_stream(target: int):
    """Token arrays of real documents (each followed by EOS) until ``target`` tokens."""
    import numpy as np
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(TOKENIZER / "tokenizer.json"))
    produced, batch = 0, []

    def flush():
        nonlocal produced
        for enc in tok.encode_batch(batch, add_special_tokens=False):
            ids = np.asarray(enc.ids + [EOS], dtype=np.uint16)
            produced += len(ids)
            yield ids
        batch.clear()

    for path in _text_files():
        try:
            batch.append(path.read_bytes().decode("utf-8", errors="replace"))
        except OSError:
            continue
        if len(batch) == 512:
            yield from flush()
            if produced >= target:
                return
    yield from flush()
    if produced < target:
        raise SystemExit(f"only {produced:,} tokens of text found; use --synthetic or fewer --tokens")


def _zipf_token_stream(target: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    ranks = np.arange(1, 50277 + 1, dtype=np.float64)
    p = ranks ** -1.1
    p /= p.sum()
    made = 0
    while made < target:
        ids = rng.choice(50277, size=1 << 22, p=p).astype(np.uint16)
        made += len(ids)
        yield ids


def _real_tokens(cache: Path, target: int, log):
    """The first ``target`` tokens of real text as one uint16 array, cached (tokenizing is slow)."""
    import numpy as np

    path = cache / f"text-tokens-{target}.u16"
    for have in sorted(cache.glob("text-tokens-*.u16")):  # a longer cached prefix serves as well
        if have.stat().st_size >= 2 * target:
            return np.fromfile(have, dtype=np.uint16, count=target)
    log(f"corpus: tokenizing {target:,} tokens of real text (once; cached in {path})")
    t0 = time.perf_counter()
    parts, have = [], 0
    for ids in _real_token_stream(target):
        parts.append(ids)
        have += len(ids)
        if have >= target:
            break
    arr = np.concatenate(parts)[:target]
    tmp = path.with_suffix(".tmp")
    arr.tofile(tmp)
    tmp.rename(path)
    log(f"corpus: tokenized in {time.perf_counter() - t0:.0f} s")
    return arr


# Copies of the real text past the first have their less frequent tokens renamed: ids from
# RENAME_FROM up are permuted, with a permutation per copy. Frequent tokens (punctuation,
# keywords, common words) stay, so the copies share much of their n-gram mass the way
# more text of one kind does, while every n-gram touching a renamed id is new: distinct
# n-grams keep growing with size, as they do in a real corpus (a plain repeat would not).
RENAME_FROM = 4096
REAL_VOCAB = 50277


def _expanded_token_stream(real, target: int):
    import numpy as np

    copy = 0
    made = 0
    while made < target:
        if copy == 0:
            ids = real
        else:
            rng = np.random.default_rng(1000 + copy)
            table = np.arange(1 << 16, dtype=np.uint16)
            table[RENAME_FROM:REAL_VOCAB] = RENAME_FROM + rng.permutation(REAL_VOCAB - RENAME_FROM).astype(np.uint16)
            ids = table[real]
        take = min(len(ids), target - made)
        for lo in range(0, take, 1 << 24):
            yield ids[lo:min(lo + (1 << 24), take)]
        made += take
        copy += 1


def make_corpus(cache: Path, tokens: int, shard_bytes: int, synthetic: bool, log,
                real_tokens: int | None = None) -> tuple[Path, dict]:
    """The MDS corpus (cached): ``ceil(tokens / 2048)`` samples of 2048 tokens.

    Real text by default: up to ``real_tokens`` tokens are tokenized text; a larger
    corpus repeats that text with the rare tokens renamed per copy (see RENAME_FROM).
    """
    import numpy as np

    kind = "zipf" if synthetic else "text"
    n_samples = math.ceil(tokens / SEQ_LEN)
    real_cap = n_samples * SEQ_LEN if real_tokens is None else min(int(real_tokens), n_samples * SEQ_LEN)
    tag = "" if synthetic or real_cap >= n_samples * SEQ_LEN else f"-real{real_cap}"
    root = cache / f"corpus-{kind}-{tokens}-{shard_bytes >> 20}MiB{tag}"
    info_path = root / "bench-corpus.json"
    if info_path.exists():
        return root, json.loads(info_path.read_text())
    from streaming import MDSWriter

    if root.exists():
        shutil.rmtree(root)
    if synthetic:
        stream = _zipf_token_stream(n_samples * SEQ_LEN)
    else:
        stream = _expanded_token_stream(_real_tokens(cache, real_cap, log), n_samples * SEQ_LEN)
    log(f"corpus: writing {n_samples:,} samples of {SEQ_LEN} tokens ({kind}{tag}) to {root}")
    t0 = time.perf_counter()
    pending, have, written = [], 0, 0
    with MDSWriter(out=str(root), columns={"tokens": "bytes"}, compression="zstd",
                   size_limit=shard_bytes) as w:
        for ids in stream:
            pending.append(ids)
            have += len(ids)
            if have < SEQ_LEN:
                continue
            flat = np.concatenate(pending)
            whole = min(len(flat) // SEQ_LEN, n_samples - written)
            for row in flat[: whole * SEQ_LEN].reshape(whole, SEQ_LEN):
                w.write({"tokens": row.tobytes()})
            written += whole
            rest = flat[whole * SEQ_LEN:]
            pending, have = [rest], len(rest)
            if written == n_samples:
                break
    info = {"kind": kind, "samples": written, "tokens": written * SEQ_LEN,
            "real_text_tokens": None if synthetic else real_cap,
            "renamed_from_id": RENAME_FROM if tag else None,
            "shard_bytes": shard_bytes, "seconds_to_make": round(time.perf_counter() - t0, 1)}
    if written * SEQ_LEN <= STATISTICS_MAX_TOKENS:
        info.update(corpus_statistics(root))
    else:  # the builds' own distinct counts stand; bench_regime big checks them by brute force
        info.update({"distinct_tokens": None, "distinct_bigrams": None, "distinct_trigrams": None,
                     "distinct_growth": None})
    info_path.write_text(json.dumps(info, indent=1))
    return root, info


# corpus_statistics holds every distinct key in memory, ~24 B each while merging: at 1e10 tokens
# of this corpus (~7% distinct trigrams) that is more than this 24 GiB machine has.
STATISTICS_MAX_TOKENS = 2 * 10**9


def corpus_statistics(root: Path) -> dict:
    """Distinct tokens, bigrams and trigrams, at a quarter, half and all of the corpus.

    Computed independently of both builds: ``np.unique`` of every shard's packed keys,
    merged with ``np.unique`` again at each checkpoint.
    """
    import numpy as np

    from ngram_dask.mds import list_shards, read_shard
    from ngram_dask.ngrams import counting

    shards = list_shards(str(root))
    checkpoints = sorted({max(1, round(len(shards) * f)) for f in (0.25, 0.5, 1.0)})
    merged = {2: np.empty(0, np.uint64), 3: np.empty(0, np.uint64)}
    pending: dict[int, list] = {2: [], 3: []}
    toks = np.zeros(1 << 16, bool)
    growth, tokens_so_far = [], 0
    for i, ref in enumerate(shards):
        d = read_shard(ref, "uint16", VOCAB, verify_hashes=False)
        toks[d.tokens] = True
        tokens_so_far += int(d.offsets[-1])
        for n in (2, 3):
            pending[n].append(np.unique(counting.ngram_keys(d.tokens, d.offsets, n, 16)))
        if i + 1 in checkpoints:
            for n in (2, 3):
                merged[n] = np.unique(np.concatenate([merged[n], *pending[n]]))
                pending[n] = []
            growth.append([tokens_so_far, int(len(merged[2])), int(len(merged[3]))])
    return {
        "distinct_tokens": int(toks.sum()),
        "distinct_bigrams": int(len(merged[2])),
        "distinct_trigrams": int(len(merged[3])),
        # [tokens so far, distinct bigrams, distinct trigrams] at 1/4, 1/2 and all shards
        "distinct_growth": growth,
    }
