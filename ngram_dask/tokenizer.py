"""Load a tokenizer by hub id or local folder, with a clear error when it cannot be had."""

from __future__ import annotations

import os
from pathlib import Path

from ngram_dask.errors import UserError

#: The GPT-NeoX-20B tokenizer (Pythia's) shipped inside the package (Apache-2.0; see its
#: SOURCE.md), so the demo, the tests and the benchmarks need no network. Real builds
#: default to the hub id ``DEFAULT_TOKENIZER``; this folder loads the same ids.
DEFAULT_TOKENIZER = "EleutherAI/gpt-neox-20b"  # the hub id of the one bundled below
BUNDLED_GPT_NEOX = Path(__file__).resolve().parent / "tokenizers" / "gpt-neox-20b"


def load_tokenizer(name_or_path: str):
    """``AutoTokenizer.from_pretrained`` (fast), or a ``UserError`` naming what was tried."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name_or_path, use_fast=True)
    except (OSError, ValueError) as exc:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = " (HF_HUB_OFFLINE=1: only local folders and the hub cache are searched)" if offline else ""
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot load tokenizer {name_or_path!r}{hint}: {first}") from None
