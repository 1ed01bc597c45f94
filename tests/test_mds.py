"""The torch-free MDS reader against datasets written by streaming's own MDSWriter."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from ngram_dask.errors import BadInputError
from ngram_dask.mds import list_shards, read_shard

from helpers import write_mds, write_mds_subfolders


def random_samples(seed: int, count: int = 30, max_len: int = 300, vocab: int = 65536):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, size=int(rng.integers(0, max_len))).tolist() for _ in range(count)]


def garbage_buffers():
    """A ``buffers`` for the readers, as ``runtime.thread_buffer`` but each array starting as garbage."""
    pool: dict[str, np.ndarray] = {}

    def buffers(name, size, dtype):
        if name not in pool or len(pool[name]) < size:
            pool[name] = np.full(size + 7, np.iinfo(dtype).max, dtype)
        return pool[name]

    return buffers


def read_all(root, **kw):
    out = []
    for ref in list_shards(str(root)):
        s = read_shard(ref, **kw)
        out += [s.tokens[a:b].tolist() for a, b in zip(s.offsets[:-1], s.offsets[1:])]
    return out


@pytest.mark.parametrize("compression", [None, "zstd:16", "gz", "br"])
def test_reads_every_sample_in_order(tmp_path, compression):
    """Also into reused buffers (a worker's, between units): the file and its raw bytes."""
    samples = random_samples(1)
    write_mds(tmp_path / "d", samples, compression=compression, size_limit=1 << 11, hashes=["sha1", "xxh64"])
    assert len(list_shards(str(tmp_path / "d"))) > 3
    assert read_all(tmp_path / "d", vocab_size=65536) == samples
    assert read_all(tmp_path / "d", vocab_size=65536, buffers=garbage_buffers()) == samples


@pytest.mark.parametrize("extra_columns", [False, True])
def test_samples_of_one_length(tmp_path, monkeypatch, extra_columns):
    """Equal samples at one stride (what `convert` writes) take the strided copy; one
    shorter sample in a shard, or other columns of varying length, the masked path."""
    rng = np.random.default_rng(9)
    samples = [rng.integers(0, 65536, 64).tolist() for _ in range(40)]
    samples[25] = samples[25][:10]
    write_mds(tmp_path / "d", samples, extra_columns=extra_columns, size_limit=1 << 10)
    assert len(list_shards(str(tmp_path / "d"))) > 3
    strided = []
    real = np.lib.stride_tricks.as_strided
    monkeypatch.setattr(np.lib.stride_tricks, "as_strided", lambda *a, **k: strided.append(1) or real(*a, **k))
    assert read_all(tmp_path / "d") == samples
    assert (len(strided) > 0) != extra_columns


def test_other_columns_around_tokens(tmp_path):
    samples = random_samples(2, count=20)
    write_mds(tmp_path / "d", samples, extra_columns=True, size_limit=1 << 12)
    assert read_all(tmp_path / "d") == samples


def test_uint32_tokens(tmp_path):
    samples = [[70000, 1, 2**32 - 1], [5]]
    write_mds(tmp_path / "d", samples, dtype="<u4")
    assert read_all(tmp_path / "d", token_dtype="uint32") == samples


def test_agrees_with_streaming_dataset(tmp_path):
    from streaming import StreamingDataset

    samples = random_samples(3, count=25)
    root = write_mds(tmp_path / "d", samples, size_limit=1 << 12)
    ds = StreamingDataset(local=str(root), shuffle=False, batch_size=1)
    theirs = [np.frombuffer(ds[i]["tokens"], "<u2").tolist() for i in range(len(ds))]
    assert read_all(root) == theirs == samples


def test_subfolders_with_merged_root_index(tmp_path):
    parts = [random_samples(s, count=7) for s in range(4)]
    root = write_mds_subfolders(tmp_path / "d", parts, size_limit=1 << 11)
    refs = list_shards(str(root))
    assert all("/" in r.basename for r in refs)
    assert read_all(root) == [s for p in parts for s in p]


def test_subfolders_without_root_index(tmp_path):
    parts = [random_samples(s, count=5) for s in range(3)]
    for i, p in enumerate(parts):
        write_mds(tmp_path / "d" / f"sub{i}", p)
    assert read_all(tmp_path / "d") == [s for p in parts for s in p]


def _one_shard(tmp_path, **kw):
    root = write_mds(tmp_path / "d", [[1, 2, 3], [4, 5], [6]], **kw)
    return root, list_shards(str(root))[0]


@pytest.mark.parametrize("buffers", [None, garbage_buffers])
def test_truncated_shard(tmp_path, buffers):
    root, ref = _one_shard(tmp_path, compression=None)
    path = root / ref.basename
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(BadInputError, match="truncated or corrupt"):
        read_shard(ref, buffers=buffers and buffers())


@pytest.mark.parametrize("buffers", [None, garbage_buffers])
@pytest.mark.parametrize("damage", ["truncate", "magic"])
def test_corrupt_compressed_shard(tmp_path, damage, buffers):
    # Without hashes in index.json a flipped byte inside zstd data can decode silently;
    # damage the frame itself (what a broken copy or upload does) and it must be caught.
    root, ref = _one_shard(tmp_path)
    path = root / ref.basename
    data = bytearray(path.read_bytes())
    data = data[: len(data) // 2] if damage == "truncate" else b"\x00\x01\x02\x03" + data[4:]
    path.write_bytes(bytes(data))
    with pytest.raises(BadInputError, match="cannot be decompressed"):
        read_shard(ref, verify_hashes=False, buffers=buffers and buffers())


@pytest.mark.parametrize("buffers", [None, garbage_buffers])
@pytest.mark.parametrize("off", [-1, 1])
def test_raw_bytes_other_than_index_json_says(tmp_path, buffers, off):
    root, ref = _one_shard(tmp_path)
    ref = dataclasses.replace(ref, raw_bytes=ref.raw_bytes + off)
    with pytest.raises(BadInputError, match=r"index\.json says"):
        read_shard(ref, verify_hashes=False, buffers=buffers and buffers())


@pytest.mark.parametrize("buffers", [None, garbage_buffers])
def test_hash_mismatch(tmp_path, buffers):
    root, ref = _one_shard(tmp_path, hashes=["sha1"])
    path = root / ref.basename
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(BadInputError, match="sha1 hash .* does not match"):
        read_shard(ref, buffers=buffers and buffers())


def test_odd_byte_length_names_the_sample(tmp_path):
    from streaming import MDSWriter

    with MDSWriter(out=str(tmp_path / "d"), columns={"tokens": "bytes"}) as w:
        w.write({"tokens": b"\x01\x00\x02\x00"})
        w.write({"tokens": b"\x01\x00\x02"})
    ref = list_shards(str(tmp_path / "d"))[0]
    with pytest.raises(BadInputError, match=r"sample 1: 'tokens' holds 3 bytes"):
        read_shard(ref)


def test_id_over_vocab_names_shard_and_sample(tmp_path):
    root = write_mds(tmp_path / "d", [[1, 2], [3, 50432, 4]])
    ref = list_shards(str(root))[0]
    with pytest.raises(BadInputError, match=r"sample 1: token id 50432 at position 1 is >= vocab_size 50432"):
        read_shard(ref, vocab_size=50432)


def test_missing_and_invalid_index(tmp_path):
    with pytest.raises(BadInputError, match="not found"):
        list_shards(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInputError, match="no index.json"):
        list_shards(str(tmp_path / "empty"))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "index.json").write_text("{not json")
    with pytest.raises(BadInputError, match="not valid JSON"):
        list_shards(str(tmp_path / "bad"))
    (tmp_path / "bad" / "index.json").write_text(json.dumps({"version": 2}))
    with pytest.raises(BadInputError, match="no 'shards' list"):
        list_shards(str(tmp_path / "bad"))


def test_missing_tokens_column(tmp_path):
    from streaming import MDSWriter

    with MDSWriter(out=str(tmp_path / "d"), columns={"text": "str"}) as w:
        w.write({"text": "hello"})
    with pytest.raises(BadInputError, match="no 'tokens' column"):
        list_shards(str(tmp_path / "d"))


def test_missing_shard_file(tmp_path):
    root, ref = _one_shard(tmp_path)
    (root / ref.basename).unlink()
    with pytest.raises(BadInputError, match="shard file missing"):
        read_shard(ref)


@pytest.mark.parametrize("extra_columns, dtype", [(False, "<u2"), (True, "<u2"), (False, "<u4")])
def test_a_group_of_shards_reads_as_their_samples_in_order(tmp_path, extra_columns, dtype):
    """``read_group`` decodes each shard straight into the group's one array (strided and
    masked shards alike): the same ids and sample boundaries as the shards read alone."""
    from ngram_dask.inputs import group_pieces, plan_input, read_group

    rng = np.random.default_rng(11)
    top = 2**32 - 1 if dtype == "<u4" else 65535
    samples = [rng.integers(0, top, 48, endpoint=True).tolist() for _ in range(60)]
    samples[7] = samples[7][:5]  # one shard takes the masked path
    samples[30] = []
    write_mds(tmp_path / "d", samples, extra_columns=extra_columns, size_limit=1 << 10, dtype=dtype)
    token_dtype = "uint32" if dtype == "<u4" else "uint16"
    plan = plan_input(str(tmp_path / "d"), token_dtype=token_dtype)
    assert len(plan.pieces) > 4
    groups = group_pieces(plan.pieces, 3 * plan.pieces[0].tokens)
    assert any(len(g.pieces) > 1 for g in groups)
    got = []
    for g in groups:
        data = read_group(g, top + 1)
        assert data.tokens.dtype == np.dtype(token_dtype) and data.offsets[0] == 0
        assert data.offsets[-1] == len(data.tokens)
        got += [data.tokens[a:b].tolist() for a, b in zip(data.offsets[:-1], data.offsets[1:])]
    assert got == samples


def test_an_id_past_the_vocabulary_in_a_group_names_its_shard(tmp_path):
    from ngram_dask.inputs import group_pieces, plan_input, read_group

    samples = [[1, 2, 3, 4]] * 40
    samples = samples[:33] + [[1, 2, 999, 4]] + samples[34:]
    write_mds(tmp_path / "d", samples, size_limit=1 << 8)
    plan = plan_input(str(tmp_path / "d"))
    (group,) = group_pieces(plan.pieces, 10**9)
    refs = list_shards(str(tmp_path / "d"))
    first = np.cumsum([0] + [r.samples for r in refs])
    bad = refs[int(np.searchsorted(first, 33, side="right")) - 1]  # the shard of sample 33
    assert bad is not refs[0] and bad is not refs[-1]
    with pytest.raises(BadInputError, match=rf"{bad.basename}.*token id 999 .*>= vocab_size 100"):
        read_group(group, 100)
