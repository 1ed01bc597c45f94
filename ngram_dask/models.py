"""Causal language models for scoring and scanning: names, devices, dtypes, one load per worker.

Short Pythia sizes (``70m`` ... ``12b``) expand to ``EleutherAI/pythia-<size>-deduped``;
anything else is a local folder or hub id. fp16 on CUDA and fp32 on CPU unless configured.
"""

from __future__ import annotations

import os
import re
import threading

from .errors import UserError

PYTHIA_SIZES = ("14m", "31m", "70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b")

_CACHE: dict[tuple[str, str, str], object] = {}
_LOCK = threading.Lock()


def expand_model_name(name: str) -> str:
    name = name.strip()
    if name.lower() in PYTHIA_SIZES:
        return f"EleutherAI/pythia-{name.lower()}-deduped"
    return name


def column_name(name: str) -> str:
    """``p_<model>`` as a plain SQL identifier: ``pythia-1.4b-deduped`` -> ``p_pythia_1_4b_deduped``."""
    base = os.path.basename(expand_model_name(name).rstrip("/")) or "model"
    return "p_" + re.sub(r"[^0-9a-zA-Z]+", "_", base).strip("_").lower()


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    try:
        return {"float16": torch.float16, "fp16": torch.float16, "bfloat16": torch.bfloat16,
                "bf16": torch.bfloat16, "float32": torch.float32, "fp32": torch.float32}[dtype]
    except KeyError:
        raise UserError(f"unknown dtype {dtype!r}: use auto, float16, bfloat16 or float32") from None


def load_model(name: str, device: str = "auto", dtype: str = "auto"):
    """The model on its device, in eval mode; cached so each worker process loads it once."""
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    key = (expand_model_name(name), device, str(torch_dtype))
    with _LOCK:
        if key not in _CACHE:
            from transformers import AutoModelForCausalLM

            try:
                model = AutoModelForCausalLM.from_pretrained(key[0], torch_dtype=torch_dtype)
            except (OSError, ValueError) as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise UserError(f"cannot load model {key[0]!r}: {first}") from None
            _CACHE.clear()  # one model per worker at a time: the previous one frees its memory
            _CACHE[key] = model.to(device).eval()
        return _CACHE[key]


def model_vocab_size(name: str) -> int:
    """Output vocabulary of a model, read from its config without loading weights."""
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(expand_model_name(name))
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot load model {expand_model_name(name)!r}: {first}") from None
    return int(cfg.vocab_size)
