"""Plain helpers for tests: write real MDS with streaming's MDSWriter, brute-force oracles."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def write_mds(out: str | Path, samples: Iterable[Sequence[int]], dtype: str = "<u2",
              compression: str | None = "zstd:16", size_limit: int = 1 << 26,
              hashes: list[str] | None = None, extra_columns: bool = False) -> Path:
    """A real MDS dataset of token samples, written by ``streaming.MDSWriter``."""
    from streaming import MDSWriter

    columns = {"tokens": "bytes"}
    if extra_columns:  # columns sorted before and after 'tokens' exercise the column layout
        columns.update({"aaa": "str", "meta": "int", "zzz": "bytes"})
    out = Path(out)
    with MDSWriter(out=str(out), columns=columns, compression=compression,
                   hashes=hashes, size_limit=size_limit) as w:
        for i, s in enumerate(samples):
            row = {"tokens": np.asarray(s, dtype=dtype).tobytes()}
            if extra_columns:
                row.update({"aaa": "x" * (i % 5), "meta": i, "zzz": b"\x01" * (i % 3)})
            w.write(row)
    return out


def write_mds_subfolders(root: str | Path, parts: list[list[Sequence[int]]], **kw) -> Path:
    """One MDS sub-dataset per part, and a root index.json merged by streaming's merge_index."""
    from streaming.base.util import merge_index

    root = Path(root)
    for i, samples in enumerate(parts):
        write_mds(root / f"part-{i:03d}", samples, **kw)
    merge_index([str(root / f"part-{i:03d}" / "index.json") for i in range(len(parts))], str(root))
    return root


def oracle(samples: Iterable[Sequence[int]], n: int, exclude: int | None = None) -> Counter:
    """Counter of n-gram tuples inside each sample: the brute-force reference."""
    c: Counter = Counter()
    for s in samples:
        s = [int(t) for t in s]
        for i in range(len(s) - n + 1):
            gram = tuple(s[i:i + n])
            if exclude is not None and exclude in gram:
                continue
            c[gram] += 1
    return c


def oracle_prefixes(counts: Counter) -> dict[tuple, tuple[int, int, int, float]]:
    """prefix -> (follower: smallest id among the most frequent, sum_count, max_count, frac_max)."""
    groups: dict[tuple, list[tuple[int, int]]] = {}
    for gram, c in counts.items():
        groups.setdefault(gram[:-1], []).append((gram[-1], c))
    out = {}
    for prefix, items in groups.items():
        total = sum(c for _, c in items)
        best = max(c for _, c in items)
        follower = min(t for t, c in items if c == best)
        out[prefix] = (follower, total, best, best / total)
    return out


def db_rows(db: str | Path, sql: str, params=None) -> list[tuple]:
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def table_dump(db: str | Path, tables: list[str]) -> dict[str, list[tuple]]:
    return {t: db_rows(db, f"SELECT * FROM {t} ORDER BY ALL") for t in tables}


def run_cli(*args: str, env: dict | None = None, timeout: int = 300, cwd=None) -> subprocess.CompletedProcess:
    """``ngram-dask ARGS`` as a real process, as a user runs it."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "ngram_dask.cli", *args], capture_output=True,
                          text=True, env=full_env, timeout=timeout, cwd=cwd)


def read_index(root: str | Path) -> dict:
    return json.loads((Path(root) / "index.json").read_text())
