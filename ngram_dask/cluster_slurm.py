"""SLURM, for ``cluster.py``: worker jobs through dask-jobqueue, and what ``squeue`` says of them.

The scheduler runs in this process (on the login or batch node, beside the single
writer); each worker job is one ``sbatch`` of ``cluster.slurm`` (cores, memory,
processes, partition, gres, ...) that starts ``dask worker`` processes pointing back
at it. Only ``cluster.get_client`` calls this module: stages never know they run on
SLURM.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import tempfile
from collections import Counter
from typing import TYPE_CHECKING

from ngram_dask.config import SlurmConfig
from ngram_dask.errors import UserError

if TYPE_CHECKING:
    from dask_jobqueue import SLURMCluster

# A worker whose scheduler is gone (the client was killed, the login node rebooted)
# exits after this long, which ends its job instead of holding the nodes to the walltime.
DEATH_TIMEOUT_S = 60


def gres_has_gpu(gres: str | None) -> bool:
    return bool(gres) and any(part.split(":")[0] == "gpu" for part in gres.split(","))


def cluster_kwargs(cfg: SlurmConfig, environ: dict, dashboard_address: str, security=None,
                   silence_logs=None) -> dict:
    """``SLURMCluster`` arguments for ``cluster.slurm``: every one set here, so a user's
    ``jobqueue.yaml`` cannot change a job behind the config's back."""
    directives = list(cfg.job_extra)
    if cfg.gres:
        directives.insert(0, f"--gres={cfg.gres}")
    # The LocalCluster workers get these through Dask's pre-spawn-environ; a job's workers
    # read their own node's Dask config, so they are exported in the job script, where
    # they win over it (Dask's rule: the environment first).
    prologue = [f"export {k}={shlex.quote(str(v))}" for k, v in environ.items()] + list(cfg.prologue)
    return dict(
        cores=cfg.cores,
        memory=cfg.memory,
        processes=cfg.processes,
        walltime=cfg.walltime,
        queue=cfg.partition,
        account=cfg.account,
        job_name=cfg.job_name,
        local_directory=cfg.local_directory,
        log_directory=cfg.log_directory,
        job_extra_directives=directives,
        job_directives_skip=[],
        job_script_prologue=prologue,
        # one GPU per worker process: each score and scan unit then asks for GPU=1
        worker_extra_args=["--resources", "GPU=1"] if gres_has_gpu(cfg.gres) else [],
        interface=cfg.interface,
        python=cfg.python,
        death_timeout=DEATH_TIMEOUT_S,
        shebang="#!/usr/bin/env bash",
        security=security,
        scheduler_options={"dashboard_address": dashboard_address},
        silence_logs=silence_logs,
    )


def start(cfg: SlurmConfig, environ: dict, dashboard_address: str, security=None,
          silence_logs=None) -> SLURMCluster:
    """The cluster, its job script accepted by ``sbatch --test-only``, then scaled (or adaptive)."""
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        raise UserError("--slurm needs dask-jobqueue: pip install dask-jobqueue") from None
    cluster = SLURMCluster(**cluster_kwargs(cfg, environ, dashboard_address, security, silence_logs))
    try:
        test_submission(cluster.job_script(), cfg)
        if cfg.max_jobs:
            cluster.adapt(minimum_jobs=cfg.min_jobs, maximum_jobs=cfg.max_jobs)
        else:
            cluster.scale(jobs=cfg.jobs)
    except BaseException:
        cluster.close()
        raise
    return cluster


def describe(cfg: SlurmConfig) -> str:
    """The jobs asked for, as the start line and error messages name them."""
    jobs = f"{cfg.min_jobs}-{cfg.max_jobs} (adaptive)" if cfg.max_jobs else str(cfg.jobs)
    where = f"partition {cfg.partition}" if cfg.partition else "the default partition"
    gres = f", gres {cfg.gres}" if cfg.gres else ""
    return (f"{jobs} job(s) x {cfg.processes} worker(s) x {cfg.cores // cfg.processes} thread(s), "
            f"{cfg.memory} per job{gres}, {where}")


def expected_workers(cfg: SlurmConfig) -> int:
    """Workers the jobs asked for at the start bring (adaptive: its minimum)."""
    jobs = cfg.min_jobs if cfg.max_jobs else cfg.jobs
    return jobs * cfg.processes


def _slurm_command(argv: list[str], what: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise UserError(f"{argv[0]} not found: {what} needs SLURM's commands on this machine "
                        "(run from a login node, or inside a job)") from None
    except subprocess.TimeoutExpired:
        raise UserError(f"{argv[0]} did not answer within 60 s: is slurmctld up?") from None


def _last_error(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return "no reason given"
    return re.sub(r"^(sbatch: error: |allocation failure: )", "", lines[-1])


def test_submission(script: str, cfg: SlurmConfig) -> None:
    """``sbatch --test-only`` of the worker job: a partition, account, gres or size SLURM
    would refuse is one line now, not a stream of failed submissions later."""
    with tempfile.NamedTemporaryFile("w", suffix=".sh", prefix="ngram-dask-job-") as f:
        f.write(script)
        f.flush()
        r = _slurm_command(["sbatch", "--test-only", f.name], "--slurm")
    if r.returncode != 0:
        raise UserError(f"SLURM refuses the worker job ({describe(cfg)}): {_last_error(r.stderr or r.stdout)}")


def job_ids(cluster) -> list[str]:
    """Ids of the jobs submitted so far (a job whose sbatch has not returned has none)."""
    return [str(job.job_id) for job in list(cluster.workers.values()) if getattr(job, "job_id", None)]


def queue_state(ids: list[str]) -> str:
    """What ``squeue`` says of these jobs, in a few words: ``2 PENDING in partition gpu
    (Resources)``; jobs it no longer lists have ended (their output says why)."""
    if not ids:
        return "no job submitted yet (sbatch has not answered, or failed: -v shows its errors)"
    r = _slurm_command(["squeue", "-h", "-j", ",".join(ids), "-o", "%i|%T|%P|%r"], "--slurm")
    seen: dict[str, tuple[str, str, str]] = {}
    for line in r.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 4:
            seen[parts[0]] = (parts[1], parts[2], parts[3])
    groups = Counter(seen.values())
    said = [f"{n} {state} in partition {partition}" + (f" ({reason})" if reason not in ("None", "") else "")
            for (state, partition, reason), n in sorted(groups.items())]
    gone = [i for i in ids if i not in seen]
    if gone:
        said.append(f"{len(gone)} no longer queued (job {', '.join(gone)}: its output says why it ended)")
    return "; ".join(said)
