"""``--tokenizer``: a hub id, a transformers folder, or a ``tokenizer.json`` file alone."""

from __future__ import annotations

import shutil

import pytest

from ngram_dask.errors import UserError
from ngram_dask.tokenizer import load_tokenizer

TEXT = "sodium chloride, or common table salt. def main(): return 0\n"


def test_a_tokenizer_json_file_tokenizes_as_its_folder(bpe_tokenizer_path, neox_tokenizer_path, tmp_path):
    for folder in (bpe_tokenizer_path, neox_tokenizer_path):
        alone = tmp_path / f"{len(folder)}-shared.json"  # any name: the file as it is shared, nothing beside it
        shutil.copy(f"{folder}/tokenizer.json", alone)
        want, got = load_tokenizer(folder), load_tokenizer(str(alone))
        ids = want(TEXT, add_special_tokens=False)["input_ids"]
        assert got(TEXT, add_special_tokens=False)["input_ids"] == ids and len(ids) > 5
        assert len(got) == len(want)
        assert got.decode(ids) == want.decode(ids) == TEXT
        assert got.batch_decode([[i] for i in ids]) == want.batch_decode([[i] for i in ids])


def test_a_file_that_is_no_tokenizer_is_one_line(tmp_path):
    bad = tmp_path / "tokenizer.json"
    bad.write_text('{"not": "a tokenizer"}')
    with pytest.raises(UserError, match=r"cannot load tokenizer .*tokenizer\.json") as info:
        load_tokenizer(str(bad))
    assert "\n" not in str(info.value)
