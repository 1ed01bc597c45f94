"""The corpora a build reads, as *pieces*: small descriptors of about ``unit_tokens`` tokens
that a worker turns into samples (``Samples``: token ids and sample boundaries).

======== ====================================== ================================== ==========================
format   files                                  a piece is                         samples
======== ====================================== ================================== ==========================
mds      index.json + shards (``convert``'s)    one shard                          MDS samples
megatron <name>.idx + <name>.bin (MMIDIDX)      a byte range of the .bin           seq_len cuts, or documents
bin      raw little-endian ids (token_dtype)    a byte range                       seq_len cuts
npy      a 1-D integer .npy                     a byte range after the header      seq_len cuts
parquet  a list column of integer ids           consecutive row groups             one row each
======== ====================================== ================================== ==========================

A stream file (megatron in ``seq-len`` mode, ``.bin``, ``.npy``) is all of its tokens in
order, cut into samples of ``seq_len`` tokens from the start of each file, the last one
shorter: the same stream written as MDS samples of ``seq_len`` tokens gives the same
samples, so the same catalog. ``samples="documents"`` makes each Megatron document (the
sequences between two document indices) one sample; Parquet rows are samples either way,
and MDS, ``.bin`` and ``.npy`` have no documents (refused in one line).

Pieces of a stream file start and end on sample boundaries and are read with ranged
reads: no worker reads a whole file, and no byte is read by two pieces. Every error is a
one-line ``BadInputError`` naming the file (and the sample, document or offset).
"""

from __future__ import annotations

import math
import posixpath
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, NamedTuple

import numpy as np

from ngram_dask.errors import BadInputError, ConfigError
from ngram_dask.inputs import flat, megatron, parquet
from ngram_dask.inputs.base import FORMATS, InputPlan, Piece, Samples, checked
from ngram_dask.storage import get_fs, is_local, redact_url

if TYPE_CHECKING:
    from ngram_dask.mds import Buffers

__all__ = ["FORMATS", "GroupSamples", "InputPlan", "Piece", "PieceGroup", "Samples", "balanced_plan",
           "balanced_unit_tokens", "detect_format", "even_groups", "group_pieces", "plan_input", "read_group",
           "read_piece", "unit_tokens_for", "MIN_UNIT_TOKENS"]

_SUFFIX = {".bin": "bin", ".npy": "npy", ".parquet": "parquet", ".idx": "megatron"}


def _url(fs, url: str, path: str) -> str:
    if is_local(url):
        return path
    return f"{url.split('://', 1)[0]}://{path}"


def _files(url: str) -> tuple[list[str], bool]:
    """``(data files, mds)``: the sorted files of a file, folder or glob; ``mds`` when it is an MDS root."""
    fs, path = get_fs(url)
    if any(c in path for c in "*?["):
        found = sorted(p for p in fs.glob(path) if fs.isfile(p))
        if not found:
            raise BadInputError(f"input dataset not found: {redact_url(url)} matches no file")
        return [_url(fs, url, p) for p in found], False
    if not fs.exists(path):
        raise BadInputError(f"input dataset not found: {redact_url(url)}")
    if fs.isfile(path):
        return [url], posixpath.basename(path) == "index.json"
    if fs.exists(posixpath.join(path, "index.json")) or fs.glob(posixpath.join(path, "*", "index.json")):
        return [], True
    found = sorted(p for p in fs.find(path) if not posixpath.basename(p).startswith("."))
    return [_url(fs, url, p) for p in found], False


def _with_indexes(files: list[str]) -> list[str]:
    """A ``.bin`` named alone (a file, a glob) brings its Megatron ``.idx`` when one lies beside it."""
    have = set(files)
    out = list(files)
    for f in files:
        if f.endswith(".bin") and f[:-4] + ".idx" not in have:
            fs, path = get_fs(f)
            if fs.exists(path[:-4] + ".idx"):
                out.append(f[:-4] + ".idx")
    return sorted(out)


def detect_format(files: list[str]) -> str:
    """The one format of these files; a mixed or unknown set is a one-line error naming a file."""
    kinds: dict[str, str] = {}
    stems_idx = {f[:-4] for f in files if f.endswith(".idx")}
    for f in files:
        suffix = posixpath.splitext(f)[1].lower()
        if suffix not in _SUFFIX:
            raise BadInputError(f"{redact_url(f)} is not a file ngram-dask reads (.bin/.idx, .npy, .parquet "
                                "or an MDS index.json); pass --input-format, or remove it from the input")
        kind = _SUFFIX[suffix]
        if kind == "bin" and f[:-4] in stems_idx:
            kind = "megatron"
        kinds.setdefault(kind, f)
    if not kinds:
        raise BadInputError("the input holds no data files")
    if len(kinds) > 1:
        (a, fa), (b, fb) = sorted(kinds.items())[:2]
        raise BadInputError(f"the input mixes formats: {redact_url(fa)} is {a}, {redact_url(fb)} is {b}; "
                            "give one format (a folder or glob of one kind)")
    return next(iter(kinds))


# Peak memory of an explode unit per token of its piece group (the tokens, the keys, the
# hash aggregate or sort, the partial tables and their blocks): ~850 MiB at 34M tokens
# (docs/performance.md, issue 28), rounded up.
EXPLODE_BYTES_PER_TOKEN = 28
# What a worker holds before any unit (Python, numpy, pyarrow, DuckDB, Dask's own state).
WORKER_BASELINE_BYTES = 320 << 20
# Share of the worker's limit the units of its threads may peak at together: below Dask's
# pause (80%) and spill (70% target) thresholds, so a worker never pauses or restarts.
UNIT_MEMORY_SHARE = 0.6
# Without a known worker limit (a running scheduler and cluster.memory_limit auto).
FALLBACK_UNIT_TOKENS = 34_000_000
# Larger units save little (fewer, larger files) and lengthen the tail of the step.
MAX_UNIT_TOKENS = 1 << 27
MIN_UNIT_TOKENS = 1 << 20
# Units each core gets at least, when the corpus is small for the memory-sized unit: with
# fewer, one core idles at the step's end (a 2e8-token corpus in 134M-token units on two
# cores left one idle for a third of the explode: the build took 1.34x its old time).
UNITS_PER_CORE = 3


def unit_tokens_for(worker_limit: int | None, threads: int) -> int:
    """Tokens per unit so that ``threads`` units stay under ``UNIT_MEMORY_SHARE`` of a
    worker's ``worker_limit`` (the fallback when it is unknown)."""
    if not worker_limit:
        return FALLBACK_UNIT_TOKENS
    room = (worker_limit * UNIT_MEMORY_SHARE - WORKER_BASELINE_BYTES) / max(threads, 1)
    return int(min(MAX_UNIT_TOKENS, max(MIN_UNIT_TOKENS, room // EXPLODE_BYTES_PER_TOKEN)))


def balanced_unit_tokens(unit_tokens: int, corpus_tokens: int, cores: int | None) -> int:
    """``unit_tokens`` lowered, when needed, so that ``cores`` get ``UNITS_PER_CORE`` units
    each of a corpus of ``corpus_tokens`` (not below ``MIN_UNIT_TOKENS``; unchanged when the
    cores are unknown: a running scheduler's workers are not asked)."""
    if not cores or corpus_tokens <= 0:
        return unit_tokens
    even = math.ceil(corpus_tokens / (cores * UNITS_PER_CORE))
    return min(unit_tokens, max(MIN_UNIT_TOKENS, even))


def balanced_plan(plan_for: Callable[[int], InputPlan], unit_tokens: int,
                  cores: int | None) -> tuple[InputPlan, int]:
    """``(plan_for(unit), unit)``: ``unit_tokens``, lowered by ``balanced_unit_tokens`` when the
    planned corpus is too small to give ``cores`` their units (then planned again: flat and
    Megatron inputs are cut into pieces of a unit). ``cores`` None: ``unit_tokens`` as it is."""
    plan = plan_for(unit_tokens)
    balanced = balanced_unit_tokens(unit_tokens, sum(p.tokens for p in plan.pieces), cores)
    if balanced < unit_tokens:
        return plan_for(balanced), balanced
    return plan, unit_tokens


def plan_input(url: str, *, input_format: str = "auto", token_dtype: str = "auto", seq_len: int = 2048,
               samples: str = "seq-len", token_column: str | None = None,
               unit_tokens: int = 34_000_000) -> InputPlan:
    """The pieces of ``url`` (a local path or fsspec URL: one file, a folder or a glob)."""
    if input_format not in ("auto",) + FORMATS:
        raise ConfigError(f"unknown input format {input_format!r}: use auto, {', '.join(FORMATS)}")
    files, is_mds = _files(url)
    if input_format in ("auto", "megatron"):
        files = _with_indexes(files)
    fmt = input_format
    if fmt == "auto":
        # MDS shard files without an index: the MDS reader says what is missing
        shards_only = any(".mds" in posixpath.basename(f) for f in files)
        fmt = "mds" if is_mds or shards_only else detect_format(files)
    if samples == "documents" and fmt in ("mds", "bin", "npy"):
        raise ConfigError(f"--samples documents needs documents: {fmt} input has none (Megatron and Parquet do); "
                          "use --samples seq-len")
    if fmt == "mds":
        from ngram_dask.inputs import mds

        return mds.plan(url, token_dtype)
    if fmt == "megatron":
        bins = sorted({f[:-4] + ".bin" for f in files if f.endswith((".idx", ".bin"))})
        return megatron.plan(bins, seq_len, samples, unit_tokens)
    if fmt in ("bin", "npy"):
        chosen = [f for f in files if f.lower().endswith("." + fmt)]
        return flat.plan(chosen, fmt, token_dtype, seq_len, unit_tokens)
    chosen = [f for f in files if f.lower().endswith(".parquet")]
    return parquet.plan(chosen, token_column, samples, unit_tokens)


def read_piece(piece: Piece, vocab_size: int | None = None, verify_hashes: bool = True) -> Samples:
    """The samples of one piece, ids checked against ``vocab_size``."""
    if piece.format == "mds":
        from ngram_dask.inputs import mds

        return mds.read(piece, vocab_size, verify_hashes)
    if piece.format == "megatron":
        data = megatron.read(piece)
    elif piece.format in ("bin", "npy"):
        data = flat.read(piece)
    else:
        data = parquet.read(piece)
    return checked(piece, data, vocab_size)


@dataclass(frozen=True)
class PieceGroup:
    """The consecutive pieces one unit reads (an explode or a contexts unit); small, so it
    travels in the task graph. Its name names the unit's files and marker."""

    pieces: tuple[Piece, ...]

    @property
    def name(self) -> str:
        first = self.pieces[0].name
        return first if len(self.pieces) == 1 else f"{first}+{len(self.pieces) - 1}"

    @property
    def tokens(self) -> int:
        return sum(piece.tokens for piece in self.pieces)


def group_pieces(pieces: list[Piece], unit_tokens: int) -> list[PieceGroup]:
    """Consecutive pieces, greedily, until the next would pass ``unit_tokens`` tokens: one
    unit's input. A piece's tokens are exact for token files and an upper bound from the raw
    bytes for MDS; a piece larger than the budget is a group of its own."""
    groups: list[PieceGroup] = []
    current: list[Piece] = []
    tokens = 0
    for piece in pieces:
        if current and tokens + piece.tokens > unit_tokens:
            groups.append(PieceGroup(tuple(current)))
            current, tokens = [], 0
        current.append(piece)
        tokens += piece.tokens
    if current:
        groups.append(PieceGroup(tuple(current)))
    return groups


def even_groups(pieces: list[Piece], unit_tokens: int, workers: int | None = None) -> list[PieceGroup]:
    """Consecutive pieces in groups of near-equal tokens, none over ``unit_tokens`` (but a
    piece larger than it, alone): as many groups as ``group_pieces`` makes, rounded up to a
    multiple of ``workers`` when given (or a few more, where a cut would pass the budget),
    cut where the running total is nearest each equal share. ``group_pieces`` leaves the
    remainder as a small last group, so on a few workers one of them idles while another
    runs its last full unit (~4% of a contexts stage at 1e9 on 2 workers); equal groups,
    as many per worker, end together."""
    greedy = group_pieces(pieces, unit_tokens)
    # up to twice greedy's count; past that, greedy's own groups (always within the budget)
    counts = list(range(len(greedy), min(len(pieces), 2 * len(greedy)) + 1))
    if workers and len(greedy) > 1:  # multiples of the workers first
        counts = sorted(counts, key=lambda k: (k % workers != 0, k))
    ends = np.cumsum([piece.tokens for piece in pieces])
    for k in counts:
        # the piece boundary nearest each share: the ends index `cut` (after that piece) or the one before
        shares = ends[-1] * np.arange(1, k) / k
        cut = np.searchsorted(ends, shares)
        cut = np.where((cut > 0) & (shares - ends[np.maximum(cut - 1, 0)] < ends[cut] - shares), cut - 1, cut)
        bounds = np.unique(np.concatenate(([0], cut + 1, [len(pieces)])))
        groups = [PieceGroup(tuple(pieces[a:b])) for a, b in zip(bounds[:-1], bounds[1:])]
        if all(g.tokens <= unit_tokens or len(g.pieces) == 1 for g in groups):
            return groups
    return greedy


class GroupSamples(NamedTuple):
    """Every sample of a piece group concatenated: ``offsets`` (samples + 1 boundaries), and
    per sample ``files`` (its file's index in the dataset) and ``samples`` (its index in
    that file): where an example was found."""

    tokens: np.ndarray
    offsets: np.ndarray
    files: np.ndarray
    samples: np.ndarray

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def read_group(group: PieceGroup, vocab_size: int | None = None, verify_hashes: bool = True,
               buffers: Buffers | None = None) -> GroupSamples:
    """The samples of every piece of the group, in order, ids checked against ``vocab_size``
    (boundaries kept: nothing a unit counts crosses them).

    ``buffers(name, size, dtype)``: an array of at least ``size`` items that the caller
    keeps between units (``runtime.thread_buffer``). The group's tokens go into one, when
    they are copied anyway (more than one piece, or an MDS shard), and are returned as a
    view of it; so do an MDS shard's file and raw bytes. A worker reading unit after unit
    then faults in no fresh pages: under Dask's ``MALLOC_TRIM_THRESHOLD_`` every new array
    did (a 75M-token group of zstd shards read in 0.3-0.5 s instead of 0.17 s). A single
    piece that reads without a copy (a token file's memory map) is returned as it is."""
    dtype = np.dtype(group.pieces[0].token_dtype)
    mds_only = all(piece.format == "mds" for piece in group.pieces)
    copied = len(group.pieces) > 1 or mds_only  # (else one piece's own array, a token file's memory map)
    into = buffers("group-tokens", group.tokens, dtype) if buffers is not None and copied else None
    if mds_only and (len(group.pieces) > 1 or into is not None):
        # each shard decoded straight into the group's array (a piece's tokens bound its ids),
        # not into its own and then copied once more by a concatenation
        from ngram_dask.inputs import mds

        if into is None:
            into = np.empty(group.tokens, dtype)
        parts, at = [], 0
        for piece in group.pieces:
            parts.append(mds.read(piece, vocab_size, verify_hashes, into[at:], buffers))
            at += len(parts[-1].tokens)
        tokens = into[:at]
    else:
        parts = [read_piece(piece, vocab_size, verify_hashes) for piece in group.pieces]
        tokens = None
        if into is not None:  # (several pieces)
            total = sum(len(p.tokens) for p in parts)
            tokens = np.concatenate([p.tokens for p in parts], out=into[:total])
    files = np.concatenate([np.full(len(p.offsets) - 1, piece.file_index, np.int64)
                            for p, piece in zip(parts, group.pieces)])
    samples = np.concatenate([piece.sample0 + np.arange(len(p.offsets) - 1, dtype=np.int64)
                              for p, piece in zip(parts, group.pieces)])
    if len(parts) == 1:
        return GroupSamples(parts[0].tokens, np.asarray(parts[0].offsets, np.int64), files, samples)
    if tokens is None:
        tokens = np.concatenate([p.tokens for p in parts])
    starts = np.cumsum([0] + [len(p.tokens) for p in parts[:-1]])
    offsets = np.concatenate([np.asarray(parts[0].offsets[:1], np.int64)]
                             + [np.asarray(p.offsets[1:], np.int64) + base for p, base in zip(parts, starts)])
    return GroupSamples(tokens, offsets, files, samples)
