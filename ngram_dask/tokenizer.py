"""Load a tokenizer by hub id, local folder or ``tokenizer.json`` file, with a clear error
when it cannot be had."""

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
    """A fast tokenizer, or a ``UserError`` naming what was tried.

    ``name_or_path``: a hub id or a folder (``AutoTokenizer.from_pretrained``), or a
    ``tokenizer.json`` file of the ``tokenizers`` library, the form many tokenizers are
    shared in. A file alone gives the same ids and text as its folder, but it names no
    bos/eos token: ``convert`` then separates documents only with ``convert.eos_token``
    (or ``bos_token``) set.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if os.path.isfile(name_or_path):
        try:
            return PreTrainedTokenizerFast(tokenizer_file=name_or_path)
        except Exception as exc:  # noqa: BLE001 - the tokenizers library raises plain Exceptions
            raise UserError(f"cannot load tokenizer {name_or_path!r}: not a tokenizer.json the tokenizers "
                            f"library reads ({_first_line(exc)})") from None
    try:
        return AutoTokenizer.from_pretrained(name_or_path, use_fast=True)
    except (OSError, ValueError) as exc:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = " (HF_HUB_OFFLINE=1: only local folders and the hub cache are searched)" if offline else ""
        raise UserError(f"cannot load tokenizer {name_or_path!r}{hint}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
