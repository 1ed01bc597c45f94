"""A real one-node SLURM on this machine for the tests: ``munged``, ``slurmctld`` and
``slurmd`` from Debian's ``munge`` and ``slurm-wlm``, with a config written here.

Everything lives in one folder under /tmp (the munge user must reach its socket, so not
under pytest's root-only tmp dirs): the munge key, the config, state, spool and logs.
Ports are picked free; the daemons are children of the test process and are stopped
(jobs cancelled first) by ``stop``. Partitions: ``debug`` (the default) and ``down``
(state DOWN: a job there pends with reason PartitionDown).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from conftest import free_port

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo")
CPUS = 2


def why_not() -> str | None:
    """Why SLURM cannot run here (None: it can)."""
    if os.geteuid() != 0:
        return "a local SLURM needs root (slurmd runs jobs as their users)"
    missing = [d for d in DAEMONS if shutil.which(d) is None]
    if missing:
        return (f"{', '.join(missing)} not installed: apt-get install slurm-wlm munge "
                "(scripts/test.sh does as root) to run the SLURM tests")
    try:
        pwd.getpwnam("munge")
    except KeyError:
        return "no munge user (Debian's munge package creates it)"
    return None


class LocalSlurm:
    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="ngram-slurm-", dir="/tmp"))
        self.root.chmod(0o755)
        self.node = socket.gethostname().split(".")[0]
        self.conf = self.root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.procs: list[subprocess.Popen] = []

    # --- daemons ---------------------------------------------------------------------------

    def start(self) -> "LocalSlurm":
        munge = pwd.getpwnam("munge")
        mdir = self.root / "munge"
        mdir.mkdir()
        key = mdir / "munge.key"
        key.write_bytes(os.urandom(1024))
        for p in (mdir, key):
            os.chown(p, munge.pw_uid, munge.pw_gid)
        key.chmod(0o600)
        self.socket = mdir / "munge.socket"
        self._spawn(["munged", "--foreground", f"--socket={self.socket}", f"--key-file={key}",
                     f"--log-file={mdir / 'munged.log'}", f"--pid-file={mdir / 'munged.pid'}",
                     f"--seed-file={mdir / 'munged.seed'}"], "munged", user=munge.pw_uid, group=munge.pw_gid)
        self._wait(lambda: self.socket.exists(), "munged's socket", mdir / "munged.log")
        for sub in ("state", "spool", "log"):
            (self.root / sub).mkdir()
        self.conf.write_text(self._config(free_port(), free_port()))
        self._spawn(["slurmctld", "-D", "-i", "-f", str(self.conf)], "slurmctld")
        self._spawn(["slurmd", "-D", "-f", str(self.conf)], "slurmd")
        self._wait(self._node_idle, f"node {self.node} idle", self.root / "log" / "slurmd.log")
        return self

    def _config(self, ctld_port: int, slurmd_port: int) -> str:
        memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1 << 20)
        r = self.root
        return f"""\
ClusterName=ngramtest
SlurmctldHost={self.node}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.socket}
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=5
KillWait=5
Waittime=0
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={CPUS} RealMemory={memory_mb * 3 // 4} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
PartitionName=down Nodes=ALL Default=NO MaxTime=INFINITE State=DOWN
"""

    def _spawn(self, argv: list[str], name: str, **kw) -> None:
        log = open(self.root / f"{name}.stdout", "w")
        self.procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, **kw))
        log.close()

    def _wait(self, ready, what: str, log: Path, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            dead = [p.args[0] for p in self.procs if p.poll() is not None]
            if dead:
                break
            time.sleep(0.2)
        tail = log.read_text()[-2000:] if log.exists() else "(no log)"
        self.stop()
        raise RuntimeError(f"local SLURM: no {what} (exited: {dead or 'none'}); {log}:\n{tail}")

    def _node_idle(self) -> bool:
        r = self.run("sinfo", "-h", "-p", "debug", "-o", "%T", check=False)
        return r.returncode == 0 and r.stdout.strip() == "idle"

    def stop(self) -> None:
        """Cancel every job, wait for them to end, stop the daemons, remove the folder."""
        if any(p.poll() is None for p in self.procs[1:]):
            self.run("scancel", "--user", "root", check=False)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and self.jobs():
                time.sleep(0.5)
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
        for p in reversed(self.procs):
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs.clear()
        shutil.rmtree(self.root, ignore_errors=True)

    # --- commands --------------------------------------------------------------------------

    def run(self, *argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        r = subprocess.run(list(argv), capture_output=True, text=True, env=self.env, timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: {r.stderr.strip()}")
        return r

    def jobs(self, name: str | None = None) -> list[dict]:
        """Queued and running jobs (optionally of one name): id, state, partition, reason."""
        r = self.run("squeue", "-h", "-o", "%i|%T|%P|%r|%j", check=False)
        out = []
        for line in r.stdout.splitlines():
            job, state, partition, reason, job_name = line.split("|")
            if name is None or job_name == name:
                out.append({"id": job, "state": state, "partition": partition, "reason": reason})
        return out

    def logs(self) -> str:
        """The daemons' log tails, for a failing test's message."""
        parts = []
        for log in sorted((self.root / "log").glob("*.log")):
            parts.append(f"--- {log.name}\n{log.read_text()[-1500:]}")
        return "\n".join(parts)
