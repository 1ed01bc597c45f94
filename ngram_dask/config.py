"""One config object for every command: defaults < YAML file < command-line flags.

A YAML file mirrors the dataclasses below: shared keys at the top level, and one
section per stage (``cluster``, ``storage``, ``build``, ``top``, ``contexts``,
``convert``, ``score``, ``scan``) and per reader command (``query``, ``serve``, ``export``,
``report``, ``demo``).

Every setting is declared once, with ``setting(default, help)``: its type, its
default and its help text, which the command line shows for its flag. Every value
is checked here, once: each section checks its own values in ``__post_init__``
(so a bad YAML file or flag fails while loading, before any command starts), and
``Config.check(command)`` adds what a command needs (its required keys, the
cross-section rules) right before the command runs. Unknown keys and values of the
wrong type are a ``ConfigError`` naming the key.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from ngram_dask.errors import ConfigError
from ngram_dask.schema import check_key_fits, key_bits
from ngram_dask.tokenizer import DEFAULT_TOKENIZER

STEPS = ("explode", "aggregate", "load", "top")
DEFAULT_STEPS = STEPS
DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
TORCH_DTYPES = ("float16", "fp16", "half", "bfloat16", "bf16", "float32", "fp32", "float")
# MDSWriter's compressions, with their levels.
MDS_COMPRESSION = re.compile(r"(zstd(:([1-9]|1\d|2[0-2]))?|gz(:[1-9])?|bz2(:[1-9])?|br(:([0-9]|1[01]))?|snappy)")
_MISSING = dataclasses.MISSING


def setting(default: Any = _MISSING, help: str = "") -> Any:  # noqa: A002  (the argparse word)
    """A config field with its help text (lists get a fresh copy per instance)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


def _one_of(key: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        shown = ", ".join(map(str, allowed[:-1])) + f" or {allowed[-1]}"
        raise ConfigError(f"{key} must be {shown}, got {value!r}")


def _at_least(key: str, value: int | None, low: int, optional: bool = False) -> None:
    if value is None and optional:
        return
    if value is None or value < low:
        raise ConfigError(f"{key} must be >= {low}, got {value}")


def _device_and_dtype(section: str, device: str, dtype: str) -> None:
    if not DEVICE.fullmatch(device):
        raise ConfigError(f"unknown device {device!r} ({section}.device): use auto, cpu, cuda or cuda:N")
    if dtype != "auto" and dtype not in TORCH_DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r} ({section}.dtype): use auto, float16, bfloat16 or float32")


def parse_size(value: str | int, key: str = "convert.size_limit") -> int:
    """``64MiB``, ``64MB``, ``67108864`` -> bytes (MDS offsets are uint32: below 4 GiB)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmg]i?b?|b)?\s*", str(value).lower())
    if not m:
        raise ConfigError(f"{key} must be a size like 64MiB, got {value!r}")
    unit = (m.group(2) or "b").rstrip("b").rstrip("i")
    n = int(float(m.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[unit])
    if not 0 < n < 1 << 32:
        raise ConfigError(f"{key} must be between 1 byte and 4 GiB, got {value!r}")
    return n


CLUSTER_KINDS = ("local", "address", "slurm")


@dataclass
class SlurmConfig:
    """``cluster.kind: slurm``: the worker jobs dask-jobqueue submits (one ``sbatch`` each)."""

    jobs: int = setting(1, "worker jobs to submit (without max_jobs)")
    min_jobs: int = setting(1, "with max_jobs: the fewest jobs Dask's adaptive scaling keeps (at least one: "
                               "the stage starts once its workers are up)")
    max_jobs: Optional[int] = setting(None, "scale adaptively between min_jobs and this many jobs instead of "
                                            "a fixed number")
    cores: int = setting(1, "cores per job (split among its worker processes)")
    memory: str = setting("4GiB", "memory per job (split among its worker processes), e.g. 64GiB")
    processes: int = setting(1, "Dask worker processes per job (with gres gpu:N, one per GPU: N)")
    walltime: str = setting("01:00:00", "time limit of each job (sbatch -t)")
    partition: Optional[str] = setting(None, "partition (sbatch -p; default: the cluster's default partition)")
    account: Optional[str] = setting(None, "account charged (sbatch -A)")
    gres: Optional[str] = setting(None, "generic resources per job, e.g. gpu:1 (sbatch --gres); naming a gpu "
                                        "makes each worker process advertise GPU=1, so score and scan units "
                                        "run one per GPU")
    local_directory: Optional[str] = setting(None, "the workers' scratch and spill directory on node-local "
                                                   "disk, e.g. $TMPDIR or /scratch/$USER (expanded on the node)")
    job_extra: list[str] = setting([], "more #SBATCH lines, e.g. --constraint=ib,--qos=high (comma-separated "
                                       "on the command line)")
    prologue: list[str] = setting([], "shell lines each job runs before its workers, e.g. `module load "
                                      "python` (the malloc settings of docs/performance.md are exported "
                                      "there already)")
    interface: Optional[str] = setting(None, "network interface the scheduler and workers use, e.g. ib0 "
                                             "(default: the one of this machine's default route)")
    python: Optional[str] = setting(None, "the Python that runs the workers on the nodes (default: this one; "
                                          "the nodes must see the same environment)")
    job_name: str = setting("ngram-dask", "the jobs' name in squeue")
    log_directory: Optional[str] = setting(None, "where the jobs' stdout and stderr go (default: SLURM's, "
                                                 "slurm-<job>.out in the current directory)")

    def __post_init__(self) -> None:
        for key in ("jobs", "min_jobs", "cores", "processes"):
            _at_least(f"cluster.slurm.{key}", getattr(self, key), 1)
        _at_least("cluster.slurm.max_jobs", self.max_jobs, self.min_jobs, optional=True)
        if self.cores % self.processes:
            raise ConfigError(f"cluster.slurm.cores ({self.cores}) must be a multiple of "
                              f"cluster.slurm.processes ({self.processes}): each worker gets cores / processes threads")
        try:
            from dask.utils import parse_bytes

            parse_bytes(self.memory)
        except (ValueError, TypeError):
            raise ConfigError(f"cluster.slurm.memory must be a size like 16GiB, got {self.memory!r}") from None
        if not re.fullmatch(r"(\d+-)?\d+(:\d+){0,2}", self.walltime):
            raise ConfigError(f"cluster.slurm.walltime must be like 01:00:00 or 2-00:00:00, got {self.walltime!r}")


@dataclass
class ClusterConfig:
    """Where the work runs: a LocalCluster on this machine, a running scheduler, or SLURM jobs."""

    kind: Optional[str] = setting(None, "where the workers run: local (a LocalCluster here), address (a "
                                        "running scheduler: scheduler or scheduler_file) or slurm (worker "
                                        "jobs submitted through dask-jobqueue, set in cluster.slurm); "
                                        "default: address when a scheduler or scheduler file is given, "
                                        "else local")
    scheduler: Optional[str] = setting(None, "address of a running Dask scheduler, e.g. tcp://10.0.0.5:8786; "
                                             "none starts a LocalCluster here")
    scheduler_file: Optional[str] = setting(None, "a running scheduler's file (dask scheduler "
                                                  "--scheduler-file): the batch pattern of docs/clusters.md")
    wait_workers: Optional[int] = setting(None, "workers to wait for before the first unit (default: slurm, all "
                                                "of the jobs' workers; a scheduler file, 1; an address, none: "
                                                "it must have workers already)")
    wait_timeout: float = setting(600, "seconds to wait for the scheduler file and those workers before "
                                       "stopping with what SLURM says of the pending jobs")
    n_workers: Optional[int] = setting(None, "LocalCluster workers (default: cores / threads per worker)")
    threads_per_worker: int = setting(1, "threads per LocalCluster worker")
    memory_limit: str = setting("auto", "memory per LocalCluster worker, e.g. 4GiB; auto splits the machine's RAM")
    dashboard_address: str = setting("127.0.0.1:8787", "where the LocalCluster serves its dashboard")
    host: str = setting("127.0.0.1", "address the LocalCluster's scheduler and workers bind")
    tls_ca: Optional[str] = setting(None, "TLS: CA certificate (with tls_cert and tls_key)")
    tls_cert: Optional[str] = setting(None, "TLS: certificate of this client and of LocalCluster processes")
    tls_key: Optional[str] = setting(None, "TLS: private key of tls_cert")
    performance_report: Optional[str] = setting(None, "write Dask's HTML performance report of the run here")
    slurm: SlurmConfig = field(default_factory=SlurmConfig)

    def __post_init__(self) -> None:
        if self.kind is not None:
            _one_of("cluster.kind", self.kind, CLUSTER_KINDS)
        given = [flag for flag, value in (("--scheduler", self.scheduler),
                                          ("--scheduler-file", self.scheduler_file)) if value]
        if len(given) == 2:
            raise ConfigError("give --scheduler or --scheduler-file, not both")
        if given and self.kind in ("local", "slurm"):
            raise ConfigError(f"{given[0]} attaches to a running scheduler: it cannot go with cluster.kind "
                              f"{self.kind}")
        if self.kind == "address" and not given:
            raise ConfigError("cluster.kind address needs --scheduler ADDRESS or --scheduler-file PATH")
        _at_least("cluster.wait_workers", self.wait_workers, 1, optional=True)
        if not self.wait_timeout > 0:
            raise ConfigError(f"cluster.wait_timeout must be > 0 seconds, got {self.wait_timeout}")
        self.slurm.__post_init__()  # Config.check reruns only the top-level sections
        _at_least("cluster.n_workers", self.n_workers, 1, optional=True)
        _at_least("cluster.threads_per_worker", self.threads_per_worker, 1)
        if any((self.tls_ca, self.tls_cert, self.tls_key)) and not self.tls:
            raise ConfigError("TLS needs all three of --tls-ca, --tls-cert and --tls-key")
        if self.scheduler and self.scheduler.startswith("tls://") and not self.tls:
            raise ConfigError(f"{self.scheduler} is a TLS scheduler: pass --tls-ca, --tls-cert and --tls-key")

    @property
    def tls(self) -> bool:
        return all((self.tls_ca, self.tls_cert, self.tls_key))

    @property
    def runs_on(self) -> str:
        """The kind of cluster: ``kind``, or what the given addresses imply."""
        return self.kind or ("address" if self.scheduler or self.scheduler_file else "local")


@dataclass
class StorageConfig:
    """Remote storage. Credentials come from the usual AWS settings (environment,
    ~/.aws), never from here, so they cannot end up in logs or catalog_info."""

    s3_endpoint_url: Optional[str] = setting(None, "S3 endpoint, e.g. http://127.0.0.1:8333 for SeaweedFS / MinIO")
    s3_region: Optional[str] = setting(None, "S3 region")


@dataclass
class BuildConfig:
    """The n-gram build: explode -> aggregate -> load (-> catalog)."""

    chunks: int = setting(64, "K: n-grams go to chunk id0 % K (aggregated, loaded and exported per chunk)")
    ngrams: list[int] = setting([2, 3], "which n to count: any n whose ids fit one 64-bit key (n <= 4 for 16-bit ids)")
    steps: list[str] = setting(list(DEFAULT_STEPS), "the build's steps to run, of " + ", ".join(STEPS)
                               + " (top: the top tables)")
    contexts: bool = setting(False, "after the build, run the contexts stage (`ngram-dask contexts`): "
                                    "real examples of every task")
    token_dtype: str = setting("auto", "uint16 or uint32: how a flat .bin stores ids; auto: MDS reads the "
                                       "dataset's ngram_dask.json, Megatron/.npy/Parquet their own headers, "
                                       ".bin takes uint16")
    input_format: str = setting("auto", "auto (detected from the files), mds, megatron (.bin + .idx), bin "
                                        "(flat ids), npy or parquet (a list column of ids)")
    seq_len: int = setting(2048, "stream files (megatron, .bin, .npy) are cut into samples of this many tokens, "
                                 "from the start of each file, the last one shorter (as MDS samples of "
                                 "`convert` are): no n-gram crosses a sample")
    samples: str = setting("seq-len", "seq-len: cut streams into samples of seq_len tokens; documents: each "
                                      "Megatron document (or Parquet row) is one sample, so no n-gram crosses "
                                      "a document")
    token_column: Optional[str] = setting(None, "Parquet: the list column of ids (default: the first of "
                                                "input_ids, tokens, token_ids)")
    drop_eos: bool = setting(False, "extension: skip n-grams that contain eos_id (document-aware counts)")
    eos_id: int = setting(0, "the token id drop_eos skips")
    verify_hashes: bool = setting(True, "check shard hashes listed in index.json")
    count_engine: str = setting("auto", "explode's counting: duckdb (hash aggregate, then a sort of the distinct "
                                        "n-grams), numpy (sort every packed key), or auto: numpy where this "
                                        "machine's numpy sorts 64-bit keys fast (vectorised), else duckdb; "
                                        "equal results")
    explode_unit_tokens: Optional[int] = setting(None, "tokens per explode unit: each unit reads as many "
                                                       "consecutive input pieces as hold this many (~28 B each "
                                                       "of worker memory while counting); default: sized from "
                                                       "the worker's memory limit so no unit makes a worker "
                                                       "pause; a work dir keeps its grouping")
    aggregate_budget_bytes: Optional[int] = setting(None, "memory one aggregate key range may use (default: "
                                                          "duckdb_memory_fraction of the worker's limit); a "
                                                          "chunk over it is cut into key ranges")
    block_rows: int = setting(1 << 20, "rows per block of the explode's part files at most (a block is one "
                                       "Parquet file read whole; a unit's rows of a chunk are one block when fewer)")
    mark_rows: int = setting(8192, "rows between the marks of the explode's part files: the keys the aggregate "
                                   "plans a chunk's key ranges from (tests set it small)")
    plan: bool = setting(False, "print what the build would do (units, K, key ranges, files, scratch and "
                                "catalog bytes, time per step) from the input's index and a sample, for the "
                                "cluster settings given, and stop: no cluster, nothing written")
    plan_sample_tokens: int = setting(16_000_000, "--plan: tokens of samples drawn at random over the input to "
                                                  "fit the corpus's growth of distinct n-grams")
    plan_sample_pieces: int = setting(16, "--plan: pieces the samples are drawn from, spread over the input")
    plan_unit_sample_tokens: int = setting(32_000_000, "--plan: consecutive tokens (at most an explode unit's) "
                                                       "counted to fit the growth of a unit's distinct n-grams")
    plan_tokens: Optional[float] = setting(None, "--plan: predict for a corpus of this many tokens like the input "
                                                 "(e.g. 207e9 from a sample of the same kind of text)")
    plan_client_cores: Optional[int] = setting(None, "--plan: cores of the machine the single writer loads on "
                                                     "(default: the LocalCluster's; beside a scheduler, this "
                                                     "machine's); one box's when planning for many")
    duckdb_memory_fraction: float = setting(0.5, "share of a worker's memory limit the aggregate may use (at most "
                                                 "0.6 of it less the worker's 320 MiB baseline, so it never pauses)")
    duckdb_threads: Optional[int] = setting(None, "DuckDB threads in the aggregate (default: the worker's)")
    aggregate_method: str = setting("auto", "auto: the numpy merge for chunks that fit duckdb_memory_fraction of "
                                            "the worker's memory, DuckDB (spilling to spill_dir) for larger ones; "
                                            "numpy or duckdb to force one")
    spill_dir: Optional[str] = setting(None, "DuckDB's temp directory in the aggregate "
                                             "(default: the worker's local directory)")

    def __post_init__(self) -> None:
        _at_least("build.chunks", self.chunks, 1)
        if not self.ngrams or any(n < 1 for n in self.ngrams):
            raise ConfigError(f"build.ngrams must be positive integers, got {self.ngrams}")
        unknown = [s for s in self.steps if s not in STEPS]
        if unknown:
            raise ConfigError(f"unknown step {unknown[0]!r}; steps are {', '.join(STEPS)}")
        if not self.steps and not self.contexts:
            raise ConfigError(f"build.steps is empty: name some of {', '.join(STEPS)} (or pass --contexts)")
        _one_of("build.token_dtype", self.token_dtype, ("auto", "uint16", "uint32"))
        _one_of("build.input_format", self.input_format, ("auto", "mds", "megatron", "bin", "npy", "parquet"))
        _one_of("build.samples", self.samples, ("seq-len", "documents"))
        _at_least("build.seq_len", self.seq_len, 1)
        _one_of("build.aggregate_method", self.aggregate_method, ("auto", "numpy", "duckdb"))
        _one_of("build.count_engine", self.count_engine, ("auto", "duckdb", "numpy"))
        if not 0 < self.duckdb_memory_fraction <= 1:
            raise ConfigError("build.duckdb_memory_fraction must be in (0, 1]")
        _at_least("build.duckdb_threads", self.duckdb_threads, 1, optional=True)
        if self.explode_unit_tokens is not None and not 1 <= self.explode_unit_tokens < 1 << 32:
            # partial counts are stored as uint32
            raise ConfigError(f"build.explode_unit_tokens must be in [1, 2**32), got {self.explode_unit_tokens}")
        _at_least("build.aggregate_budget_bytes", self.aggregate_budget_bytes, 1, optional=True)
        _at_least("build.block_rows", self.block_rows, 1)
        _at_least("build.mark_rows", self.mark_rows, 1)
        _at_least("build.plan_sample_tokens", self.plan_sample_tokens, 1000)
        _at_least("build.plan_sample_pieces", self.plan_sample_pieces, 1)
        _at_least("build.plan_unit_sample_tokens", self.plan_unit_sample_tokens, 1000)
        _at_least("build.plan_tokens", self.plan_tokens, 1, optional=True)
        _at_least("build.plan_client_cores", self.plan_client_cores, 1, optional=True)


@dataclass
class TopConfig:
    """The build's `top` step: the tokens table and the top tables (the most predictive prompts)."""

    top_bigram_min_frac: float = setting(0.5, "top_bigrams keeps prefixes with frac_max above this")
    top_bigram_min_count: int = setting(0, "... and sum_count above this")
    top_trigram_min_frac: float = setting(0.5, "top_trigrams keeps prefixes with frac_max above this")
    top_trigram_min_count: int = setting(1000, "... and sum_count above this")


@dataclass
class ContextsConfig:
    """`contexts`: real examples of every prompt of the top tables (the build's input, read again)."""

    per_task: int = setting(5, "examples kept per prompt: min(per_task, occurrences), chosen uniformly at random")
    seed: int = setting(0, "the choice's seed: the same seed gives the same examples, however the work is split")
    before: int = setting(32, "ids kept before the prompt (clipped at the sample's start)")
    after: int = setting(8, "ids kept after the prompt's next id (clipped at the sample's end)")
    prune_rows: int = setting(1_000_000, "the writer cuts the examples it has merged to per_task per prompt "
                                         "when they pass this many rows (and twice what its last cut left)")
    cutoff_sigmas: float = setting(8.0, "each prompt's cutoff (from its sum_count) leaves per_task + s*sqrt(per_task) "
                                        "+ s^2 of its occurrences expected under it, and every unit drops the "
                                        "rest at once; a prompt left with fewer than per_task (odds under 1e-13 "
                                        "at 8) is scanned again without cutoffs. Never changes the result")

    def __post_init__(self) -> None:
        _at_least("contexts.per_task", self.per_task, 1)
        if self.per_task > 65535:
            raise ConfigError(f"contexts.per_task must be at most 65535, got {self.per_task}")
        _at_least("contexts.seed", self.seed, 0)
        _at_least("contexts.before", self.before, 0)
        _at_least("contexts.after", self.after, 0)
        _at_least("contexts.prune_rows", self.prune_rows, 1)
        _at_least("contexts.cutoff_sigmas", self.cutoff_sigmas, 0)
        if self.before + self.after > 60000:
            raise ConfigError("contexts.before + contexts.after must be at most 60000 ids")


@dataclass
class ExposureConfig:
    """`exposure`: per top prompt, its occurrences in the sequences trained before each checkpoint."""

    revisions: list[str] = setting(["pythia"], "the checkpoints to count up to: step<N> names, pythia (all "
                                               "154), pythia-log or a range step1000:143000:4000")
    seq_len: int = setting(2049, "tokens per training sequence (Pythia: 2,049); an MDS sample is one sequence")
    samples_per_step: int = setting(1024, "sequences per optimizer step: sequence i is trained at step "
                                          "i // samples_per_step")

    def __post_init__(self) -> None:
        _at_least("exposure.seq_len", self.seq_len, 2)
        _at_least("exposure.samples_per_step", self.samples_per_step, 1)


@dataclass
class ConvertConfig:
    """Raw text -> tokenized MDS (`ngram-dask convert`); the tokenizer is the top-level key."""

    source: Optional[str] = setting(None, "hub dataset id (or hf:<id or folder>), or a path / fsspec glob")
    out: Optional[str] = setting(None, "MDS root: one sub-dataset per source shard and a merged index.json")
    text_field: str = setting("text", "the text column of jsonl / parquet / hub records")
    txt_mode: str = setting("file", "file: one document per .txt file; line: one per line")
    seq_len: int = setting(2048, "tokens per MDS sample")
    wrap: bool = setting(True, "carry a document's tail into the next sample (false: cut each on its own)")
    compression: Optional[str] = setting("zstd:16", "MDS shard compression: zstd[:1-22], gz[:1-9], bz2[:1-9], "
                                                    "br[:0-11], snappy, or empty for none")
    size_limit: str = setting("64MiB", "size of each MDS shard file")
    max_samples_per_shard: Optional[int] = setting(None, "stop each source shard after this many samples")
    begin_shard: int = setting(0, "first source shard to convert")
    end_shard: Optional[int] = setting(None, "source shard to stop before (default: all)")
    hf_split: str = setting("train", "the hub dataset's split")
    hf_config: Optional[str] = setting(None, "the hub dataset's configuration name, if it has several")
    bos_token: Optional[str] = setting(None, "token put before each document (default: the tokenizer's; "
                                             "empty: none)")
    eos_token: Optional[str] = setting(None, "token put after each document (default: the tokenizer's; "
                                             "empty: none)")
    invalid_utf8: str = setting("skip", "skip: count and report such documents; error: stop")

    def __post_init__(self) -> None:
        _at_least("convert.seq_len", self.seq_len, 1)
        _one_of("convert.txt_mode", self.txt_mode, ("file", "line"))
        _one_of("convert.invalid_utf8", self.invalid_utf8, ("skip", "error"))
        _at_least("convert.max_samples_per_shard", self.max_samples_per_shard, 1, optional=True)
        if self.begin_shard < 0 or (self.end_shard is not None and self.end_shard <= self.begin_shard):
            raise ConfigError(f"--begin-shard {self.begin_shard} / --end-shard {self.end_shard}: "
                              "need 0 <= begin < end")
        if self.compression and not MDS_COMPRESSION.fullmatch(self.compression):
            raise ConfigError(f"convert.compression {self.compression!r} is not one of zstd[:1-22], gz[:1-9], "
                              "bz2[:1-9], br[:0-11], snappy (or empty for none)")
        parse_size(self.size_limit)


@dataclass
class ScoreConfig:
    """`score`: a p_<model> column per model on the top tables."""

    models: list[str] = setting([], "models to score with: 70m, 1.4b, ... (Pythia deduped) or any "
                                    "local path / hub id")
    tables: list[str] = setting(["top_bigrams", "top_trigrams"], "top tables to score")
    device: str = setting("auto", "auto, cpu, cuda or cuda:N (resolved on each worker)")
    dtype: str = setting("auto", "auto (float16 on CUDA, float32 on CPU), float16, bfloat16 or float32")
    batch_size: int = setting(1024, "prompts per forward pass")
    batch_sizes: list[str] = setting([], "per-model batch sizes, e.g. 12b=256,./m=64")
    rows_per_unit: int = setting(65536, "rows of a top table per scoring unit (one Dask task)")
    cpu_threads: Optional[int] = setting(None, "torch threads per worker on CPU "
                                               "(default: (cores - 1) / workers on the host)")
    force: bool = setting(False, "rescore models already scored")
    revisions: list[str] = setting([], "training checkpoints to score into the scores table: step<N> names, "
                                       "pythia (all 154), pythia-log (step0, 1..512, every 10,000 and "
                                       "step143000) or a range step1000:143000:4000")
    final_revision: str = setting("step143000", "the revision whose scores also fill p_<model> "
                                                "(Pythia's final checkpoint)")
    learned_threshold: float = setting(0.5, "p from which a task counts as learned (the learning table)")

    def __post_init__(self) -> None:
        if not 0 < self.learned_threshold <= 1:
            raise ConfigError(f"score.learned_threshold must be in (0, 1], got {self.learned_threshold}")
        self.tables = list(dict.fromkeys(t.strip() for t in self.tables if t.strip()))
        if not self.tables:
            raise ConfigError("score.tables is empty: name top_bigrams and/or top_trigrams")
        for t in self.tables:
            if not re.fullmatch(r"top_[a-z0-9_]+", t):
                raise ConfigError(f"cannot score table {t!r}: only the catalog's top_* tables are scored")
        _at_least("score.batch_size", self.batch_size, 1)
        _at_least("score.rows_per_unit", self.rows_per_unit, 1)
        _at_least("score.cpu_threads", self.cpu_threads, 1, optional=True)
        _device_and_dtype("score", self.device, self.dtype)
        for entry in self.batch_sizes:
            name, sep, value = entry.rpartition("=")
            if not sep or not name.strip():
                raise ConfigError(f"score.batch_sizes entries are MODEL=N, got {entry!r}")
            try:
                size = int(value)
            except ValueError:
                raise ConfigError(f"score.batch_sizes: {value!r} in {entry!r} is not an integer") from None
            if size < 1:
                raise ConfigError(f"score.batch_sizes: the batch size in {entry!r} must be >= 1")


@dataclass
class ScanConfig:
    """`scan`: the first-token deletion scan."""

    model: Optional[str] = setting(None, "causal LM to scan with: 70m, ... or a local path / hub id")
    out: Optional[str] = setting(None, "Parquet file of the kept positions")
    seq_len: int = setting(4, "L: the short window's length (the long one has L + 1 tokens)")
    batches: Optional[int] = setting(None, "scan only the first this many batches")
    samples_per_batch: int = setting(64, "samples per Dask task")
    micro_batch: int = setting(1024, "windows per forward pass")
    min_p_long: float = setting(0.5, "keep positions whose long-window top probability is above this")
    min_sym_kl: float = setting(0.5, "... and whose symmetric KL between the windows is above this")
    device: str = setting("auto", "auto, cpu, cuda or cuda:N")
    dtype: str = setting("auto", "auto (float16 on CUDA, float32 on CPU), float16, bfloat16 or float32")
    to_db: bool = setting(False, "also write the table scan_<L> into the catalog database (db)")

    def __post_init__(self) -> None:
        _at_least("scan.seq_len", self.seq_len, 1)
        _at_least("scan.samples_per_batch", self.samples_per_batch, 1)
        _at_least("scan.micro_batch", self.micro_batch, 1)
        _at_least("scan.batches", self.batches, 1, optional=True)
        _device_and_dtype("scan", self.device, self.dtype)


@dataclass
class QueryConfig:
    """`query`: how many completions, and how they are printed."""

    top: int = setting(5, "completions to show per table")
    json: bool = setting(False, "print the answer as JSON")

    def __post_init__(self) -> None:
        _at_least("query.top", self.top, 1)


@dataclass
class ServeConfig:
    """`serve`: where the page and the JSON API listen (not the cluster's host)."""

    host: str = setting("127.0.0.1", "address to listen on (0.0.0.0 exposes the catalog to the network)")
    port: int = setting(8000, "port to listen on (0: any free port)")

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"serve.port must be between 0 and 65535, got {self.port}")


EXPORT_LAYOUTS = ("default", "original")
EXPORT_COUNTS = ("uint64", "uint32")


@dataclass
class ExportConfig:
    """`export`: tables -> Parquet + dataset card, and optionally to the Hugging Face hub."""

    out: Optional[str] = setting(None, "folder for the export")
    tables: list[str] = setting([], "only these tables (default: all but catalog_info and load_ledger)")
    split_rows: int = setting(1_000_000, "split tables with more rows than this into one file per id0 chunk")
    layout: str = setting("default", "default: one dataset, one config per table (split train). original: what "
                                     "the original project published, one dataset folder per table with the "
                                     "table's name as the split, p_<size> score names, id0_chunk on the n-gram "
                                     "tables")
    counts: str = setting("uint64", "with layout original: uint32 writes count and max_count as the original's "
                                    "uint32 (refused if any does not fit)")
    push_to_hub: Optional[str] = setting(None, "then upload to the Hugging Face hub (needs HF_TOKEN or "
                                               "`huggingface-cli login`): the folder as this dataset repo, or "
                                               "with layout original each table's folder as the dataset "
                                               "<repo><table> (a prefix, e.g. me/pile_)")
    private: bool = setting(False, "with push_to_hub: create the repo(s) private")
    tasks: bool = setting(False, "write the prompt sets of the task families instead (bigram_prompts, "
                                 "trigram_prompts; Parquet and JSONL), from the examples of `ngram-dask contexts`")

    def __post_init__(self) -> None:
        self.tables = [t.strip() for t in self.tables if t.strip()]
        _at_least("export.split_rows", self.split_rows, 0)
        _one_of("export.layout", self.layout, EXPORT_LAYOUTS)
        _one_of("export.counts", self.counts, EXPORT_COUNTS)


@dataclass
class ReportConfig:
    """`report`: plots and a page of the catalog."""

    out: Optional[str] = setting(None, "folder for the PNGs and index.html")


@dataclass
class DemoConfig:
    """`demo`: where the demo writes, and its cluster (the rest is the packaged demo config)."""

    out: str = setting("demo-output", "folder for the demo's MDS, work dir and database")
    n_workers: Optional[int] = setting(None, "LocalCluster workers (default: the demo config's cluster.n_workers)")

    def __post_init__(self) -> None:
        _at_least("demo.n_workers", self.n_workers, 1, optional=True)


# What each command needs set, with the flag that sets it.
REQUIRED = {
    "build": {"input": "--input", "work_dir": "--work-dir", "db": "--db"},
    "plan": {"input": "--input"},
    "convert": {"convert.source": "--source", "convert.out": "--out"},
    "scan": {"input": "--input", "scan.model": "--model", "scan.out": "--out"},
    "score": {"db": "--db"},
    "contexts": {"db": "--db"},
    "exposure": {"db": "--db", "input": "--input"},
    "verify": {"db": "--db"},
    "export": {"export.out": "--out"},
    "report": {"report.out": "--out"},
}


@dataclass
class Config:
    input: Optional[str] = setting(None, "the tokenized corpus: a local path or fsspec URL (s3://...), one file, "
                                          "a folder or a glob: an MDS dataset (a root index.json, also one whose "
                                          "shards live in subfolders), Megatron .bin/.idx pairs, flat .bin or "
                                          ".npy token files, or Parquet with a list column of ids")
    work_dir: Optional[str] = setting(None, "intermediate files (parts and markers); every worker must reach it")
    db: Optional[str] = setting(None, "the catalog database (a local DuckDB file)")
    tokenizer: str = setting(DEFAULT_TOKENIZER, "hub id, local folder or tokenizer.json file of the tokenizer")
    vocab_size: int = setting(50432, "ids are below this (Pythia pads GPT-NeoX's 50277 tokens to 50432)")
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    build: BuildConfig = field(default_factory=BuildConfig)
    top: TopConfig = field(default_factory=TopConfig)
    contexts: ContextsConfig = field(default_factory=ContextsConfig)
    exposure: ExposureConfig = field(default_factory=ExposureConfig)
    convert: ConvertConfig = field(default_factory=ConvertConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    scan: ScanConfig = field(default_factory=ScanConfig)
    query: QueryConfig = field(default_factory=QueryConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)

    def __post_init__(self) -> None:
        if self.vocab_size < 2:
            raise ConfigError(f"vocab_size must be >= 2, got {self.vocab_size}")
        for n in self.build.ngrams:
            try:
                check_key_fits(n, key_bits(self.vocab_size))
            except ValueError as exc:
                raise ConfigError(str(exc)) from None

    def check(self, command: str) -> None:
        """Everything ``command`` needs, checked before it starts (values may have been
        changed since loading, so every section is checked again)."""
        for section in [self] + [getattr(self, f.name) for f in dataclasses.fields(self)]:
            if dataclasses.is_dataclass(section) and hasattr(section, "__post_init__"):
                section.__post_init__()
        for key, flag in REQUIRED.get(command, {}).items():
            if not self.get(key):
                raise ConfigError(f"'{key}' is required (flag {flag} or config key '{key}')")
        if command == "score" and not [m for m in self.score.models if m.strip()]:
            raise ConfigError("no models to score: pass --models 70m,160m,... (or config key score.models)")
        if command == "scan" and self.scan.to_db and not self.db:
            raise ConfigError("scan.to_db needs a database: --db or config key 'db'")

    def get(self, dotted: str) -> Any:
        obj: Any = self
        for part in dotted.split("."):
            obj = getattr(obj, part)
        return obj


def setting_help(dotted: str) -> tuple[str, str]:
    """``(help text, default as shown)`` of a setting; the default is '' when there is none."""
    cls: Any = Config
    *sections, leaf = dotted.split(".")
    for part in sections:
        cls = typing.get_type_hints(cls)[part]
    f = {f.name: f for f in dataclasses.fields(cls)}[leaf]
    default = f.default if f.default is not _MISSING else f.default_factory()
    shown = ",".join(map(str, default)) if isinstance(default, list) else "" if default is None else str(default)
    return f.metadata.get("help", ""), shown


def describe(dotted: str) -> str:
    """What ``--help`` shows for the flag of a setting: its help, config key and default."""
    text, default = setting_help(dotted)
    return f"{text} (config key {dotted}" + (f"; default {default})" if default else ")")


# --- loading --------------------------------------------------------------------------------


def _is_optional(tp) -> tuple[bool, Any]:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return True, args[0]
    return False, tp


_SCALARS = {int: "an integer", float: "a number"}


def _coerce(value: Any, tp: Any, key: str) -> Any:
    optional, inner = _is_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"config key '{key}' must not be empty")
    origin = typing.get_origin(inner)
    if origin is list:
        (item_tp,) = typing.get_args(inner)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' must be a list, got {value!r}")
        return [_coerce(v, item_tp, key) for v in value]
    if inner is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"config key '{key}' must be true or false, got {value!r}")
    if inner in _SCALARS:
        # bool is an int to Python, never to a config; an int is a fine float.
        ok = int if inner is int else (int, float)
        if isinstance(value, ok) and not isinstance(value, bool):
            return inner(value)
        if isinstance(value, str):
            try:
                return inner(value)
            except ValueError:
                pass
        raise ConfigError(f"config key '{key}' must be {_SCALARS[inner]}, got {value!r}")
    if inner is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"config key '{key}' must be a string, got {value!r}")
    raise TypeError(f"unsupported config type {tp!r} for {key}")  # a bug, not a user error


def _build(cls: type, data: Any, prefix: str = "") -> Any:
    """An instance of ``cls`` from a (nested) mapping: its ``__post_init__`` checks the values."""
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{prefix.rstrip('.') or '<root>'}' must be a mapping")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown config key '{path}' (known here: {', '.join(sorted(names))})")
        if dataclasses.is_dataclass(hints[key]):
            kwargs[key] = _build(hints[key], value or {}, prefix=f"{path}.")
        else:
            kwargs[key] = _coerce(value, hints[key], path)
    return cls(**kwargs)


def _merge(base: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = base
    for i, part in enumerate(parents):
        child = node.setdefault(part, {})
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"config section '{'.'.join(parents[:i + 1])}' must be a mapping")
        node = child
    node[leaf] = value


# Names from before the vocabulary settled (docs/glossary.md): they keep working for one
# release, each use told once, on stderr, with its new name.
RENAMED_KEYS: dict[str, str] = {  # old dotted key (or section) -> new
    "build.explode_task_tokens": "build.explode_unit_tokens",
    "score.rows_per_task": "score.rows_per_unit",
    "catalog": "top",
}
RENAMED_STEPS: dict[str, str] = {"catalog": "top"}  # old build step -> new
# old build steps that became a switch: step -> (dotted key set to true, how it is said)
STEPS_TO_SWITCHES: dict[str, tuple[str, str]] = {"contexts": ("build.contexts", "'build --contexts'")}


def _say_deprecated(old: str, new: str) -> None:
    import sys

    print(f"ngram-dask: deprecated: {old} is now {new}; the old name works until the next release",
          file=sys.stderr, flush=True)


def _upgrade_names(data: dict) -> None:
    """Move settings given under their old names to the new ones (in place), saying so."""
    for old, new in RENAMED_KEYS.items():
        *parents, leaf = old.split(".")
        node: Any = data
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or leaf not in node:
            continue
        value = node.pop(leaf)
        if isinstance(value, dict):  # a whole section: its keys move under the new one
            for key, inner in value.items():
                _merge(data, f"{new}.{key}", inner)
        else:
            _merge(data, new, value)
        _say_deprecated(f"'{old}'", f"'{new}'")
    build = data.get("build")
    given = build.get("steps") if isinstance(build, dict) else None
    if isinstance(given, str):  # a flag's "explode,catalog"
        given = [step.strip() for step in given.split(",") if step.strip()]
    if isinstance(given, list):
        steps = []
        for step in given:
            if step in STEPS_TO_SWITCHES:
                key, said = STEPS_TO_SWITCHES[step]
                _say_deprecated(f"build step '{step}'", said)
                _merge(data, key, True)
                continue
            if step in RENAMED_STEPS:
                _say_deprecated(f"build step '{step}'", f"'{RENAMED_STEPS[step]}'")
                step = RENAMED_STEPS[step]
            steps.append(step)
        build["steps"] = steps


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults, then the YAML file at ``path``, then ``overrides`` (dotted keys; None = not set)."""
    data: Any = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {p} is not valid YAML: {str(exc).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise ConfigError("config section '<root>' must be a mapping")
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _merge(data, dotted, value)
    _upgrade_names(data)
    return _build(Config, data)
