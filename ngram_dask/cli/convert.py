"""``ngram-dask convert``: tokenize text into MDS on Dask (one task per input shard).

Tokenize a hub dataset or jsonl / txt / parquet files into 2048-token MDS samples, one
sub-dataset per input shard; reruns skip finished shards.
"""

from __future__ import annotations

from ngram_dask.cli.common import CLUSTER_FLAGS, CLUSTER_SWITCHES, STORAGE_FLAGS, add_switches, command, stage

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


def register(sub) -> None:
    p = command(sub, __doc__, [CONVERT_FLAGS, CLUSTER_FLAGS, STORAGE_FLAGS])
    add_switches(p, CLUSTER_SWITCHES)
    add_switches(p, {"--no-wrap": ("convert.wrap", False)})
    p.set_defaults(_run=stage("ngram_dask.convert.run", "run_convert"))
