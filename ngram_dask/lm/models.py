"""Causal language models for scoring and scanning: names, devices, dtypes, one load per worker.

Short Pythia sizes (``70m`` ... ``12b``) expand to ``EleutherAI/pythia-<size>-deduped``;
anything else is a local folder or hub id. fp16 on CUDA and fp32 on CPU unless configured.
"""

from __future__ import annotations

import os
import re
import threading
from collections import Counter

from ngram_dask.config import DEVICE
from ngram_dask.errors import UserError
from ngram_dask.schema import score_column, score_column_model

PYTHIA_SIZES = ("14m", "31m", "70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b")

_CACHE: dict[tuple, object] = {}
_LOCK = threading.Lock()
_LOADS: Counter = Counter()  # (name, device, dtype, revision) -> loads in this process; see load_counts()


def expand_model_name(name: str) -> str:
    name = name.strip()
    if name.lower() in PYTHIA_SIZES:
        return f"EleutherAI/pythia-{name.lower()}-deduped"
    return name


# A size in a model's name: digits, an optional fraction ("1.4", or "1_4" in a score
# column), then m or b, standing alone between non-alphanumerics ("pythia-1.4b-deduped").
_SIZE = re.compile(r"(?<![a-z0-9])(\d+(?:[._]\d+)?)([mb])(?![a-z])")


def model_size(name: str) -> float | None:
    """Parameters a model's name states, None when it states none: ``1.4b``,
    ``EleutherAI/pythia-1.4b-deduped`` and its score column ``p_pythia_1_4b_deduped`` ->
    1.4e9; ``/models/opt-350m`` -> 3.5e8; ``gpt2`` -> None.

    Only the name itself counts (the last part of a path or hub id, without the score
    column's ``p_``), case aside; of several sizes in it the last wins (a version or step
    count comes before the size in names like ``v2-pythia-12b``)."""
    base = os.path.basename(score_column_model(name.strip()).rstrip("/")).lower()
    found = list(_SIZE.finditer(base))
    if not found:
        return None
    m = found[-1]
    return float(m.group(1).replace("_", ".")) * (1e6 if m.group(2) == "m" else 1e9)


def column_name(name: str) -> str:
    """The ``p_<model>`` score column of a model: ``1.4b`` -> ``p_pythia_1_4b_deduped``."""
    return score_column(expand_model_name(name))


def check_device(device: str) -> str:
    """A device string this code understands (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``)."""
    if not isinstance(device, str) or not DEVICE.fullmatch(device):
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


def _load_error(name: str, exc: BaseException, revision: str | None = None) -> UserError:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("TRANSFORMERS_OFFLINE") == "1"
    hint = " (offline: only local folders and the hub cache are searched)" if offline else ""
    at = f" revision {revision!r}" if revision else ""
    return UserError(f"cannot load model {name!r}{at}{hint}: {first}")


def _dtype_kwarg(torch_dtype) -> dict:
    """``dtype=`` on transformers >= 4.56 (``torch_dtype`` is deprecated there), else ``torch_dtype=``."""
    import transformers

    major, minor = (int(x) for x in re.findall(r"\d+", transformers.__version__)[:2])
    return {"dtype": torch_dtype} if (major, minor) >= (4, 56) else {"torch_dtype": torch_dtype}


def _from_pretrained(cls, name: str, **kw):
    """``cls.from_pretrained`` with PyTorch's fused SDPA attention where the architecture has it
    (GPT-NeoX's eager attention materialises the softmax and runs it in float32)."""
    try:
        return cls.from_pretrained(name, attn_implementation="sdpa", **kw)
    except (ValueError, ImportError) as exc:
        if "sdpa" not in str(exc).lower() and "attn_implementation" not in str(exc):
            raise
        return cls.from_pretrained(name, **kw)


# Elements of one rows x vocab float32 temporary when probabilities are computed from logits.
_CHUNK_ELEMENTS_CPU = 1 << 18  # 1 MiB: about 5 rows of a 50k vocabulary
_CHUNK_ELEMENTS_GPU = 1 << 25  # 128 MiB: about 670 rows; the scan's ~10 temporaries take ~1.3 GiB


def vocab_chunk_rows(vocab: int, device) -> int:
    """Rows of logits to turn into probabilities at once on ``device``.

    On a CPU the ``rows x vocab`` float32 temporaries must stay in cache: the scan's
    statistics over a whole 1024-row micro-batch made ~10 temporaries of 200 MB each,
    which the allocator mapped and page-faulted in afresh every time (the statistics were
    ~90% of the CPU scan's time, half of it in the kernel). A GPU wants few, large kernels.
    """
    kind = getattr(device, "type", None) or str(device).split(":")[0]
    budget = _CHUNK_ELEMENTS_GPU if kind == "cuda" else _CHUNK_ELEMENTS_CPU
    return max(1, budget // max(1, int(vocab)))


def batch_limit(model, device, tokens: int, logit_rows: int, fraction: float = 0.7,
                cap: int = 1 << 16) -> int:
    """The most rows (sequences of ``tokens`` ids, ``logit_rows`` vocabulary rows of output
    each) that ``fraction`` of the device's free memory holds in one forward pass; ``cap``
    off CUDA. A power of two, so that the sweeps and the defaults meet the same shapes.

    Per row: the widest activation of a layer (about 16 hidden-sized vectors per token:
    QKV, attention output, the 4x MLP and its GELU, residuals) in the model's dtype, and
    the output rows in the model's dtype plus two float32 copies (upcast and ``exp``).
    """
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return cap
    cfg = model.config
    hidden = int(getattr(cfg, "hidden_size", 0) or 0)
    inter = int(getattr(cfg, "intermediate_size", 0) or 4 * hidden)
    vocab = int(getattr(cfg, "vocab_size", 0) or 0)
    elem = next(model.parameters()).element_size()
    per_row = tokens * (8 * hidden + 2 * inter) * elem + logit_rows * vocab * (elem + 8)
    free, _total = torch.cuda.mem_get_info(device)
    rows = int(free * fraction) // max(1, per_row)
    return max(1, min(cap, 1 << max(0, rows.bit_length() - 1)))


def checkpoint(name: str, revision: str | None = None) -> tuple[str, dict]:
    """Where a model's weights are: ``(path or hub id, from_pretrained keywords)``.

    A local folder's revision ``r`` is its subfolder ``r`` (``./ckpts/step1000``); a hub
    id's is ``from_pretrained(id, revision=r)`` (the hub cache when offline).
    """
    full = expand_model_name(name)
    if revision is None:
        return full, {}
    if os.path.isdir(full):
        sub = os.path.join(full, revision)
        if not os.path.isdir(sub):
            raise UserError(f"model {full!r} has no revision {revision!r}: no folder {sub}")
        return sub, {}
    return full, {"revision": revision}


def load_model(name: str, device: str = "auto", dtype: str = "auto", revision: str | None = None):
    """The model on its device, in eval mode; cached so each worker process loads it once
    (one checkpoint at a time: loading another revision frees the previous one)."""
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    key = (expand_model_name(name), device, str(torch_dtype), revision)
    with _LOCK:
        if key not in _CACHE:
            from transformers import AutoModelForCausalLM

            _CACHE.clear()  # one model per worker at a time: the previous one frees its memory
            if device.startswith("cuda"):
                import torch

                torch.cuda.empty_cache()
            path, where = checkpoint(key[0], revision)
            try:
                model = _from_pretrained(AutoModelForCausalLM, path, **where, **_dtype_kwarg(torch_dtype))
            except (OSError, ValueError) as exc:
                raise _load_error(key[0], exc, revision) from None
            _CACHE[key] = model.to(device).eval()
            _LOADS[key] += 1
        return _CACHE[key]


def load_counts() -> dict[str, int]:
    """How often this process loaded each model (by expanded name): once per worker is the goal."""
    out: dict[str, int] = {}
    for (name, _device, _dtype, _revision), count in _LOADS.items():
        out[name] = out.get(name, 0) + count
    return out


def revision_loads() -> dict[str, int]:
    """How often this process loaded each checkpoint, as ``name@revision``."""
    out: dict[str, int] = {}
    for (name, _device, _dtype, revision), count in _LOADS.items():
        key = f"{name}@{revision}" if revision else name
        out[key] = out.get(key, 0) + count
    return out


def model_config(name: str, revision: str | None = None):
    """The model's ``AutoConfig`` (no weights loaded); a UserError when it cannot be had."""
    from transformers import AutoConfig

    full = expand_model_name(name)
    path, where = checkpoint(full, revision)
    try:
        return AutoConfig.from_pretrained(path, **where)
    except (OSError, ValueError) as exc:
        raise _load_error(full, exc, revision) from None


def is_causal_lm(config) -> bool:
    """Whether ``AutoModelForCausalLM`` knows this config's architecture."""
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING

    try:
        return type(config) in MODEL_FOR_CAUSAL_LM_MAPPING
    except Exception:  # a lazy mapping that cannot import some architecture: let loading decide
        return True


def model_vocab_size(name: str) -> int:
    """Output vocabulary of a model, read from its config without loading weights."""
    return vocab_size_of(model_config(name), name)


def vocab_size_of(cfg, name: str) -> int:
    """Output vocabulary in a model's config (``model_config``); a UserError when it has none."""
    vocab = getattr(cfg, "vocab_size", None)
    if vocab is None and hasattr(cfg, "get_text_config"):
        vocab = getattr(cfg.get_text_config(), "vocab_size", None)
    if vocab is None:
        raise UserError(f"model {expand_model_name(name)!r} has no vocab_size in its config")
    return int(vocab)
