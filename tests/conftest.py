"""Shared fixtures: tokenizers, tiny models, a session LocalCluster, real dask processes."""

from __future__ import annotations

import os

# Offline everywhere: a hub lookup would retry for ~50 s before failing.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ngram_dask.tokenizer import BUNDLED_GPT_NEOX as NEOX_TOKENIZER

BPE_TEXT = (
    "the quick brown fox jumps over the lazy dog. " * 20
    + "telomeres protect chromosome ends. sodium chloride, or common table salt. " * 20
    + "def main(): return 0\nimport os, sys\n" * 20
)


@pytest.fixture(scope="session")
def neox_tokenizer_path() -> str:
    """The real GPT-NeoX-20B tokenizer (Pythia's), as shipped inside the package."""
    if not (NEOX_TOKENIZER / "tokenizer.json").is_file():
        pytest.fail(f"the GPT-NeoX tokenizer copy is missing at {NEOX_TOKENIZER}")
    return str(NEOX_TOKENIZER)


@pytest.fixture(scope="session")
def bpe_tokenizer_path(tmp_path_factory) -> str:
    """A byte-level BPE trained here (id 0 = <|endoftext|>), saved as a transformers folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([BPE_TEXT], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>",
                                   eos_token="<|endoftext|>", unk_token="<|endoftext|>")
    out = tmp_path_factory.mktemp("bpe-tokenizer")
    fast.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def make_tiny_model(tmp_path_factory):
    """Factory: a tiny random GPTNeoXForCausalLM saved with save_pretrained; returns its folder."""
    cache: dict = {}

    def make(vocab_size: int = 512, hidden: int = 32, layers: int = 2, heads: int = 4, seed: int = 0) -> str:
        key = (vocab_size, hidden, layers, heads, seed)
        if key not in cache:
            import torch
            from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

            torch.manual_seed(seed)
            config = GPTNeoXConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                                   num_attention_heads=heads, intermediate_size=4 * hidden,
                                   max_position_embeddings=128, rotary_pct=0.25)
            model = GPTNeoXForCausalLM(config).eval()
            out = tmp_path_factory.mktemp(f"tiny-neox-{hidden}x{layers}-v{vocab_size}-s{seed}")
            model.save_pretrained(out)
            cache[key] = str(out)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def local_cluster():
    """One LocalCluster for the session (2 worker processes): builds attach with --scheduler."""
    from distributed import LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address="127.0.0.1:0", memory_limit="4GiB")
    try:
        yield cluster.scheduler_address
    finally:
        cluster.close()


@pytest.fixture(scope="module")
def built(request, tmp_path_factory, local_cluster, neox_tokenizer_path):
    """The test corpus (``catalog_corpus``) built into a catalog with the real tokenizer,
    once per test module: ``(db, samples)``. Modules that need another shape override it."""
    from catalog_corpus import build_catalog_db

    root = tmp_path_factory.mktemp(request.module.__name__.removeprefix("test_"))
    return build_catalog_db(root, local_cluster, neox_tokenizer_path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_workers(address: str, n: int, timeout: float = 60) -> None:
    from distributed import Client

    with Client(address, timeout="30s") as c:
        c.wait_for_workers(n, timeout=timeout)


class DaskProcesses:
    """A `dask scheduler` and `dask worker`s started as separate processes on 127.0.0.1."""

    def __init__(self, tmp: Path, workers: int = 1, nthreads: int = 1, resources: str | None = None,
                 memory_limit: str = "4GiB", worker_cwd: str | None = None):
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.tmp = tmp
        self.procs: list[subprocess.Popen] = []
        bindir = Path(sys.executable).parent
        self.logs = []
        sched_log = open(tmp / "scheduler.log", "w")
        self.logs.append(sched_log)
        self.procs.append(subprocess.Popen(
            [str(bindir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(self.port),
             "--dashboard-address", "127.0.0.1:0"],
            stdout=sched_log, stderr=subprocess.STDOUT))
        self.worker_args = ["--nthreads", str(nthreads), "--memory-limit", memory_limit,
                            "--host", "127.0.0.1", "--local-directory", str(tmp / "worker-space")]
        if resources:
            self.worker_args += ["--resources", resources]
        self.worker_cwd = worker_cwd
        self.workers: list[subprocess.Popen] = []
        for _ in range(workers):
            self.add_worker()
        _wait_for_workers(self.address, workers)

    def add_worker(self) -> subprocess.Popen:
        log = open(self.tmp / f"worker-{len(self.workers)}.log", "w")
        self.logs.append(log)
        p = subprocess.Popen([str(Path(sys.executable).parent / "dask"), "worker", self.address,
                              *self.worker_args], stdout=log, stderr=subprocess.STDOUT, cwd=self.worker_cwd)
        self.procs.append(p)
        self.workers.append(p)
        return p

    def close(self) -> None:
        for p in reversed(self.procs):
            p.terminate()
        deadline = time.time() + 20
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()
        for log in self.logs:
            log.close()


@pytest.fixture(scope="module")
def dask_processes(tmp_path_factory):
    """A scheduler + one 2-thread worker as real processes (module-wide)."""
    procs = DaskProcesses(tmp_path_factory.mktemp("dask-procs"), workers=1, nthreads=2)
    try:
        yield procs
    finally:
        procs.close()


@pytest.fixture
def start_dask_processes(tmp_path):
    """Factory for tests that need their own scheduler + workers (to kill them, say)."""
    started: list[DaskProcesses] = []

    def start(**kw) -> DaskProcesses:
        p = DaskProcesses(tmp_path, **kw)
        started.append(p)
        return p

    yield start
    for p in started:
        p.close()
