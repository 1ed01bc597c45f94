"""Model names: the short Pythia names, score columns and the size a name states (one rule
for the report's and the task browser's smallest-first order)."""

from __future__ import annotations

import pytest

from ngram_dask.lm.models import column_name, expand_model_name, model_size


@pytest.mark.parametrize("name, size", [
    ("1.4b", 1.4e9),                                # a short Pythia name
    ("EleutherAI/pythia-1.4b-deduped", 1.4e9),
    ("p_pythia_1_4b_deduped", 1.4e9),               # its score column
    ("p_pythia_160m_deduped", 1.6e8),
    ("EleutherAI/pythia-70m", 7e7),
    ("/models/opt-350m/", 3.5e8),                   # a local folder, trailing slash
    ("Qwen/Qwen2.5-0.5B", 5e8),                     # case aside; "2.5" is no size
    ("meta-llama/Llama-3.1-8B-Instruct", 8e9),
    ("v2-pythia-12b", 1.2e10),                      # the last size wins
    ("/data/runs-410m/pythia-12b", 1.2e10),         # the name, not the folders above it
    ("gpt2", None), ("p_gpt2", None), ("/models/tiny-neox-32x2", None), ("my-model", None),
    ("resnet50mb", None),                           # a size must stand alone
])
def test_the_size_a_name_states(name, size):
    assert model_size(name) == size


def test_every_name_of_a_model_states_the_same_size():
    for short in ("14m", "160m", "1.4b", "6.9b", "12b"):
        full = expand_model_name(short)
        assert model_size(short) == model_size(full) == model_size(column_name(short)) is not None, short


def test_smallest_first():
    cols = ["p_gpt2", "p_pythia_12b_deduped", "p_pythia_1_4b_deduped", "p_pythia_160m_deduped", "p_pythia_6_9b"]
    order = sorted(cols, key=lambda c: (model_size(c) is None, model_size(c) or 0, c))
    assert order == ["p_pythia_160m_deduped", "p_pythia_1_4b_deduped", "p_pythia_6_9b", "p_pythia_12b_deduped",
                     "p_gpt2"]
