"""Tokens -> samples: each task's tokenizer, the encoding of a batch, the cutting into samples.

Every document is wrapped as ``BOS + text + EOS`` (ids taken from the tokenizer, not
re-encoded from text); the documents are concatenated and cut into ``seq_len``-token
samples, the remainder carrying over into the next sample (``wrap``) or not (each
document cut on its own). The last, shorter sample of a shard is kept.
"""

from __future__ import annotations

import threading

import numpy as np

_per_thread = threading.local()


def worker_tokenizer(name_or_path: str):
    """One tokenizer per worker thread, loaded on its first task.

    Per thread, not per process: a fast tokenizer resets its padding/truncation state
    on every call and refuses concurrent use ("Already borrowed").
    """
    from ngram_dask.tokenizer import load_tokenizer

    cache = _per_thread.__dict__.setdefault("tokenizers", {})
    if name_or_path not in cache:
        cache[name_or_path] = load_tokenizer(name_or_path)
    return cache[name_or_path]


def encode_documents(tokenizer, texts: list[str], bos_id: int | None, eos_id: int | None,
                     dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of ``BOS + text + EOS`` for each text, concatenated, and ``len + 1`` document offsets.

    The separators are inserted as ids, not as text: the tokenizer's own special tokens
    (``add_special_tokens``) are off.
    """
    encoded = tokenizer(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    bos = np.array([] if bos_id is None else [bos_id], dtype)
    eos = np.array([] if eos_id is None else [eos_id], dtype)
    pieces = []
    for ids in encoded:  # one step per document; the ids themselves are converted in C
        pieces += (bos, np.asarray(ids, dtype), eos)
    tokens = np.concatenate(pieces) if pieces else np.empty(0, dtype)
    lengths = np.fromiter((len(ids) for ids in encoded), np.int64, len(encoded)) + len(bos) + len(eos)
    return tokens, np.concatenate(([0], np.cumsum(lengths)))


class SampleCutter:
    """Cuts token streams into ``seq_len`` samples: returned as ``(tokens, boundaries)``.

    wrap: documents run together and the remainder of a batch carries into the next
    one (and into the shard's last, shorter sample). No wrap: every document is cut on
    its own, its last piece is a shorter sample, nothing carries over.
    """

    def __init__(self, seq_len: int, wrap: bool, dtype: np.dtype):
        self.seq_len, self.wrap = seq_len, wrap
        self.carry = np.empty(0, dtype)

    def cut(self, tokens: np.ndarray, doc_offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        L = self.seq_len
        if self.wrap:
            stream = np.concatenate((self.carry, tokens))
            full = len(stream) // L * L
            self.carry = stream[full:].copy()
            return stream[:full], np.arange(0, full + 1, L, dtype=np.int64)
        lengths = np.diff(doc_offsets)
        pieces = -(-lengths // L)  # ceil; an empty document (no separators) gives no sample
        first = np.repeat(np.cumsum(pieces) - pieces, pieces)
        starts = np.repeat(doc_offsets[:-1], pieces) + L * (np.arange(pieces.sum()) - first)
        ends = np.minimum(starts + L, np.repeat(doc_offsets[1:], pieces))
        # Documents are contiguous, so each sample ends where the next one starts.
        return tokens, np.concatenate(([0], ends)) if len(ends) else np.zeros(1, np.int64)

    def finish(self) -> np.ndarray:
        rest, self.carry = self.carry, self.carry[:0]
        return rest
