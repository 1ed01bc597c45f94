"""What travels to the tasks: the source shard to convert and the settings to convert it with.

Both are small frozen dataclasses, so they go into the task graph as they are.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field


@dataclass(frozen=True)
class SourceShard:
    """One unit of work: a source file, or shard ``hf_index`` of ``hf_shards`` of a hub dataset."""

    index: int  # position among all source shards (before --begin/--end-shard)
    name: str  # the sub-dataset's folder name under out/
    kind: str  # jsonl | txt | parquet | hf
    url: str  # file URL or dataset id
    hf_shards: int = 0

    @property
    def source(self) -> str:
        """What the finished marker records: a rerun redoes the shard if this changes."""
        return f"{self.url}#{self.index}/{self.hf_shards}" if self.kind == "hf" else self.url


@dataclass(frozen=True)
class ConvertSettings:
    """Everything a task needs; small, so it travels in the task graph."""

    out: str
    tokenizer: str
    seq_len: int
    wrap: bool
    bos_id: int | None
    eos_id: int | None
    token_dtype: str
    text_field: str
    txt_mode: str
    compression: str | None
    size_limit: int
    max_samples_per_shard: int | None
    invalid_utf8: str
    hf_split: str
    hf_config: str | None
    identity: tuple[tuple[str, str], ...] = field(default=())

    @property
    def identity_dict(self) -> dict:
        """The settings the samples depend on, as JSON values (recorded in markers and the sidecar)."""
        return {k: json.loads(v) for k, v in self.identity}
