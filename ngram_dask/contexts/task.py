"""The contexts unit: one piece group of the input -> its parts, then a marker (``runtime.resumable``).

A unit reads its piece group (``inputs.read_group``) and the prompts (``prompts.parquet`` in
the contexts dir, written by the client before any task runs, read once per worker
process), runs ``kernel.scan`` for each family and writes two files under names fixed
by the piece group, so a retried unit overwrites its own output and nothing counts twice::

    <contexts dir>/examples/<group>.arrow   the group's k smallest per prompt, with windows
    <contexts dir>/counts/<group>.arrow     per prompt with occurrences: how many
    <contexts dir>/_done/<group>.json         the statistics, written last

Both name the prompt by its row in ``prompts.parquet`` (``prompt``) and an example's shard by
its file index (``shard``): the writer adds the prompt's ids and the shard's file name to
the few it keeps (a unit's examples are ~5 per prompt, the catalog's 5 in all; carried in every
part, they were a third of what the writer read). An example's ``window_ids`` is one binary
value, its ids as little-endian ``window_dtype`` (a list column cost ~3x more to write);
the writer turns the kept ones into lists.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from ngram_dask import faults
from ngram_dask.contexts import kernel
from ngram_dask.inputs import PieceGroup, read_group
from ngram_dask.runtime import resumable, thread_buffer
from ngram_dask.storage import atomic_write_arrow, get_fs, join


@dataclass(frozen=True)
class ContextsSettings:
    """What a task needs; small, so it travels in the task graph."""

    dir: str  # the contexts dir of these settings (``<work dir>/contexts-<digest>``)
    token_dtype: str
    vocab_size: int
    per_task: int
    seed: int
    before: int
    after: int
    drop_eos: bool = False
    eos_id: int = 0
    verify_hashes: bool = True
    cutoffs: bool = True  # False: the rescan after a prompt fell short of its cutoff (``run``)

    @property
    def bits(self) -> int:
        return int(self.vocab_size - 1).bit_length()

    @property
    def prompts_url(self) -> str:
        return join(self.dir, "prompts.parquet")

    @property
    def parts_dir(self) -> str:
        """Where the units' parts and markers go: the rescan's apart from the first scan's."""
        return self.dir if self.cutoffs else join(self.dir, "uncut")


# the parts' layout (in the contexts dir's digest): 2 = binary window_ids; 3 = Arrow IPC files,
# not Parquet: only the writer reads them, whole (in one process 0.04 s a unit's parts, not 0.1);
# 4 = priorities of two 32-bit halves (``kernel.priority_int``): parts of 3 were chosen by another hash;
# 5 = the prompt's row and the shard's index only, not their ids and file name
PART_FORMAT = 5


def window_dtype(vocab_size: int) -> np.dtype:
    """The ids of a part's ``window_ids``: 2 bytes each when the vocabulary allows, else 4."""
    return np.dtype("<u2" if vocab_size <= 1 << 16 else "<u4")


def windows_array(offsets: np.ndarray, ids: np.ndarray, vocab_size: int) -> pa.Array:
    """Windows (``offsets`` into ``ids``) as one binary value each."""
    dt = window_dtype(vocab_size)
    return pa.Array.from_buffers(pa.binary(), len(offsets) - 1, [
        None, pa.py_buffer(np.ascontiguousarray(offsets * dt.itemsize, np.int32)),
        pa.py_buffer(np.ascontiguousarray(ids, dt))])


def windows_lists(blobs: pa.Array, vocab_size: int) -> pa.Array:
    """``windows_array``'s values back as lists of int32 ids."""
    dt = window_dtype(vocab_size)
    blobs = blobs.cast(pa.binary())
    _, offsets, data = blobs.buffers()
    off = np.frombuffer(offsets, np.int32, len(blobs) + 1, blobs.offset * 4)
    ids = np.frombuffer(data, dt, (int(off[-1]) - int(off[0])) // dt.itemsize, int(off[0])) if data else \
        np.zeros(0, dt)
    return pa.ListArray.from_arrays(pa.array((off - off[0]) // dt.itemsize, pa.int32()),
                                    pa.array(ids.astype(np.int32), pa.int32()))


def examples_url(s: ContextsSettings, group: str) -> str:
    return join(s.parts_dir, "examples", f"{group}.arrow")


def counts_url(s: ContextsSettings, group: str) -> str:
    return join(s.parts_dir, "counts", f"{group}.arrow")


def marker_url(s: ContextsSettings, group: str) -> str:
    return join(s.parts_dir, "_done", f"{group}.json")


# --- the prompts ---------------------------------------------------------------------------

PROMPT_TYPES = {"n": pa.uint8(), "id0": pa.int64(), "id1": pa.int64(), "expected": pa.int64(),
                "cutoff": pa.uint64()}


def prompts_table(families: dict[int, kernel.Prompts]) -> pa.Table:
    """``n, id0, id1, expected, cutoff`` of every prompt, family after family, each sorted
    by its ids: row ``i`` of family ``n`` is prompt ``i`` of ``families[n]``. ``id1`` is -1
    for a bigram prompt (no nulls: the tasks read the columns as plain arrays); ``cutoff``
    is ``kernel.MAX64`` for a prompt without one."""
    cols: dict[str, list] = {name: [] for name in PROMPT_TYPES}
    for n, p in sorted(families.items()):
        cols["n"].append(np.full(len(p), n, np.uint8))
        cols["id0"].append(np.asarray(p.ids[0], np.int64))
        cols["id1"].append(np.asarray(p.ids[1], np.int64) if n == 3 else np.full(len(p), -1, np.int64))
        cols["expected"].append(np.asarray(p.expected, np.int64))
        cols["cutoff"].append(np.full(len(p), kernel.MAX64, np.uint64) if p.cutoff is None else p.cutoff)
    return pa.table({name: pa.array(np.concatenate(cols[name]) if cols[name] else [], t)
                     for name, t in PROMPT_TYPES.items()})


def families_of(table: pa.Table, bits: int, cutoffs: bool = True) -> dict[int, kernel.Prompts]:
    """``prompts_table`` read back; without ``cutoffs``, prompts that keep every occurrence's priority."""
    def col(name: str) -> np.ndarray:
        # through the buffer: pyarrow 26's to_numpy, even zero-copy, imports pandas, 0.3 s of a
        # worker's first unit (the prompts' columns have no nulls)
        arr = table.column(name).combine_chunks()
        dtype = np.dtype(str(arr.type))
        return np.frombuffer(arr.buffers()[1], dtype, len(arr), arr.offset * dtype.itemsize) if len(arr) else \
            np.zeros(0, dtype)

    n, id0, id1, expected = col("n"), col("id0"), col("id1"), col("expected")
    cut = col("cutoff") if cutoffs else None
    out = {}
    for fam in sorted(set(int(x) for x in n)):
        rows = np.flatnonzero(n == fam)
        ids = [id0[rows]] + ([id1[rows]] if fam == 3 else [])
        out[fam] = kernel.Prompts(fam, tuple(np.asarray(c, np.int64) for c in ids), expected[rows], bits,
                                  cutoff=None if cut is None else cut[rows])
    return out


@functools.lru_cache(maxsize=2)
def load_prompts(url: str, bits: int, cutoffs: bool = True) -> dict[int, kernel.Prompts]:
    import pyarrow.parquet as pq

    fs, path = get_fs(url)
    with fs.open(path, "rb") as f:  # ParquetFile, not read_table: no pyarrow.dataset import (~0.9 s)
        return families_of(pq.ParquetFile(f).read(), bits, cutoffs)


# --- the task ------------------------------------------------------------------------------

_NUMPY_OF = {pa.int64(): np.int64, pa.uint64(): np.uint64}


def arrow_array(values, type_: pa.DataType) -> pa.Array:
    """Numbers (no nulls) as an Arrow array through their buffer: ``pa.array`` imports pandas
    (pyarrow 26), ~0.5 s of a worker's first unit, for nothing a unit needs."""
    arr = np.ascontiguousarray(values, _NUMPY_OF[type_])
    return pa.Array.from_buffers(type_, len(arr), [None, pa.py_buffer(arr)])


def found_tables(found: list[kernel.Found], base: dict[int, int], vocab_size: int) -> tuple[pa.Table, pa.Table]:
    """The examples and counts of one piece group as Arrow tables (``base[n]``: the first row
    of family n in ``prompts.parquet``)."""
    ex: dict[str, list] = {k: [] for k in EXAMPLE_TYPES}
    ct: dict[str, list] = {k: [] for k in COUNT_TYPES}
    for f in found:
        ex["prompt"].append(arrow_array(base[f.n] + f.prompt, pa.int64()))
        ex["actual"].append(arrow_array(f.actual, pa.int64()))
        ex["shard"].append(arrow_array(f.file, pa.int64()))
        ex["sample"].append(arrow_array(f.sample, pa.int64()))
        ex["pos"].append(arrow_array(f.offset, pa.int64()))
        ex["window_start"].append(arrow_array(f.window_start, pa.int64()))
        ex["window_ids"].append(windows_array(f.window_offsets, f.window_ids, vocab_size))
        ex["priority"].append(arrow_array(f.priority, pa.uint64()))
        hit = np.flatnonzero(f.counts)
        ct["prompt"].append(arrow_array(base[f.n] + hit, pa.int64()))
        ct["occurrences"].append(arrow_array(f.counts[hit], pa.int64()))
    return _table(ex, EXAMPLE_TYPES), _table(ct, COUNT_TYPES)


EXAMPLE_TYPES = {"prompt": pa.int64(), "actual": pa.int64(), "shard": pa.int64(), "sample": pa.int64(),
                 "pos": pa.int64(), "window_start": pa.int64(), "window_ids": pa.binary(), "priority": pa.uint64()}
COUNT_TYPES = {"prompt": pa.int64(), "occurrences": pa.int64()}


def _table(cols: dict[str, list], types: dict) -> pa.Table:
    return pa.table({name: pa.concat_arrays(arrays) if arrays else pa.nulls(0, types[name])
                     for name, arrays in cols.items()}, schema=pa.schema(list(types.items())))


def _workspace() -> np.ndarray:
    # the kernel hashes a stretch of positions at a time: three stretches of keys, not one per token of the piece
    return thread_buffer("contexts-keys", 3 * kernel.STRETCH, np.uint64)


@resumable(lambda group, s: marker_url(s, group.name))
def contexts_group(group: PieceGroup, s: ContextsSettings) -> dict:
    """Count and choose the examples of one piece group; write its parts; return its statistics."""
    t0 = time.perf_counter()
    families = load_prompts(s.prompts_url, s.bits, s.cutoffs)
    data = read_group(group, s.vocab_size, s.verify_hashes, thread_buffer)
    t1 = time.perf_counter()
    exclude = s.eos_id if s.drop_eos else None
    found = [kernel.scan(data.tokens, data.offsets, data.files, data.samples, p, s.vocab_size, s.per_task,
                         s.seed, s.before, s.after, exclude, _workspace())
             for _, p in sorted(families.items())]
    t2 = time.perf_counter()
    base, row = {}, 0
    for n, p in sorted(families.items()):
        base[n], row = row, row + len(p)
    examples, counts = found_tables(found, base, s.vocab_size)
    faults.delay_point(faults.CONTEXTS_TEST_DELAY)
    nbytes = atomic_write_arrow(examples_url(s, group.name), examples)
    nbytes += atomic_write_arrow(counts_url(s, group.name), counts)
    return {
        "group": group.name,
        "pieces": [piece.name for piece in group.pieces],
        "samples": int(len(data.offsets) - 1),
        "tokens": int(data.offsets[-1] - data.offsets[0]),
        "occurrences": {str(f.n): int(f.counts.sum()) for f in found},
        "kept": int(examples.num_rows),
        "bytes": nbytes,
        # where a unit's time goes (docs/performance.md): reading the input, the kernel, the parts
        "phases": {"read": round(t1 - t0, 3), "scan": round(t2 - t1, 3), "write": round(time.perf_counter() - t2, 3)},
    }
