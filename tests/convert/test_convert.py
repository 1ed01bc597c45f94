"""`ngram-dask convert`: text -> tokenized MDS on Dask, checked against per-document tokenization.

The expected samples are built here the slow, obvious way: each document encoded on
its own, wrapped in the separator ids with Python lists, cut with list slicing.
Conversions attach to the session LocalCluster (or to killable dask processes).
"""

from __future__ import annotations

import gzip
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ngram_dask.config import load_config
from ngram_dask.convert.run import run_convert, summary_lines
from ngram_dask.convert.samples import SampleCutter, encode_documents
from ngram_dask.errors import UserError
from ngram_dask.mds import list_shards, read_shard, read_sidecar, resolve_token_dtype

from helpers import REPO, oracle, run_cli

WORDS = ("the quick brown fox jumps over lazy dog telomeres protect chromosome ends sodium chloride "
         "common table salt def main return import os sys café naïve 日本語 テキスト émigré 🙂 ∑ x² "
         "Hello, world! 12345 3.14159 (parenthesis) [brackets] {braces} tab\there new\nline").split(" ")


def make_docs(seed: int, n: int, max_words: int = 60) -> list[str]:
    """Deterministic documents of varied length; one empty document, some multi-line."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        k = 0 if i == 3 else rng.randint(1, max_words)
        docs.append(" ".join(rng.choice(WORDS) for _ in range(k)))
    return docs


def load_tok(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def expected_samples(tok, shards: list[list[str]], seq_len: int, wrap: bool = True,
                     limit: int | None = None) -> list[list[int]]:
    """The reference: per-document encoding, BOS/EOS ids around each, list slicing."""
    bos, eos = tok.bos_token_id, tok.eos_token_id
    out = []
    for docs in shards:
        docs_ids = [[bos] + tok.encode(d, add_special_tokens=False) + [eos] for d in docs]
        if wrap:
            stream = [t for ids in docs_ids for t in ids]
            samples = [stream[i:i + seq_len] for i in range(0, len(stream), seq_len)]
        else:
            samples = [ids[i:i + seq_len] for ids in docs_ids for i in range(0, len(ids), seq_len)]
        out += samples[:limit]
    return out


def read_samples(out) -> list[list[int]]:
    """Every sample through the build's reader (root index.json, sub-dataset basenames)."""
    dtype = resolve_token_dtype("auto", str(out))
    samples = []
    for ref in list_shards(str(out)):
        st = read_shard(ref, dtype)
        samples += [st.tokens[a:b].tolist() for a, b in zip(st.offsets[:-1], st.offsets[1:])]
    return samples


def streaming_samples(out, dtype: str = "<u2") -> list[list[int]]:
    """Every sample through MosaicML's own StreamingDataset, by index (the dataset's order)."""
    from streaming import StreamingDataset

    ds = StreamingDataset(local=str(out), shuffle=False, batch_size=1)
    try:
        return [np.frombuffer(ds[i]["tokens"], dtype).tolist() for i in range(ds.num_samples)]
    finally:
        del ds


def convert(source, out, tokenizer: str, scheduler: str, **keys):
    lines: list[str] = []
    cfg = load_config(None, {"convert.source": str(source), "convert.out": str(out), "tokenizer": tokenizer,
                             "cluster.scheduler": scheduler, **keys})
    report = run_convert(cfg, announce=lines.append)
    lines += summary_lines(report)
    return report, lines


def write_jsonl(path: Path, docs: list[str], field: str = "text", opener=open) -> Path:
    with opener(path, "wt", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({field: d, "meta": len(d)}, ensure_ascii=False) + "\n")
    return path


def finished_markers(out: Path) -> list[Path]:
    return sorted(out.glob("*/finished"))


# ---------------------------------------------------------------------------- pure parts


@pytest.mark.parametrize("wrap", [True, False])
def test_sample_cutter_matches_list_slicing(wrap):
    """Batches of documents through the vectorised cutter = one list cut of the whole shard."""
    rng = np.random.default_rng(1)
    for seq_len in (1, 3, 7, 64):
        docs = [rng.integers(1, 500, rng.integers(0, 40)).tolist() for _ in range(50)]
        cutter = SampleCutter(seq_len, wrap, np.dtype("<u2"))
        got = []
        for lo in range(0, 50, 9):  # uneven batches: the carry crosses batch boundaries
            batch = [[0] + d + [0] for d in docs[lo:lo + 9]]
            tokens = np.array([t for d in batch for t in d], np.uint16)
            offsets = np.concatenate(([0], np.cumsum([len(d) for d in batch])))
            stream, bounds = cutter.cut(tokens, offsets)
            got += [stream[a:b].tolist() for a, b in zip(bounds[:-1], bounds[1:])]
        rest = cutter.finish()
        if len(rest):
            got.append(rest.tolist())
        whole = [[0] + d + [0] for d in docs]
        if wrap:
            flat = [t for d in whole for t in d]
            want = [flat[i:i + seq_len] for i in range(0, len(flat), seq_len)]
        else:
            want = [d[i:i + seq_len] for d in whole for i in range(0, len(d), seq_len)]
        assert got == want, seq_len


def test_batch_encoding_equals_per_document(neox_tokenizer_path):
    tok = load_tok(neox_tokenizer_path)
    docs = make_docs(5, 40)
    tokens, offsets = encode_documents(tok, docs, 0, 0, np.dtype("<u2"))
    want = [[0] + tok.encode(d, add_special_tokens=False) + [0] for d in docs]
    assert [tokens[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:])] == want


# ---------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("which", ["neox", "bpe"])
def test_round_trip_jsonl_glob(tmp_path, which, neox_tokenizer_path, bpe_tokenizer_path, local_cluster):
    tokenizer = neox_tokenizer_path if which == "neox" else bpe_tokenizer_path
    tok = load_tok(tokenizer)
    src = tmp_path / "src"
    src.mkdir()
    shards = [make_docs(seed, 30 + 7 * seed) for seed in range(3)]
    for i, docs in enumerate(shards):
        write_jsonl(src / f"part-{i}.jsonl", docs)
    (src / "notes.md").write_text("not a source file: the glob does not match it")
    out = tmp_path / "mds"
    report, lines = convert(src / "*.jsonl", out, tokenizer, local_cluster, **{"convert.seq_len": 32})

    want = expected_samples(tok, shards, 32)
    assert read_samples(out) == want
    assert streaming_samples(out) == want
    # Decoding everything gives back the documents, each between its separators.
    flat = [t for s in read_samples(out) for t in s]
    sep = tok.bos_token
    assert tok.decode(flat, clean_up_tokenization_spaces=False) == "".join(
        f"{sep}{d}{tok.eos_token}" for docs in shards for d in docs)
    # One sub-dataset per input file, each with its marker; the report adds up.
    assert [p.parent.name for p in finished_markers(out)] == [
        "00000-part-0.jsonl", "00001-part-1.jsonl", "00002-part-2.jsonl"]
    assert (report.converted, report.already_done, report.shards_total) == (3, 0, 3)
    assert report.documents == sum(map(len, shards))
    assert report.samples == len(want) and report.tokens == sum(map(len, want))
    assert report.bytes == sum(p.stat().st_size for p in out.glob("*/shard.*.mds.zstd"))
    assert any("tokens/s" in line for line in lines)
    side = read_sidecar(str(out))
    assert (side["token_dtype"], side["tokenizer"], side["seq_len"]) == ("uint16", tokenizer, 32)
    assert side["vocab_size"] == len(tok)

    # A rerun does nothing and leaves every file as it was.
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.name != "index.json"}
    report2, lines2 = convert(src / "*.jsonl", out, tokenizer, local_cluster, **{"convert.seq_len": 32})
    assert (report2.converted, report2.already_done, report2.samples) == (0, 3, len(want))
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.name != "index.json"} == before
    assert read_samples(out) == want


def test_no_wrap_max_samples_and_shard_range(tmp_path, bpe_tokenizer_path, local_cluster):
    tok = load_tok(bpe_tokenizer_path)
    shards = [make_docs(10 + i, 12, max_words=30) for i in range(4)]
    for i, docs in enumerate(shards):
        write_jsonl(tmp_path / f"s{i}.jsonl", docs)
    out = tmp_path / "nowrap"
    convert(tmp_path / "s*.jsonl", out, bpe_tokenizer_path, local_cluster,
            **{"convert.seq_len": 16, "convert.wrap": False})
    assert read_samples(out) == expected_samples(tok, shards, 16, wrap=False)

    # --max-samples-per-shard keeps each shard's first samples; shards 1..2 only, then the rest.
    out = tmp_path / "limited"
    keys = {"convert.seq_len": 16, "convert.max_samples_per_shard": 5}
    report, lines = convert(tmp_path / "s*.jsonl", out, bpe_tokenizer_path, local_cluster,
                            **keys, **{"convert.begin_shard": 1, "convert.end_shard": 3})
    assert (report.shards_run, report.indexed_shards) == (2, 2)
    assert any("lists 2 of 4" in line for line in lines)
    assert read_samples(out) == expected_samples(tok, shards[1:3], 16, limit=5)
    report, _ = convert(tmp_path / "s*.jsonl", out, bpe_tokenizer_path, local_cluster, **keys)
    assert (report.converted, report.already_done, report.indexed_shards) == (2, 2, 4)
    assert read_samples(out) == expected_samples(tok, shards, 16, limit=5)


def _write_source(kind: str, folder: Path, shards: list[list[str]]) -> tuple[str, dict, list[list[str]]]:
    """Write ``shards`` as source files of ``kind``; returns (source, config keys, documents per shard)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir()
    if kind == "jsonl.gz":
        for i, docs in enumerate(shards):
            write_jsonl(folder / f"{i}.jsonl.gz", docs, opener=gzip.open)
        return str(folder / "*.jsonl.gz"), {}, shards
    if kind == "jsonl.zst":
        zstandard = pytest.importorskip("zstandard")
        for i, docs in enumerate(shards):
            data = "".join(json.dumps({"text": d}) + "\n" for d in docs).encode()
            (folder / f"{i}.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(data))
        return str(folder / "*.jsonl.zst"), {}, shards
    if kind == "txt-file":  # one document per file: each "shard" here is one file
        docs = [d for d in shards[0] if d] + ["last file\n\nwith blank lines\n"]
        for i, d in enumerate(docs):
            (folder / f"{i:02d}.txt").write_text(d, encoding="utf-8")
        return str(folder / "*.txt"), {"convert.txt_mode": "file"}, [[d] for d in docs]
    if kind == "txt-line":
        per_file = []
        for i, docs in enumerate(shards):
            lines = [d.replace("\n", " ") for d in docs if d.strip()]
            (folder / f"{i}.txt").write_text("\n\n".join(lines) + "\n", encoding="utf-8")  # blank lines skipped
            per_file.append(lines)
        return str(folder), {"convert.txt_mode": "line"}, per_file  # a folder: every source file in it
    if kind == "parquet":
        for i, docs in enumerate(shards):
            pq.write_table(pa.table({"id": list(range(len(docs))), "content": docs}), folder / f"{i}.parquet",
                           row_group_size=7)
        return str(folder / "*.parquet"), {"convert.text_field": "content"}, shards
    if kind == "hf-folder":  # the hub path (load_dataset(streaming=True), one task per its shards), offline
        for i, docs in enumerate(shards):
            write_jsonl(folder / f"train-{i}.jsonl", docs)
        return f"hf:{folder}", {}, shards
    raise AssertionError(kind)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["jsonl.gz", "jsonl.zst", "txt-file", "txt-line", "parquet", "hf-folder"])
def test_every_source_kind(tmp_path, kind, bpe_tokenizer_path, local_cluster):
    tok = load_tok(bpe_tokenizer_path)
    source, keys, per_shard = _write_source(kind, tmp_path / "src", [make_docs(20 + i, 15) for i in range(3)])
    out = tmp_path / "mds"
    report, _ = convert(source, out, bpe_tokenizer_path, local_cluster, **{"convert.seq_len": 24, **keys})
    want = expected_samples(tok, per_shard, 24)
    assert read_samples(out) == want
    assert report.shards_total == len(per_shard)
    assert report.documents == sum(map(len, per_shard))
    if kind == "hf-folder":
        assert [p.parent.name for p in finished_markers(out)] == [
            f"shard-{i:05d}-of-00003" for i in range(3)]


def test_uint32_when_the_vocabulary_needs_it(tmp_path, local_cluster):
    """A 70,000-token vocabulary: ids are stored as uint32 and the build's reader knows it."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<|endoftext|>": 0, "[UNK]": 1, **{f"w{i}": i for i in range(2, 70000)}}
    wl = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    wl.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=wl, bos_token="<|endoftext|>",
                                   eos_token="<|endoftext|>", unk_token="[UNK]")
    fast.save_pretrained(tmp_path / "wordlevel")
    rng = random.Random(3)
    docs = [" ".join(f"w{rng.randrange(2, 70000)}" for _ in range(rng.randint(1, 20))) for _ in range(40)]
    write_jsonl(tmp_path / "big.jsonl", docs)
    out = tmp_path / "mds"
    convert(tmp_path / "big.jsonl", out, str(tmp_path / "wordlevel"), local_cluster, **{"convert.seq_len": 10})
    assert read_sidecar(str(out))["token_dtype"] == "uint32"
    want = expected_samples(fast, [docs], 10)
    assert max(max(s) for s in want) >= 1 << 16
    assert read_samples(out) == want
    assert streaming_samples(out, "<u4") == want


# ---------------------------------------------------------------------------- faults


def _descendants(pid: int) -> list[int]:
    kids = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids += [int(k) for k in f.read().split()]
    except FileNotFoundError:
        return []
    return kids + [g for k in kids for g in _descendants(k)]


def _wait_for_first_marker(out: Path, running, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not finished_markers(out):
        assert running(), "convert ended before any shard finished"
        assert time.time() < deadline, "no shard finished in time"
        time.sleep(0.01)


def _warm_up(address: str) -> None:
    """Workers import ``streaming`` (and torch) on their first task: do it before the clock starts."""
    from distributed import Client

    def load():
        import streaming  # noqa: F401

    with Client(address, timeout="60s") as c:
        c.run(load)


@pytest.mark.slow
@pytest.mark.faults
def test_killed_worker_and_killed_client_then_rerun(tmp_path, bpe_tokenizer_path, local_cluster,
                                                    start_dask_processes):
    """SIGKILL a worker (its process and nanny) mid-run, and the client mid-run: the output
    after a rerun is the uninterrupted run's, sample for sample, with nothing half-written."""
    import threading

    src = tmp_path / "src"
    src.mkdir()
    for i in range(16):  # many shards of real size, so that both kills land mid-run
        write_jsonl(src / f"p{i:02d}.jsonl", make_docs(100 + i, 150, max_words=100))
    keys = {"convert.seq_len": 64}
    ref = tmp_path / "ref"
    convert(src / "*.jsonl", ref, bpe_tokenizer_path, local_cluster, **keys)
    want = read_samples(ref)
    names = [p.parent.name for p in finished_markers(ref)]

    procs = start_dask_processes(workers=2, nthreads=1)
    _warm_up(procs.address)
    out = tmp_path / "worker-killed"
    result: dict = {}

    def run_in_thread():
        try:
            result["report"] = convert(src / "*.jsonl", out, bpe_tokenizer_path, procs.address, **keys)[0]
        except BaseException as exc:  # re-raised below, in the test's thread
            result["error"] = exc

    thread = threading.Thread(target=run_in_thread)
    thread.start()
    _wait_for_first_marker(out, thread.is_alive)
    victim = procs.workers[0]
    for pid in [*_descendants(victim.pid), victim.pid]:
        os.kill(pid, signal.SIGKILL)
    finished_at_kill = len(finished_markers(out))
    thread.join(300)
    if "error" in result:
        raise result["error"]
    # A shard whose result died with the worker is re-run by Dask and finds its marker:
    # skipped. Only shards finished before the kill can be (a busy client may not have
    # gathered several of the victim's results yet); every other shard is converted once.
    assert result["report"].converted + result["report"].already_done == 16
    assert result["report"].already_done <= finished_at_kill < 16
    assert [p.parent.name for p in finished_markers(out)] == names
    assert read_samples(out) == want

    out = tmp_path / "client-killed"
    args = ["convert", "--source", str(src / "*.jsonl"), "--out", str(out), "--tokenizer", bpe_tokenizer_path,
            "--seq-len", "64", "--scheduler", procs.address]
    with open(tmp_path / "client.log", "w") as log:
        client = subprocess.Popen([sys.executable, "-m", "ngram_dask.cli", *args], cwd=REPO,
                                  stdout=log, stderr=subprocess.STDOUT)
    _wait_for_first_marker(out, lambda: client.poll() is None)
    client.send_signal(signal.SIGKILL)
    client.wait(30)
    time.sleep(1.0)  # the task running when the client died may still finish: that is fine
    assert 1 <= len(finished_markers(out)) < 16
    assert not (out / "index.json").exists()  # nothing claims to be a complete dataset
    report, lines = convert(src / "*.jsonl", out, bpe_tokenizer_path, procs.address, **keys)
    assert report.already_done >= 1 and report.converted >= 1 and report.converted + report.already_done == 16
    assert any("already done" in line for line in lines)
    assert [p.parent.name for p in finished_markers(out)] == names
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging leftovers
    assert read_samples(out) == want
    assert streaming_samples(out) == want


# ---------------------------------------------------------------------------- convert -> build


def test_convert_then_build_equals_oracle(tmp_path, bpe_tokenizer_path, local_cluster):
    from ngram_dask.ngrams.pipeline import run_build

    from helpers import db_rows

    tok = load_tok(bpe_tokenizer_path)
    shards = [make_docs(50 + i, 25) for i in range(3)]
    for i, docs in enumerate(shards):
        write_jsonl(tmp_path / f"c{i}.jsonl", docs)
    out = tmp_path / "mds"
    convert(tmp_path / "c*.jsonl", out, bpe_tokenizer_path, local_cluster, **{"convert.seq_len": 40})
    samples = expected_samples(tok, shards, 40)
    cfg = load_config(None, {"input": str(out), "work_dir": str(tmp_path / "work"),
                             "db": str(tmp_path / "c.duckdb"), "tokenizer": bpe_tokenizer_path,
                             "vocab_size": 512, "build.chunks": 4, "build.steps": "explode,aggregate,load",
                             "cluster.scheduler": local_cluster})
    run_build(cfg, announce=lambda m: None)
    for n, table in ((2, "bigrams"), (3, "trigrams")):
        rows = db_rows(tmp_path / "c.duckdb", f"SELECT * FROM {table}")
        assert {tuple(r[:-1]): r[-1] for r in rows} == dict(oracle(samples, n))


# ---------------------------------------------------------------------------- bad input


def _one_line_error(res) -> str:
    assert res.returncode == 2, (res.stdout[-2000:], res.stderr[-2000:])
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ngram-dask: error: "), res.stderr
    return lines[0]


def _assert_nothing_finished(out: Path) -> None:
    assert not finished_markers(out)
    assert not (out / "index.json").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")] if out.exists() else True


@pytest.mark.slow  # a CLI process per bad input
def test_bad_input_cli_one_line(tmp_path, neox_tokenizer_path, bpe_tokenizer_path, local_cluster):
    out = tmp_path / "out"
    base = ["--out", str(out), "--scheduler", local_cluster]

    (tmp_path / "empty.jsonl").write_bytes(b"")
    line = _one_line_error(run_cli("convert", "--source", str(tmp_path / "empty.jsonl"),
                                   "--tokenizer", bpe_tokenizer_path, *base))
    assert "empty" in line
    _assert_nothing_finished(out)

    write_jsonl(tmp_path / "field.jsonl", ["a", "b"], field="body")
    line = _one_line_error(run_cli("convert", "--source", str(tmp_path / "field.jsonl"),
                                   "--tokenizer", bpe_tokenizer_path, *base))
    assert "no text field 'text'" in line and "body" in line and "field.jsonl:1" in line
    _assert_nothing_finished(out)

    (tmp_path / "bad.txt").write_bytes(b"fine line\nbad \xff\xfe line\n")
    line = _one_line_error(run_cli("convert", "--source", str(tmp_path / "bad.txt"), "--txt-mode", "line",
                                   "--invalid-utf8", "error", "--tokenizer", bpe_tokenizer_path, *base))
    assert "bad.txt:2" in line and "UTF-8" in line
    _assert_nothing_finished(out)

    line = _one_line_error(run_cli("convert", "--source", str(tmp_path / "field.jsonl"),
                                   "--tokenizer", "EleutherAI/no-such-tokenizer", *base))
    assert "cannot load tokenizer 'EleutherAI/no-such-tokenizer'" in line

    line = _one_line_error(run_cli("convert", "--source", "EleutherAI/the_pile_deduplicated",
                                   "--tokenizer", neox_tokenizer_path, *base))
    assert "cannot load dataset 'EleutherAI/the_pile_deduplicated'" in line
    _assert_nothing_finished(out)


def _raises_one_line(match: str, *args, **keys) -> None:
    with pytest.raises(UserError, match=match) as info:
        convert(*args, **keys)
    assert "\n" not in str(info.value)


def test_bad_input_in_process(tmp_path, bpe_tokenizer_path, local_cluster):
    import pyarrow as pa
    import pyarrow.parquet as pq

    tok = bpe_tokenizer_path
    out = tmp_path / "out"
    (tmp_path / "broken.jsonl").write_text('{"text": "ok"}\n{"text": "cut\n')
    _raises_one_line(r"broken.jsonl:2: not valid JSON", tmp_path / "broken.jsonl", out, tok, local_cluster)
    (tmp_path / "blank.jsonl").write_text("\n\n")
    _raises_one_line(r"holds no documents", tmp_path / "blank.jsonl", out, tok, local_cluster)
    pq.write_table(pa.table({"body": ["x", "y"]}), tmp_path / "t.parquet")
    _raises_one_line(r"no text column 'text' \(columns: body\)", tmp_path / "t.parquet", out, tok, local_cluster)
    (tmp_path / "data.csv").write_text("text\nhello\n")
    _raises_one_line(r"unsupported source file type", tmp_path / "data.csv", out, tok, local_cluster)
    _raises_one_line(r"no source files match", tmp_path / "nothing-*.jsonl", out, tok, local_cluster)
    _assert_nothing_finished(out)
    _raises_one_line(r"--begin-shard 5", tmp_path / "blank.jsonl", out, tok, local_cluster,
                     **{"convert.begin_shard": 5})

    # An out folder converted with other settings is refused, not mixed.
    write_jsonl(tmp_path / "ok.jsonl", ["one doc", "two docs"])
    convert(tmp_path / "ok.jsonl", out, tok, local_cluster, **{"convert.seq_len": 8})
    _raises_one_line(r"holds a conversion with seq_len = 8, not 16", tmp_path / "ok.jsonl", out, tok,
                     local_cluster, **{"convert.seq_len": 16})


def test_invalid_utf8_documents_are_counted_and_skipped(tmp_path, bpe_tokenizer_path, local_cluster):
    tok = load_tok(bpe_tokenizer_path)
    good = ["first document", "second document", "third document"]
    with open(tmp_path / "a.jsonl", "wb") as f:
        f.write(json.dumps({"text": good[0]}).encode() + b"\n")
        f.write(b'{"text": "broken \xc3\x28 bytes"}\n')
        f.write(b'{"text": "lone surrogate \\ud800 escape"}\n')
        f.write(json.dumps({"text": good[1]}).encode() + b"\n")
    (tmp_path / "b.txt").write_bytes(b"third document\n\xff not utf-8\n")
    out = tmp_path / "mds"
    report, lines = convert(tmp_path, out, bpe_tokenizer_path, local_cluster,
                            **{"convert.seq_len": 8, "convert.txt_mode": "line"})
    assert report.invalid_utf8 == 3 and report.documents == 3
    assert any("skipped 3 document(s) that are not valid UTF-8 (first: " in line for line in lines)
    assert read_samples(out) == expected_samples(tok, [good[:2], good[2:]], 8)
