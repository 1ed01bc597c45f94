"""``ngram-dask scan``: first-token deletion scan: where one earlier token changes the model's prediction.

Run a causal LM on every short (L tokens) and long (L+1 tokens) window of the input's
samples (any format build reads, cut into samples as build cuts them: --sample-len is
build's --seq-len) and keep the positions where the extra first token makes the
prediction confident and different (p_long > --min-p-long and sym_kl > --min-sym-kl).
Writes --out (Parquet) and, with --db, the table scan_<L> of the catalog database. Done
batches are kept in the work dir (default: <out>.work) and skipped on a rerun.
"""

from __future__ import annotations

from ngram_dask.cli.common import CLUSTER_FLAGS, CLUSTER_SWITCHES, STORAGE_FLAGS, add_switches, command, stage

SCAN_FLAGS = {
    "--input": "input",
    "--model": "scan.model",
    "--seq-len": "scan.seq_len",
    "--out": "scan.out",
    "--batches": "scan.batches",
    "--samples-per-batch": "scan.samples_per_batch",
    "--micro-batch": "scan.micro_batch",
    "--min-p-long": "scan.min_p_long",
    "--min-sym-kl": "scan.min_sym_kl",
    "--device": "scan.device",
    "--dtype": "scan.dtype",
    "--tokenizer": "tokenizer",
    "--token-dtype": "build.token_dtype",
    "--input-format": "build.input_format",
    # build's --seq-len: scan's own --seq-len is L, the window
    "--sample-len": "build.seq_len",
    "--samples": "build.samples",
    "--token-column": "build.token_column",
    "--work-dir": "work_dir",
    "--db": "db",
}


def _db_flag_means_to_db(args, cfg) -> None:
    if getattr(args, "db", None):  # --db on the command line means: write scan_<L> there too
        cfg.scan.to_db = True


def register(sub) -> None:
    p = command(sub, __doc__, [SCAN_FLAGS, STORAGE_FLAGS, CLUSTER_FLAGS])
    add_switches(p, CLUSTER_SWITCHES)
    p.set_defaults(_run=stage("ngram_dask.lm.scan", "run_scan", prepare=_db_flag_means_to_db))
