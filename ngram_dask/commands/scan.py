"""``ngram-dask scan``: the first-token deletion scan (see ``ngram_dask.scan``)."""

from __future__ import annotations

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
    "--work-dir": "work_dir",
    "--db": "db",
}


def cmd_scan(args, config_from, announcer) -> int:
    from ..scan import run_scan, summary_lines

    cfg = config_from(args)
    if getattr(args, "db", None):  # --db on the command line means: write scan_<L> there too
        cfg.scan.to_db = True
    announce = announcer(args)
    report = run_scan(cfg, announce)
    for line in summary_lines(report):
        announce(line)
    return 0


def register(sub, common, add, config_from, announcer) -> None:
    from ..cli import CLUSTER_FLAGS

    p = sub.add_parser(
        "scan",
        help="first-token deletion scan: where one earlier token changes the model's prediction",
        description=(
            "Run a causal LM on every short (L tokens) and long (L+1 tokens) window of the MDS "
            "samples and keep the positions where the extra first token makes the prediction "
            "confident and different (p_long > --min-p-long and sym_kl > --min-sym-kl). "
            "Writes --out (Parquet) and, with --db, the table scan_<L> of the catalog database. "
            "Done batches are kept in the work dir (default: <out>.work) and skipped on a rerun."
        ),
    )
    common(p)
    add(p, SCAN_FLAGS)
    add(p, CLUSTER_FLAGS)
    p.set_defaults(_run=lambda args: cmd_scan(args, config_from, announcer))
