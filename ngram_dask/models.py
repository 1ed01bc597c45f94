"""Causal language models for scoring and scanning: names, devices, dtypes, one load per worker.

Short Pythia sizes (``70m`` ... ``12b``) expand to ``EleutherAI/pythia-<size>-deduped``;
anything else is a local folder or hub id. fp16 on CUDA and fp32 on CPU unless configured.
"""

from __future__ import annotations

import os
import re
import threading
from collections import Counter

from .errors import UserError

PYTHIA_SIZES = ("14m", "31m", "70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b")

_CACHE: dict[tuple[str, str, str], object] = {}
_LOCK = threading.Lock()
_LOADS: Counter = Counter()  # (name, device, dtype) -> loads in this process; see load_counts()
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")


def expand_model_name(name: str) -> str:
    name = name.strip()
    if name.lower() in PYTHIA_SIZES:
        return f"EleutherAI/pythia-{name.lower()}-deduped"
    return name


def column_name(name: str) -> str:
    """``p_<model>`` as a plain SQL identifier: ``pythia-1.4b-deduped`` -> ``p_pythia_1_4b_deduped``."""
    base = os.path.basename(expand_model_name(name).rstrip("/")) or "model"
    return "p_" + re.sub(r"[^0-9a-zA-Z]+", "_", base).strip("_").lower()


def check_device(device: str) -> str:
    """A device string this code understands (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``)."""
    if not isinstance(device, str) or not _DEVICE.match(device):
        raise UserError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N")
    return device


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when this process sees a GPU, else ``cpu``; a missing GPU is a UserError."""
    check_device(device)
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            import socket

            raise UserError(f"device {device!r} was asked for, but {socket.gethostname()} sees no CUDA GPU: "
                            "use --device cpu (or auto)")
    return device


def resolve_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    try:
        return {"float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
                "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                "float32": torch.float32, "fp32": torch.float32, "float": torch.float32}[dtype]
    except KeyError:
        raise UserError(f"unknown dtype {dtype!r}: use auto, float16, bfloat16 or float32") from None


def _load_error(name: str, exc: BaseException) -> UserError:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("TRANSFORMERS_OFFLINE") == "1"
    hint = " (offline: only local folders and the hub cache are searched)" if offline else ""
    return UserError(f"cannot load model {name!r}{hint}: {first}")


def _dtype_kwarg(torch_dtype) -> dict:
    """``dtype=`` on transformers >= 4.56 (``torch_dtype`` is deprecated there), else ``torch_dtype=``."""
    import transformers

    major, minor = (int(x) for x in re.findall(r"\d+", transformers.__version__)[:2])
    return {"dtype": torch_dtype} if (major, minor) >= (4, 56) else {"torch_dtype": torch_dtype}


def load_model(name: str, device: str = "auto", dtype: str = "auto"):
    """The model on its device, in eval mode; cached so each worker process loads it once."""
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    key = (expand_model_name(name), device, str(torch_dtype))
    with _LOCK:
        if key not in _CACHE:
            from transformers import AutoModelForCausalLM

            _CACHE.clear()  # one model per worker at a time: the previous one frees its memory
            if device.startswith("cuda"):
                import torch

                torch.cuda.empty_cache()
            try:
                model = AutoModelForCausalLM.from_pretrained(key[0], **_dtype_kwarg(torch_dtype))
            except (OSError, ValueError) as exc:
                raise _load_error(key[0], exc) from None
            _CACHE[key] = model.to(device).eval()
            _LOADS[key] += 1
        return _CACHE[key]


def load_counts() -> dict[str, int]:
    """How often this process loaded each model (by expanded name): once per worker is the goal."""
    out: dict[str, int] = {}
    for (name, _device, _dtype), count in _LOADS.items():
        out[name] = out.get(name, 0) + count
    return out


def model_config(name: str):
    """The model's ``AutoConfig`` (no weights loaded); a UserError when it cannot be had."""
    from transformers import AutoConfig

    full = expand_model_name(name)
    try:
        return AutoConfig.from_pretrained(full)
    except (OSError, ValueError) as exc:
        raise _load_error(full, exc) from None


def is_causal_lm(config) -> bool:
    """Whether ``AutoModelForCausalLM`` knows this config's architecture."""
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING

    try:
        return type(config) in MODEL_FOR_CAUSAL_LM_MAPPING
    except Exception:  # a lazy mapping that cannot import some architecture: let loading decide
        return True


def model_vocab_size(name: str) -> int:
    """Output vocabulary of a model, read from its config without loading weights."""
    cfg = model_config(name)
    vocab = getattr(cfg, "vocab_size", None)
    if vocab is None and hasattr(cfg, "get_text_config"):
        vocab = getattr(cfg.get_text_config(), "vocab_size", None)
    if vocab is None:
        raise UserError(f"model {expand_model_name(name)!r} has no vocab_size in its config")
    return int(vocab)
