"""Every input format gives the same samples as the same stream written as MDS, and bad
input gets one line naming the file. Files are written here: MDS by streaming's
MDSWriter, Megatron by Megatron-LM's own builder (and an independent writer checked
against it byte for byte), .bin/.npy by numpy, Parquet by pyarrow."""

from __future__ import annotations

import numpy as np
import pytest
from helpers_formats import (
    cut,
    write_bin,
    write_megatron,
    write_megatron_with_megatron,
    write_npy,
    write_parquet,
)

from ngram_dask.errors import BadInputError, ConfigError
from ngram_dask.inputs import even_groups, group_pieces, plan_input, read_group, read_piece
from ngram_dask.inputs.base import Piece, read_range

from helpers import write_mds


def samples_of(url, vocab=None, **kw) -> list[list[int]]:
    plan = plan_input(str(url), **kw)
    out = []
    for piece in plan.pieces:
        data = read_piece(piece, vocab_size=vocab)
        assert data.tokens.dtype == np.dtype(plan.token_dtype)
        assert len(data.offsets) - 1 == piece.samples  # known before the read (the scan's batches need it)
        out += [data.tokens[a:b].tolist() for a, b in zip(data.offsets[:-1], data.offsets[1:])]
    return out


def streams():
    rng = np.random.default_rng(7)
    yield "random", rng.integers(0, 50_000, 1000).tolist(), 64
    yield "exact multiple", rng.integers(0, 300, 5 * 16).tolist(), 16
    yield "one short", rng.integers(0, 300, 5 * 16 - 1).tolist(), 16
    yield "single token", [42], 8
    yield "adversarial runs", [7] * 50 + [7, 8] * 20 + [0, 65_535] * 10, 9


@pytest.mark.parametrize("name,stream,seq_len", list(streams()), ids=[s[0] for s in streams()])
@pytest.mark.parametrize("unit_tokens", [1, 17, 10_000])
def test_every_format_gives_the_mds_samples(tmp_path, name, stream, seq_len, unit_tokens):
    want = cut(stream, seq_len)
    write_mds(tmp_path / "mds", want, compression=None)
    write_megatron_with_megatron(tmp_path / "meg", [[stream[:len(stream) // 2]], [stream[len(stream) // 2:]]])
    write_bin(tmp_path / "flat.bin", stream)
    write_npy(tmp_path / "flat.npy", stream)
    write_parquet(tmp_path / "rows.parquet", want, row_group_size=3)
    kw = {"seq_len": seq_len, "unit_tokens": unit_tokens}
    assert samples_of(tmp_path / "mds", **kw) == want
    assert samples_of(tmp_path / "meg.bin", **kw) == want  # documents are one stream in seq-len mode
    assert samples_of(tmp_path / "flat.bin", **kw) == want
    assert samples_of(tmp_path / "flat.npy", **kw) == want
    assert samples_of(tmp_path / "rows.parquet", **kw) == want



@pytest.mark.parametrize("fmt", ["mds", "meg.bin", "flat.bin", "flat.npy", "rows.parquet"])
def test_groups_read_into_one_reused_buffer_give_their_own_samples(tmp_path, fmt):
    """A unit reads its piece group into its thread's buffer (``runtime.group_buffer``), which
    the unit before it filled: every group must come back with its own ids and boundaries,
    whether one piece or several, copied or not (the buffer starts as garbage, and the
    largest group goes first, so a stale tail or a short copy shows)."""
    stream = np.random.default_rng(3).integers(0, 50_000, 1000).tolist()
    want = cut(stream, 64)
    write_mds(tmp_path / "mds", want, size_limit=1 << 9)
    write_megatron_with_megatron(tmp_path / "meg", [[stream[:500]], [stream[500:]]])
    write_bin(tmp_path / "flat.bin", stream)
    write_npy(tmp_path / "flat.npy", stream)
    write_parquet(tmp_path / "rows.parquet", want, row_group_size=3)
    plan = plan_input(str(tmp_path / fmt), seq_len=64, unit_tokens=128)
    groups = group_pieces(plan.pieces, 300) + group_pieces(plan.pieces, 10**6)
    assert any(len(g.pieces) > 1 for g in groups) and len(groups) > 3
    pool: dict[str, np.ndarray] = {}

    def buffers(name, size, dtype):  # as runtime.thread_buffer, but each one starts as garbage
        if name not in pool or len(pool[name]) < size:
            pool[name] = np.full(size, np.iinfo(dtype).max, dtype)
        return pool[name]

    for g in sorted(groups, key=lambda g: -g.tokens):
        alone, reused = read_group(g, 50_000), read_group(g, 50_000, buffers=buffers)
        assert reused.tokens.tolist() == alone.tokens.tolist()
        for a, b in zip(alone[1:], reused[1:]):
            assert np.array_equal(a, b)
    assert "group-tokens" in pool


def _pieces(sizes) -> list[Piece]:
    return [Piece("bin", "f.bin", 0, f"p{i}", int(t), 0, "uint16") for i, t in enumerate(sizes)]


@pytest.mark.parametrize("sizes, unit, workers", [
    ([10] * 120, 90, 2),  # greedy: 13 groups of 9 and one of 3; even: 14 of 8 or 9
    ([10] * 120, 90, None),
    ([10] * 7, 1000, 3),  # fewer pieces than a multiple of the workers: a piece each
    ([5, 500, 5, 5, 60, 70, 1, 1, 1, 200], 100, 2),  # pieces over the unit stay alone
    ([3] * 50 + [40] * 10, 50, 4),
    ([7], 10, 2),
])
def test_even_groups_partition_the_pieces_into_near_equal_units_within_the_budget(sizes, unit, workers):
    pieces = _pieces(sizes)
    greedy, even = group_pieces(pieces, unit), even_groups(pieces, unit, workers)
    assert [p for g in even for p in g.pieces] == pieces  # each piece once, in order
    assert all(g.tokens <= unit or len(g.pieces) == 1 for g in even)
    assert len(even) >= len(greedy)
    if workers and len(greedy) > 1 and max(sizes) <= unit and len(pieces) >= 2 * workers * len(greedy):
        assert len(even) % workers == 0
    fits = [g for g in even if g.tokens <= unit]
    if len(fits) > 1 and max(sizes) <= unit:
        # no two groups differ by more than the largest piece (greedy leaves a small last one)
        assert max(g.tokens for g in fits) - min(g.tokens for g in fits) <= max(sizes)


def test_even_groups_end_together_where_greedy_leaves_a_remainder():
    pieces = _pieces([10] * 120)
    assert [g.tokens for g in group_pieces(pieces, 90)][-2:] == [90, 30]
    assert sorted({g.tokens for g in even_groups(pieces, 90, 2)}) == [80, 90]
    assert len(even_groups(pieces, 90, 2)) == 14

def test_wide_ids_above_100000_read_exactly(tmp_path):
    rng = np.random.default_rng(3)
    stream = rng.integers(100_000, 1 << 20, 3000).tolist()
    want = cut(stream, 100)
    write_mds(tmp_path / "mds", want, dtype="<u4", compression=None)
    write_megatron(tmp_path / "meg", [[stream]], dtype=np.int32)
    write_bin(tmp_path / "flat.bin", stream, np.uint32)
    write_npy(tmp_path / "flat.npy", stream, np.uint32)
    write_parquet(tmp_path / "rows.parquet", want)
    for url, extra in [("mds", {"token_dtype": "uint32"}), ("meg.bin", {}), ("flat.bin", {"token_dtype": "uint32"}),
                       ("flat.npy", {}), ("rows.parquet", {})]:
        plan = plan_input(str(tmp_path / url), seq_len=100, unit_tokens=700, **extra)
        assert plan.token_dtype == "uint32", url
        assert samples_of(tmp_path / url, seq_len=100, unit_tokens=700, vocab=1 << 20, **extra) == want, url


def test_documents_mode_gives_one_sample_per_document_or_row(tmp_path):
    rng = np.random.default_rng(5)
    docs = [[rng.integers(0, 500, int(k)).tolist() for k in rng.integers(0, 4, 1 + i % 3)] for i in range(40)]
    docs[3] = []  # a document without sequences
    docs[4] = [[]]  # one with an empty sequence
    write_megatron_with_megatron(tmp_path / "meg", docs)
    want = [sum(doc, []) for doc in docs]
    for unit_tokens in (1, 10, 10_000):
        assert samples_of(tmp_path / "meg.bin", samples="documents", unit_tokens=unit_tokens) == want
    write_parquet(tmp_path / "rows.parquet", want, row_group_size=4)
    assert samples_of(tmp_path / "rows.parquet", samples="documents", unit_tokens=10) == want
    write_bin(tmp_path / "flat.bin", [1, 2, 3])
    with pytest.raises(ConfigError, match="--samples documents needs documents: bin input has none"):
        plan_input(str(tmp_path / "flat.bin"), samples="documents")


def test_the_independent_megatron_writer_matches_megatrons_byte_for_byte(tmp_path):
    rng = np.random.default_rng(9)
    docs = [[rng.integers(0, 60_000, int(k)).tolist() for k in rng.integers(1, 5, 3)] for _ in range(25)]
    for dtype in (np.uint16, np.int32):
        write_megatron(tmp_path / "ours", docs, dtype)
        write_megatron_with_megatron(tmp_path / "theirs", docs, dtype)
        for suffix in (".bin", ".idx"):
            assert (tmp_path / f"ours{suffix}").read_bytes() == (tmp_path / f"theirs{suffix}").read_bytes()


def test_pieces_partition_each_file_on_sample_boundaries(tmp_path):
    stream = list(range(1000))
    write_bin(tmp_path / "a.bin", stream)
    write_bin(tmp_path / "b.bin", stream[:333])
    plan = plan_input(str(tmp_path), seq_len=10, unit_tokens=95)
    assert plan.format == "bin" and [p.file_index for p in plan.pieces][:1] == [0]
    for i, name in enumerate(["a.bin", "b.bin"]):
        mine = [p for p in plan.pieces if p.file.endswith(name)]
        assert all(p.file_index == i for p in mine)
        assert mine[0].start == 0 and mine[-1].stop == len(stream if i == 0 else stream[:333])
        assert all(a.stop == b.start for a, b in zip(mine, mine[1:]))
        assert all(p.start % 10 == 0 and p.tokens == p.stop - p.start <= 95 for p in mine)
        assert [p.sample0 for p in mine] == [p.start // 10 for p in mine]
    assert len({p.name for p in plan.pieces}) == len(plan.pieces)


def test_a_piece_reads_only_its_own_bytes(tmp_path, monkeypatch):
    import fsspec.implementations.local as local

    seen = []
    real = local.LocalFileSystem.cat_file

    def recording(self, path, start=None, end=None, **kw):
        seen.append((str(path), start, end))
        return real(self, path, start=start, end=end, **kw)

    monkeypatch.setattr(local.LocalFileSystem, "cat_file", recording)
    write_bin(tmp_path / "a.bin", list(range(1000)))
    plan = plan_input(str(tmp_path / "a.bin"), seq_len=10, unit_tokens=100)
    seen.clear()
    piece = plan.pieces[3]
    read_piece(piece)
    assert seen == [(str(tmp_path / "a.bin"), 600, 800)]  # tokens 300..400, two bytes each


def _one_line(exc) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


@pytest.mark.parametrize("case", ["magic", "version", "dtype", "float", "short_bin", "no_idx", "gap"])
def test_bad_megatron_files_get_one_line_naming_the_file(tmp_path, case):
    write_megatron(tmp_path / "m", [[[1, 2, 3, 4]], [[5, 6]]])
    idx, binf = tmp_path / "m.idx", tmp_path / "m.bin"
    raw = bytearray(idx.read_bytes())
    if case == "magic":
        raw[:7] = b"NOTMEGA"
    elif case == "version":
        raw[9:17] = (2).to_bytes(8, "little")
    elif case == "dtype":
        raw[17] = 99
    elif case == "float":
        raw[17] = 7
    elif case == "gap":
        raw[9 + 8 + 1 + 16 + 8 + 8:9 + 8 + 1 + 16 + 8 + 16] = (10).to_bytes(8, "little")  # pointers[1]
    if case == "short_bin":
        binf.write_bytes(binf.read_bytes()[:-2])
    if case == "no_idx":
        idx.unlink()
        with pytest.raises(BadInputError) as exc:
            plan_input(str(binf), input_format="megatron")
    else:
        idx.write_bytes(bytes(raw))
        with pytest.raises(BadInputError) as exc:
            plan_input(str(binf))
    text = _one_line(exc)
    assert "m.idx" in text or "m.bin" in text, text
    want = {"magic": "does not start with MMIDIDX", "version": "version 2", "dtype": "dtype code 99",
            "float": "float32 values", "short_bin": "shorter than the 12 its index says",
            "no_idx": "has no m.idx beside it", "gap": "not back to back"}[case]
    assert want in text, text


def test_bad_flat_and_parquet_files_get_one_line(tmp_path):
    (tmp_path / "odd.bin").write_bytes(b"\x01\x00\x02")
    with pytest.raises(BadInputError, match=r"odd.bin has 3 bytes, not a multiple of 2") as exc:
        plan_input(str(tmp_path / "odd.bin"))
    _one_line(exc)
    np.save(tmp_path / "f.npy", np.array([1.0, 2.0]))
    with pytest.raises(BadInputError, match=r"f.npy holds float64 values: token ids must be integers"):
        plan_input(str(tmp_path / "f.npy"))
    np.save(tmp_path / "m.npy", np.zeros((2, 2), np.uint16))
    with pytest.raises(BadInputError, match=r"m.npy is an array of shape \(2, 2\)"):
        plan_input(str(tmp_path / "m.npy"))
    write_parquet(tmp_path / "p.parquet", [[1, 2]], column="ids")
    with pytest.raises(BadInputError, match=r"p.parquet has no column one of input_ids, tokens, token_ids "
                                            r"\(columns: ids, text\)"):
        plan_input(str(tmp_path / "p.parquet"))
    with pytest.raises(BadInputError, match=r"column 'text' is string, not a list of integer token ids"):
        plan_input(str(tmp_path / "p.parquet"), token_column="text")
    write_npy(tmp_path / "neg.npy", [1, -3, 2], np.int32)
    plan = plan_input(str(tmp_path / "neg.npy"), seq_len=2)
    with pytest.raises(BadInputError, match=r"neg.npy, sample 0: negative token id -3 at position 1"):
        [read_piece(p) for p in plan.pieces]
    write_bin(tmp_path / "big.bin", [1, 2, 3, 60_000])
    plan = plan_input(str(tmp_path / "big.bin"), seq_len=3)
    with pytest.raises(BadInputError, match=r"big.bin, sample 1: token id 60000 is >= vocab_size 50432 at position 0"):
        [read_piece(p, 50432) for p in plan.pieces]


def test_folders_globs_and_detection(tmp_path):
    write_bin(tmp_path / "a.bin", [1, 2, 3])
    write_npy(tmp_path / "b.npy", [4, 5])
    with pytest.raises(BadInputError, match=r"the input mixes formats: .*a.bin is bin, .*b.npy is npy"):
        plan_input(str(tmp_path))
    assert plan_input(str(tmp_path / "*.npy")).format == "npy"
    assert plan_input(str(tmp_path), input_format="bin").format == "bin"
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(BadInputError, match=r"notes.txt is not a file ngram-dask reads"):
        plan_input(str(tmp_path / "*.txt"))
    with pytest.raises(BadInputError, match=r"input dataset not found: .*nothing"):
        plan_input(str(tmp_path / "nothing"))
    assert len(read_range(str(tmp_path / "a.bin"), 2, 6)) == 4
