"""The single writer of ``contexts``: merges the pieces' parts and writes three tables and
``catalog_info['contexts']`` in one transaction.

Each piece's part holds its k smallest priorities per prompt; the writer keeps the k
smallest of all of them (``ORDER BY priority, shard, sample, pos``: a total order), in a
TEMP table of the writer's connection that is pruned to k per prompt whenever it has passed
``contexts.prune_rows`` rows (and twice what the last prune left) when a part comes, so it
stays near ``k x prompts`` rows however many pieces there are. The per-prompt counts are summed
in an array. Then, in one transaction: ``contexts``, ``context_counts``,
``contexts_ledger`` (one row per piece) and the settings, or nothing (a killed writer
leaves the database as it was; the pieces' parts stay, so a rerun only writes).
"""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pyarrow as pa

from ngram_dask import faults
from ngram_dask.contexts.task import ContextsSettings, counts_url, examples_url, windows_lists
from ngram_dask.db import ensure_info, scalar, transaction, write_info
from ngram_dask.errors import BadInputError
from ngram_dask.schema import (
    CONTEXT_COUNTS,
    CONTEXTS,
    CONTEXTS_INFO,
    CONTEXTS_LEDGER,
    context_counts_columns,
    contexts_columns,
    contexts_ledger_columns,
    id_sql_type,
    top_table,
    typed_create_sql,
)
from ngram_dask.storage import read_arrow

BEST = "_contexts_best"
ORDER = "priority, shard, sample, pos"


def _kept(k: int) -> str:
    """``kept, rank``: the row ids of BEST among their prompt's ``k`` first (by ORDER). The
    window sorts the narrow columns and row ids only; the wide ones (windows, file names)
    are joined back to the survivors: half the CPU of a window over whole rows, at the
    writer, which shares the machine with the workers while they run."""
    return (f"SELECT rowid AS kept, row_number() OVER (PARTITION BY prompt ORDER BY {ORDER}) AS rank "
            f"FROM {BEST} QUALIFY rank <= {int(k)}")


class ContextsWriter:
    """Collects the pieces' parts on the writer's connection ``con``; ``commit`` writes them."""

    def __init__(self, con, s: ContextsSettings, prompts: pa.Table, sum_counts: np.ndarray, files: dict[int, str],
                 prune_rows: int = 1_000_000):
        """``prompts``: ``prompts.parquet``'s table, whose rows the parts name; ``files``: the
        input's file name (``shard_file``) by file index (the parts' ``shard``)."""
        self.con, self.s, self.prompts, self.files, self.prune_rows = con, s, prompts, files, prune_rows
        self.sum_counts = np.asarray(sum_counts, np.int64)
        self.counts = np.zeros(prompts.num_rows, np.int64)
        self.ledger: list[tuple] = []
        self.rows = self.pruned_rows = self.prunes = 0
        con.execute(f"DROP TABLE IF EXISTS {BEST}")
        self.created = False

    def add(self, stats: dict) -> None:
        """One piece's parts (its statistics as the task returned them)."""
        piece = stats["group"]
        examples = read_arrow(examples_url(self.s, piece))
        counts = read_arrow(counts_url(self.s, piece))
        np.add.at(self.counts, counts.column("prompt").to_numpy(), counts.column("occurrences").to_numpy())
        # twice the rows left by the last prune, at least: the prunes' cost stays linear in the parts.
        # Checked before a part goes in, not after: the last part's prune would only delay the
        # commit, whose pick cuts to k per prompt anyway.
        if self.rows > max(self.prune_rows, 2 * self.pruned_rows):
            self._prune()
        self.con.register("_contexts_part", examples)
        try:
            if not self.created:
                self.con.execute(f"CREATE TEMP TABLE {BEST} AS SELECT * FROM _contexts_part")
                self.created = True
            else:
                self.con.execute(f"INSERT INTO {BEST} SELECT * FROM _contexts_part")
        finally:
            self.con.unregister("_contexts_part")
        self.rows += examples.num_rows
        occ = sum(int(v) for v in stats["occurrences"].values())
        self.ledger.append((piece, int(stats["samples"]), int(stats["tokens"]), occ, int(stats["kept"])))

    def _prune(self) -> None:
        self.con.execute(f"CREATE OR REPLACE TEMP TABLE {BEST} AS SELECT * FROM {BEST} "
                         f"WHERE rowid IN (SELECT kept FROM ({_kept(self.s.per_task)}))")
        self.rows = self.pruned_rows = int(scalar(self.con, f"SELECT count(*) FROM {BEST}"))
        self.prunes += 1

    def check_counts(self, db: str) -> None:
        """The occurrences found must be each prompt's ``sum_count``: else the input is not the build's."""
        bad = np.flatnonzero(self.counts != self.sum_counts)
        if len(bad):
            i = int(bad[0])
            n = int(self.prompts.column("n")[i].as_py())
            ids = [self.prompts.column("id0")[i].as_py()] + ([self.prompts.column("id1")[i].as_py()] if n == 3 else [])
            raise BadInputError(
                f"the input and database {db} disagree: prompt {ids} of {top_table(n)} occurs "
                f"{int(self.counts[i])} times in the input, its sum_count is {int(self.sum_counts[i])} "
                f"({len(bad)} prompt(s) differ); give the input the database was built from")

    def short_prompts(self) -> np.ndarray:
        """The prompts with fewer than ``min(per_task, sum_count)`` examples merged: their
        cutoff (``kernel.cutoffs``) dropped one of their k smallest, so the stage scans again
        without cutoffs. (With every part merged, and the counts checked.)"""
        have = np.zeros(len(self.sum_counts), np.int64)
        if self.created:
            rows = self.con.execute(f"SELECT prompt, count(*) AS c FROM {BEST} GROUP BY prompt").fetchnumpy()
            have[np.asarray(rows["prompt"], np.int64)] = np.asarray(rows["c"], np.int64)
        return np.flatnonzero(have < np.minimum(self.sum_counts, self.s.per_task))

    def commit(self, info: dict) -> int:
        """Write the three tables and the settings in one transaction; returns the examples' rows."""
        s, con = self.s, self.con
        t = id_sql_type(s.vocab_size)
        ledger = pa.table(dict(zip(["piece", "samples", "tokens", "occurrences", "kept"],
                                   map(list, zip(*self.ledger)) if self.ledger else [[]] * 5)),
                          schema=pa.schema([("piece", pa.string()), ("samples", pa.int64()), ("tokens", pa.int64()),
                                            ("occurrences", pa.int64()), ("kept", pa.int64())]))
        if not self.created:  # no piece at all: an empty best table of the parts' shape
            from ngram_dask.contexts.task import EXAMPLE_TYPES

            con.register("_contexts_part", pa.schema(list(EXAMPLE_TYPES.items())).empty_table())
            con.execute(f"CREATE TEMP TABLE {BEST} AS SELECT * FROM _contexts_part")
            con.unregister("_contexts_part")
            self.created = True
        # every prompt by its row (what the parts name), with the occurrences counted
        prompts = self.prompts.select(["n", "id0", "id1", "expected"]).append_column(
            "prompt", pa.array(np.arange(self.prompts.num_rows), pa.int64())).append_column(
            "occurrences", pa.array(self.counts, pa.int64()))
        shards = sorted(self.files)
        names = pa.array([self.files[i] for i in shards], pa.string())
        con.register("_contexts_prompts", prompts)
        con.register("_contexts_files", pa.table({"shard": pa.array(shards, pa.int64()), "shard_file": names}))
        con.register("_contexts_ledger", ledger)
        try:
            with transaction(con):
                ensure_info(con)
                con.execute(typed_create_sql(CONTEXTS, contexts_columns(s.vocab_size), replace=True))
                kept = con.sql(f"""
                    SELECT q.n, q.id0, CASE WHEN q.n = 3 THEN q.id1 END AS id1, rank, q.expected, actual, b.shard,
                           f.shard_file, sample, pos, window_start, pos - window_start AS prompt_at, window_ids,
                           priority
                    FROM {BEST} b JOIN ({_kept(s.per_task)}) ON b.rowid = kept
                    JOIN _contexts_prompts q USING (prompt) JOIN _contexts_files f ON f.shard = b.shard
                    ORDER BY n, id0, id1 NULLS FIRST, rank""").to_arrow_table()
                # the parts carry windows as bytes (task.windows_array): lists again, for the kept ones only
                kept = kept.set_column(kept.schema.get_field_index("window_ids"), "window_ids",
                                       windows_lists(kept.column("window_ids").combine_chunks(), s.vocab_size))
                con.register("_contexts_kept", kept)
                con.execute(f"""
                    INSERT INTO {CONTEXTS}
                    SELECT n, id0, id1, rank, expected, actual, shard, shard_file, sample, pos, window_start,
                           prompt_at, window_ids::{t}[], priority
                    FROM _contexts_kept ORDER BY n, id0, id1 NULLS FIRST, rank""")
                faults.crash_point(faults.CRASH_IN_CONTEXTS, "write")
                con.execute(typed_create_sql(CONTEXT_COUNTS, context_counts_columns(s.vocab_size), replace=True))
                con.execute(f"INSERT INTO {CONTEXT_COUNTS} SELECT n, id0, CASE WHEN n = 3 THEN id1 END, occurrences "
                            "FROM _contexts_prompts ORDER BY n, id0, id1")
                con.execute(typed_create_sql(CONTEXTS_LEDGER, contexts_ledger_columns(), replace=True))
                con.execute(f"INSERT INTO {CONTEXTS_LEDGER} SELECT * FROM _contexts_ledger ORDER BY piece")
                rows = int(scalar(con, f"SELECT count(*) FROM {CONTEXTS}"))
                stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
                write_info(con, {CONTEXTS_INFO: json.dumps({**info, "rows": rows, "written_at": stamp},
                                                           sort_keys=True)})
        finally:
            for view in ("_contexts_prompts", "_contexts_files", "_contexts_ledger", "_contexts_kept"):
                con.unregister(view)
            con.execute(f"DROP TABLE IF EXISTS {BEST}")
        return rows
