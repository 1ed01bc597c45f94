"""One config object for every command: defaults < YAML file < command-line flags.

A YAML file mirrors the dataclasses below: shared keys at the top level, and one
section per stage (``cluster``, ``build``, ``catalog``, ``convert``, ``score``, ``scan``).
Unknown keys and values of the wrong type are a ``ConfigError`` naming the key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from .errors import ConfigError

STEPS = ("explode", "aggregate", "load", "catalog")


@dataclass
class ClusterConfig:
    """Where the work runs: a LocalCluster on this machine, or a running scheduler."""

    scheduler: Optional[str] = None  # e.g. tcp://10.0.0.5:8786; None starts a LocalCluster
    n_workers: Optional[int] = None  # LocalCluster only; None = cores / threads_per_worker
    threads_per_worker: int = 1
    memory_limit: str = "auto"  # per worker, e.g. "4GiB"; "auto" splits the machine's RAM
    dashboard_address: str = "127.0.0.1:8787"
    host: str = "127.0.0.1"  # the LocalCluster's scheduler and workers bind here
    tls_ca: Optional[str] = None
    tls_cert: Optional[str] = None
    tls_key: Optional[str] = None
    performance_report: Optional[str] = None


@dataclass
class StorageConfig:
    """Remote storage. Credentials come from the usual AWS settings (environment,
    ~/.aws), never from here, so they cannot end up in logs or catalog_info."""

    s3_endpoint_url: Optional[str] = None  # e.g. http://127.0.0.1:8333 for SeaweedFS / MinIO
    s3_region: Optional[str] = None


@dataclass
class BuildConfig:
    """The n-gram build: explode -> aggregate -> load (-> catalog)."""

    chunks: int = 64  # K: id0 % K decides the chunk
    ngrams: list[int] = field(default_factory=lambda: [2, 3])
    steps: list[str] = field(default_factory=lambda: list(STEPS))
    token_dtype: str = "auto"  # uint16 / uint32; auto reads the dataset's ngram_dask.json, else uint16
    drop_eos: bool = False  # extension: skip n-grams that contain eos_id (document-aware counts)
    eos_id: int = 0
    verify_hashes: bool = True  # check shard hashes listed in index.json
    count_engine: str = "duckdb"  # explode's counting: duckdb (hash aggregate) or numpy (sort); equal results
    explode_task_tokens: int = 34_000_000  # shards per explode task: as many as hold this many tokens (~8 B each while sorting)
    duckdb_memory_fraction: float = 0.5  # of the worker's memory limit, for the aggregate
    duckdb_threads: Optional[int] = None  # None = the worker's threads
    aggregate_method: str = "auto"  # auto: numpy merge when a chunk fits the budget, else DuckDB
    spill_dir: Optional[str] = None  # DuckDB's temp directory; None = the worker's local directory


@dataclass
class CatalogConfig:
    """Human-readable tables: tokens and the top (most predictive) prefixes."""

    top_bigram_min_frac: float = 0.5
    top_bigram_min_count: int = 0
    top_trigram_min_frac: float = 0.5
    top_trigram_min_count: int = 1000


@dataclass
class ConvertConfig:
    """Raw text -> tokenized MDS (`ngram-dask convert`); the tokenizer is the top-level key."""

    source: Optional[str] = None  # hub dataset id (or hf:<id or folder>), or a path / fsspec glob
    out: Optional[str] = None  # MDS root: one sub-dataset per source shard + a merged index.json
    text_field: str = "text"
    txt_mode: str = "file"  # "file": one document per .txt file; "line": one per line
    seq_len: int = 2048
    wrap: bool = True  # False: each document is cut on its own, no carry-over
    compression: Optional[str] = "zstd:16"
    size_limit: str = "64MiB"  # per MDS shard file
    max_samples_per_shard: Optional[int] = None
    begin_shard: int = 0
    end_shard: Optional[int] = None  # exclusive; None = all
    hf_split: str = "train"
    hf_config: Optional[str] = None  # the hub dataset's configuration name, if it has several
    bos_token: Optional[str] = None  # None = the tokenizer's bos_token; "" = none
    eos_token: Optional[str] = None  # None = the tokenizer's eos_token; "" = none
    invalid_utf8: str = "skip"  # "skip": count and report such documents; "error": stop


@dataclass
class ScoreConfig:
    """`score`: a p_<model> column per model on the top tables."""

    models: list[str] = field(default_factory=list)  # 70m, 1.4b, ... or any local path / hub id
    tables: list[str] = field(default_factory=lambda: ["top_bigrams", "top_trigrams"])
    device: str = "auto"  # auto / cpu / cuda / cuda:N (resolved on each worker)
    dtype: str = "auto"  # auto = float16 on CUDA, float32 on CPU
    batch_size: int = 1024  # prompts per forward pass
    batch_sizes: list[str] = field(default_factory=list)  # per-model overrides: ["12b=256", "./m=64"]
    rows_per_task: int = 65536  # rows per Dask task
    cpu_threads: Optional[int] = None  # torch threads per worker on CPU; None = (cores - 1) / workers on the host
    force: bool = False  # rescore models already scored


@dataclass
class ScanConfig:
    model: Optional[str] = None
    out: Optional[str] = None
    seq_len: int = 4
    batches: Optional[int] = None
    samples_per_batch: int = 64
    micro_batch: int = 1024
    min_p_long: float = 0.5
    min_sym_kl: float = 0.5
    device: str = "auto"
    dtype: str = "auto"
    to_db: bool = False


@dataclass
class Config:
    input: Optional[str] = None  # MDS dataset: local path or fsspec URL
    work_dir: Optional[str] = None  # intermediate Parquet; every worker must reach it
    db: Optional[str] = None  # the final DuckDB file
    tokenizer: str = "EleutherAI/gpt-neox-20b"
    vocab_size: int = 50432  # Pythia pads GPT-NeoX's 50277 tokens to 50432
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    build: BuildConfig = field(default_factory=BuildConfig)
    catalog: CatalogConfig = field(default_factory=CatalogConfig)
    convert: ConvertConfig = field(default_factory=ConvertConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    scan: ScanConfig = field(default_factory=ScanConfig)

    def validate_build(self) -> None:
        """Checks that need the whole config; a build refuses to start otherwise."""
        b = self.build
        for name in ("input", "work_dir", "db"):
            if not getattr(self, name):
                raise ConfigError(f"'{name}' is required (flag --{name.replace('_', '-')} or config key '{name}')")
        if b.chunks < 1:
            raise ConfigError(f"build.chunks must be >= 1, got {b.chunks}")
        if not b.ngrams or any(n < 1 for n in b.ngrams):
            raise ConfigError(f"build.ngrams must be positive integers, got {b.ngrams}")
        unknown = [s for s in b.steps if s not in STEPS]
        if unknown:
            raise ConfigError(f"unknown step {unknown[0]!r}; steps are {', '.join(STEPS)}")
        if self.vocab_size < 2:
            raise ConfigError(f"vocab_size must be >= 2, got {self.vocab_size}")
        if b.token_dtype not in ("auto", "uint16", "uint32"):
            raise ConfigError(f"build.token_dtype must be auto, uint16 or uint32, got {b.token_dtype!r}")
        if b.aggregate_method not in ("auto", "numpy", "duckdb"):
            raise ConfigError(f"build.aggregate_method must be auto, numpy or duckdb, got {b.aggregate_method!r}")
        if not 0 < b.duckdb_memory_fraction <= 1:
            raise ConfigError("build.duckdb_memory_fraction must be in (0, 1]")
        if b.count_engine not in ("duckdb", "numpy"):
            raise ConfigError(f"build.count_engine must be duckdb or numpy, got {b.count_engine!r}")
        if not 1 <= b.explode_task_tokens < 1 << 32:  # partial counts are stored as uint32
            raise ConfigError(f"build.explode_task_tokens must be in [1, 2**32), got {b.explode_task_tokens}")
        from .counting import check_key_fits, key_bits

        for n in b.ngrams:
            try:
                check_key_fits(n, key_bits(self.vocab_size))
            except ValueError as exc:
                raise ConfigError(str(exc)) from None


def _is_optional(tp) -> tuple[bool, Any]:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return True, args[0]
    return False, tp


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
    if inner is int:
        if isinstance(value, bool):
            raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
    if inner is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"config key '{key}' must be a number, got {value!r}")
    if inner is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"config key '{key}' must be a string, got {value!r}")
    raise TypeError(f"unsupported config type {tp!r} for {key}")  # a bug, not a user error


def _apply(obj: Any, data: dict, prefix: str = "") -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{prefix.rstrip('.') or '<root>'}' must be a mapping")
    hints = typing.get_type_hints(type(obj))
    fields = {f.name for f in dataclasses.fields(obj)}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"unknown config key '{path}' (known here: {known})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _apply(current, value or {}, prefix=f"{path}.")
        else:
            setattr(obj, key, _coerce(value, hints[key], path))


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults, then the YAML file at ``path``, then ``overrides`` (dotted keys)."""
    cfg = Config()
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {p} is not valid YAML: {str(exc).splitlines()[0]}") from None
        _apply(cfg, data)
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        *parents, leaf = dotted.split(".")
        nested: dict = {leaf: value}
        for parent in reversed(parents):
            nested = {parent: nested}
        _apply(cfg, nested)
    return cfg


def config_as_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)
