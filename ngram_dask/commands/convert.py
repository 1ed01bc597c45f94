"""`ngram-dask convert`: raw text (hub dataset, jsonl / txt / parquet files) -> tokenized MDS."""

from __future__ import annotations

CONVERT_FLAGS = {
    "--source": "convert.source",
    "--out": "convert.out",
    "--tokenizer": "tokenizer",
    "--seq-len": "convert.seq_len",
    "--text-field": "convert.text_field",
    "--txt-mode": "convert.txt_mode",
    "--max-samples-per-shard": "convert.max_samples_per_shard",
    "--begin-shard": "convert.begin_shard",
    "--end-shard": "convert.end_shard",
    "--compression": "convert.compression",
    "--size-limit": "convert.size_limit",
    "--invalid-utf8": "convert.invalid_utf8",
    "--hf-split": "convert.hf_split",
    "--hf-config": "convert.hf_config",
    "--num-proc": "cluster.n_workers",  # the original's name for its pool size
}


def register(sub, common, add, config_from, announcer) -> None:
    from ..cli import CLUSTER_FLAGS, STORAGE_FLAGS

    p = sub.add_parser(
        "convert",
        help="tokenize text into MDS on Dask (one task per input shard)",
        description="Tokenize a hub dataset or jsonl / txt / parquet files into 2048-token MDS samples, "
                    "one sub-dataset per input shard; reruns skip finished shards.",
    )
    common(p)
    add(p, CONVERT_FLAGS)
    p.add_argument("--no-wrap", dest="convert.wrap", action="store_const", const=False, default=None,
                   help="cut each document on its own (no carry-over into the next sample)")
    add(p, CLUSTER_FLAGS)
    add(p, STORAGE_FLAGS)

    def run(args) -> int:
        from ..convert import run_convert, summary_lines

        cfg = config_from(args)
        announce = announcer(args)
        report = run_convert(cfg, announce)
        for line in summary_lines(report, cfg.convert.out):
            announce(line)
        return 0

    p.set_defaults(_run=run)
