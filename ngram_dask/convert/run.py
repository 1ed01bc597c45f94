"""Stage 0, convert: raw text -> tokenized MDS, one Dask task per source shard (the client).

The client finds the source shards, refuses an ``out`` converted with other
settings, clears the staging folders of tasks that died, runs
``shard.convert_shard`` for each shard and writes the two root files::

    out/ngram_dask.json                                  # token_dtype, tokenizer, seq_len, ... (first)
    out/index.json                                       # all finished sub-datasets, merged (last)

The root index is written at the end, from the finished shards only.
"""

from __future__ import annotations

import json
import os
import posixpath
import shutil
from dataclasses import dataclass
from typing import Callable

import fsspec

from ngram_dask.config import Config, parse_size
from ngram_dask.convert.settings import ConvertSettings, SourceShard
from ngram_dask.convert.shard import MARKER, STAGING, convert_shard
from ngram_dask.convert.sources import discover_shards
from ngram_dask.errors import ConfigError
from ngram_dask.mds import SIDECAR
from ngram_dask.runtime import DiskFull, Manifest, Stage, StageReport, Step, run_stage
from ngram_dask.storage import (
    atomic_write_bytes,
    get_fs,
    is_local,
    join,
    local_path,
    redact_url,
)

Announce = Callable[[str], None]


@dataclass
class ConvertReport(StageReport):
    out: str = ""  # the MDS root written
    shards_total: int = 0  # in the source
    shards_run: int = 0  # in --begin/--end-shard
    converted: int = 0
    documents: int = 0
    tokens: int = 0
    samples: int = 0
    bytes: int = 0
    invalid_utf8: int = 0
    first_invalid: str | None = None
    new_tokens: int = 0  # tokenized by this run (for the rate)
    indexed_shards: int = 0  # sub-datasets in the root index.json
    token_dtype: str = "uint16"
    already_done: int = 0  # shards of this run's range whose marker was found (an earlier run's, or a retry's)


def settings_from(cfg: Config, tokenizer) -> ConvertSettings:
    c = cfg.convert
    compression = c.compression or None
    size_limit = parse_size(c.size_limit)

    bos_id = _special_id(tokenizer, c.bos_token, "bos")
    eos_id = _special_id(tokenizer, c.eos_token, "eos")
    vocab = len(tokenizer)
    token_dtype = "uint16" if vocab <= 1 << 16 else "uint32"
    identity = {  # what the samples depend on: a rerun with other values must not mix with these
        "tokenizer": cfg.tokenizer,
        "vocab_size": vocab,
        "token_dtype": token_dtype,
        "seq_len": c.seq_len,
        "wrap": c.wrap,
        "bos_id": bos_id,
        "eos_id": eos_id,
        "text_field": c.text_field,
        "txt_mode": c.txt_mode,
        "max_samples_per_shard": c.max_samples_per_shard,
        "invalid_utf8": c.invalid_utf8,
        "hf_split": c.hf_split,
        "hf_config": c.hf_config,
    }
    return ConvertSettings(
        out=c.out.rstrip("/") if c.out not in ("/",) else c.out, tokenizer=cfg.tokenizer,
        seq_len=c.seq_len, wrap=c.wrap, bos_id=bos_id, eos_id=eos_id, token_dtype=token_dtype,
        text_field=c.text_field, txt_mode=c.txt_mode, compression=compression, size_limit=size_limit,
        max_samples_per_shard=c.max_samples_per_shard, invalid_utf8=c.invalid_utf8,
        hf_split=c.hf_split, hf_config=c.hf_config,
        identity=tuple(sorted((k, json.dumps(v)) for k, v in identity.items())),
    )


def _special_id(tokenizer, configured: str | None, which: str) -> int | None:
    """The separator id: the configured token ('' = none), else the tokenizer's bos/eos token."""
    text = getattr(tokenizer, f"{which}_token") if configured is None else configured
    if not text:
        return None
    token_id = tokenizer.convert_tokens_to_ids(text)
    if token_id is None or (token_id == tokenizer.unk_token_id and text != tokenizer.unk_token):
        raise ConfigError(f"the tokenizer has no token {text!r} to use as {which.upper()} "
                          f"(set convert.{which}_token, or '' for none)")
    return int(token_id)


def sidecar_manifest(s: ConvertSettings, source: str) -> Manifest:
    """out/ngram_dask.json: the settings the out folder's samples were made with. It binds
    once a source shard is finished there; the build reads its token_dtype."""
    fs, path = get_fs(s.out)
    return Manifest(
        join(s.out, SIDECAR), {**s.identity_dict, "source": source}, f"{s.out}",
        refusal=lambda key, old, new: (f"{s.out} holds a conversion with {key} = {old!r}, not {new!r}; "
                                       "use a fresh --out (or delete this one)"),
        binds=lambda: bool(fs.glob(posixpath.join(path, "*", MARKER))),
        foreign=lambda: (f"{s.out} holds an MDS dataset that `ngram-dask convert` did not write; use a fresh --out"
                         if fs.exists(posixpath.join(path, "index.json")) else None))


def _remove_staging_leftovers(out: str) -> int:
    """Staging folders of tasks that died (a killed worker or client) are never finished."""
    if not is_local(out):
        return 0
    root = local_path(out)
    stale = [e for e in os.listdir(root) if e.startswith(STAGING)] if os.path.isdir(root) else []
    for entry in stale:
        shutil.rmtree(os.path.join(root, entry), ignore_errors=True)
    return len(stale)


def write_root_index(s: ConvertSettings, finished: list[SourceShard]) -> int:
    """Merge the index.json of every finished sub-dataset into out/index.json (source order).

    Basenames get their sub-folder prefixed, as ``streaming.base.util.merge_index``
    does, so ``StreamingDataset(local=out)`` and the build's reader see one dataset.
    Returns the number of sub-datasets listed.
    """
    merged = []
    for shard in finished:
        with fsspec.open(join(s.out, shard.name, "index.json"), "rb") as f:
            index = json.load(f)
        for entry in index["shards"]:
            for key in ("raw_data", "zip_data", "raw_meta", "zip_meta"):
                if entry.get(key):
                    entry[key]["basename"] = posixpath.join(shard.name, entry[key]["basename"])
            merged.append(entry)
    atomic_write_bytes(join(s.out, "index.json"), json.dumps({"version": 2, "shards": merged}).encode())
    return len(finished)


def run_convert(cfg: Config, announce: Announce = print) -> ConvertReport:
    return run_stage(cfg, "convert", lambda info: declare_convert(cfg, announce), announce)


def declare_convert(cfg: Config, announce: Announce) -> Stage:
    """One step over every source shard: this run converts those of --begin/--end-shard;
    the root index lists every shard finished, by this run or an earlier one."""
    from ngram_dask.tokenizer import load_tokenizer

    c = cfg.convert
    shards = discover_shards(c)
    if c.begin_shard >= len(shards):
        raise ConfigError(f"--begin-shard {c.begin_shard}: the source has {len(shards)} shard(s) "
                          f"(0..{len(shards) - 1})")
    todo = shards[c.begin_shard:c.end_shard]
    in_range = {shard.name for shard in todo}
    tokenizer = load_tokenizer(cfg.tokenizer)  # fail here, before any work, when it cannot be had
    s = settings_from(cfg, tokenizer)
    report = ConvertReport(shards_total=len(shards), shards_run=len(todo), token_dtype=s.token_dtype, out=s.out)
    fs, out_path = get_fs(s.out)
    fs.makedirs(out_path, exist_ok=True)
    sep = f"BOS {s.bos_id}, EOS {s.eos_id}"
    announce(f"convert: {len(todo)} of {len(shards)} source shard(s) -> {redact_url(s.out)} "
             f"({cfg.tokenizer}, {s.token_dtype}, seq_len {s.seq_len}{'' if s.wrap else ', no wrap'}, {sep})")
    done_here = [0]

    def on_result(st: dict, ctx) -> None:
        if st["name"] not in in_range:
            return  # finished by an earlier run outside this range: only indexed
        _tally(report, st)
        done_here[0] += 1
        what = "already done" if st["skipped"] else (
            f"{st['documents']:,} docs, {st['tokens']:,} tokens, {st['samples']:,} samples, "
            f"{st['bytes'] / 1e6:.2f} MB, {st['seconds']:.1f} s")
        bad = f", {st['invalid_utf8']} invalid UTF-8 skipped" if st.get("invalid_utf8") else ""
        announce(f"  [{done_here[0]}/{len(todo)}] {st['name']}: {what}{bad}")

    def finish(stats: list[dict], ctx) -> None:
        _remove_staging_leftovers(s.out)
        finished = {st["name"] for st in stats}
        report.indexed_shards = write_root_index(s, [shard for shard in shards if shard.name in finished])

    def steps(ctx):
        _remove_staging_leftovers(s.out)
        yield Step("convert", shards, convert_shard, kwargs={"s": s}, counts="shards",
                   select=lambda shard: shard.name in in_range,
                   disk=DiskFull(f"the output {redact_url(s.out)}"), on_result=on_result, finish=finish)

    return Stage(steps, report, manifest=sidecar_manifest(s, redact_url(c.source)))


def _tally(report: ConvertReport, st: dict) -> None:
    if st["skipped"]:
        report.already_done += 1
    else:
        report.converted += 1
        report.new_tokens += st["tokens"]
    report.documents += st["documents"]
    report.tokens += st["tokens"]
    report.samples += st["samples"]
    report.bytes += st["bytes"]
    report.invalid_utf8 += st.get("invalid_utf8", 0)
    report.first_invalid = report.first_invalid or st.get("first_invalid")


def summary_lines(report: ConvertReport) -> list[str]:
    out = report.out
    seconds = report.seconds.get("convert", 0.0)
    rate = report.new_tokens / seconds if seconds else 0.0
    lines = [
        "", "summary:",
        f"  shards {report.shards_run} ({report.converted} converted, {report.already_done} already done), "
        f"documents {report.documents:,}, tokens {report.tokens:,}, samples {report.samples:,}",
        f"  written {report.bytes / 1e6:,.2f} MB ({report.token_dtype} ids) in {seconds:.1f} s, "
        f"{rate / 1e6:.2f}M tokens/s",
    ]
    if report.invalid_utf8:
        lines.append(f"  skipped {report.invalid_utf8:,} document(s) that are not valid UTF-8 "
                     f"(first: {report.first_invalid})")
    lines.append(f"  {out}/index.json lists {report.indexed_shards} of {report.shards_total} source shard(s)")
    if report.indexed_shards < report.shards_total:
        lines.append("  convert the rest (--begin-shard/--end-shard) before building on the full corpus")
    return lines
