"""``ngram-dask demo``: the whole pipeline on a corpus made on the spot, no network.

The corpus is the docstrings of this Python's standard library (read with ``ast``,
nothing imported). It is tokenized with the real GPT-NeoX-20B tokenizer: the copy
shipped in the package (``ngram_dask/tokenizers/gpt-neox-20b``), unless
``$NGRAM_DASK_TOKENIZER`` names another. A byte-level BPE trained here is the last
resort, for a package whose bundled copy was removed.
"""

from __future__ import annotations

import ast
import os
import shlex
import shutil
import sys
import sysconfig
from pathlib import Path

import numpy as np

from ngram_dask.config import load_config
from ngram_dask.tokenizer import BUNDLED_GPT_NEOX

DEMO_CONFIG = Path(__file__).resolve().with_name("demo.yaml")  # package data: an installed wheel has it too
SEQ_LEN = 2048


def stdlib_docstrings(max_chars: int = 6_000_000) -> list[str]:
    """Module, class and function docstrings of the standard library, in a stable order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    docs: list[str] = []
    total = 0
    for path in sorted(root.rglob("*.py")):
        if "site-packages" in path.parts or "test" in path.parts or "tests" in path.parts:
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 40:
                    docs.append(doc)
                    total += len(doc)
                    if total >= max_chars:
                        return docs
    return docs


def _candidates() -> list[str]:
    found = [os.environ["NGRAM_DASK_TOKENIZER"]] if os.environ.get("NGRAM_DASK_TOKENIZER") else []
    found.append(str(BUNDLED_GPT_NEOX))
    return found


def pick_tokenizer(docs: list[str], out: Path):
    """``(tokenizer, name_or_path, description)``: the real GPT-NeoX one if it loads offline."""
    from transformers import AutoTokenizer

    for cand in _candidates():
        try:
            name = "GPT-NeoX-20B tokenizer" if cand == str(BUNDLED_GPT_NEOX) else "tokenizer"
            return AutoTokenizer.from_pretrained(cand), cand, f"{name} ({cand})"
        except (OSError, ValueError):
            continue
    path = out / "bpe-tokenizer"
    if not (path / "tokenizer.json").is_file():
        _train_bpe(docs, path)
    return (AutoTokenizer.from_pretrained(str(path)), str(path),
            "byte-level BPE trained on the demo corpus (GPT-NeoX-20B could not be loaded offline)")


def _train_bpe(docs: list[str], path: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=8192, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(docs, trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                            unk_token="<|endoftext|>").save_pretrained(str(path))


def write_corpus(docs: list[str], tokenizer, mds_dir: Path) -> int:
    """Documents as <eos> doc <eos>, concatenated and cut into 2048-token samples (as `convert`)."""
    from streaming import MDSWriter

    sep = tokenizer.convert_tokens_to_ids(tokenizer.eos_token or "<|endoftext|>")
    ids = tokenizer(docs, add_special_tokens=False)["input_ids"]
    stream = np.concatenate([np.array([sep, *d, sep], dtype=np.uint16) for d in ids])
    tmp = mds_dir.with_name(mds_dir.name + ".tmp")
    with MDSWriter(out=str(tmp), columns={"tokens": "bytes"}, compression="zstd:16",
                   size_limit=1 << 18) as w:
        for start in range(0, len(stream), SEQ_LEN):
            w.write({"tokens": stream[start:start + SEQ_LEN].tobytes()})
    tmp.rename(mds_dir)
    return len(stream)


def run_demo(out_dir: str = "demo-output", announce=print, n_workers: int | None = None,
             after_build=None) -> int:
    """Write the corpus, build it; ``after_build(cfg, announce)`` then runs the steps of other
    stages the demo's config names (the CLI passes ``contexts``: stage families do not
    import each other)."""
    # No network in the demo: the hub client reads this when first imported, so set it first.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from ngram_dask.ngrams.pipeline import run_build, summary_lines

    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    mds = out / "mds"
    docs = stdlib_docstrings()
    tokenizer, tok_name, tok_desc = pick_tokenizer(docs, out)
    announce(f"demo corpus: {len(docs):,} docstrings of the Python standard library")
    announce(f"tokenizer: {tok_desc}")
    if not (mds / "index.json").is_file():
        tokens = write_corpus(docs, tokenizer, mds)
        announce(f"wrote {tokens:,} tokens as MDS to {mds}")
    cfg = load_config(DEMO_CONFIG, {
        "input": str(mds), "work_dir": str(out / "work"), "db": str(out / "catalog.duckdb"),
        "tokenizer": tok_name, "vocab_size": max(50432, len(tokenizer)),
        "cluster.n_workers": n_workers,
    })
    report = run_build(cfg, announce)
    for line in summary_lines(report):
        announce(line)
    if after_build is not None:
        after_build(cfg, announce)
    first_prompt = show_top(cfg.db, announce)
    exe, db = _command_path(), _relative(Path(cfg.db))
    announce("\nexplore it:")
    if first_prompt:
        announce(f"  {exe} query --db {db} {shlex.quote(first_prompt)}")
    announce(f"  {exe} verify --db {db}")
    return 0


def _relative(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _command_path() -> str:
    """How to call ``ngram-dask`` from here: the venv's script unless it is on PATH already."""
    beside = Path(sys.executable).parent / "ngram-dask"
    on_path = shutil.which("ngram-dask")
    if on_path and Path(on_path).resolve() == beside.resolve():
        return "ngram-dask"
    return _relative(beside) if beside.exists() else "ngram-dask"


def show_top(db: str, announce=print, limit: int = 15) -> str | None:
    """Print the most predictive two-token prompts; return the first prompt (or None)."""
    from ngram_dask.db import read_only

    with read_only(db) as con:
        rows = con.execute(
            "SELECT token0 || token1, token2, frac_max, sum_count FROM top_trigrams "
            "WHERE length(trim(token0 || token1)) > 3 AND NOT contains(seq, ?) "
            "ORDER BY sum_count * frac_max DESC LIMIT ?",
            ["<|endoftext|>", limit]).fetchall()
    announce("\nmost predictive two-token prompts (prompt -> next token, how often, prompt count):")
    for prompt, nxt, frac, total in rows:
        announce(f"  {prompt!r:>28} -> {nxt!r:<14} {frac:6.1%}  of {total:,}")
    # A prompt to suggest on one shell line: the first without newlines or tabs.
    return next((p for p, *_ in rows if p.isprintable()), None)
