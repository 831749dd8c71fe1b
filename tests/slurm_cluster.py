"""A real SLURM cluster on this one host, for the SLURM tests: munge, slurmctld and two slurmd daemons
(nodes n1 and n2), started from a private config and stopped afterwards.

Nothing here mocks SLURM: jobs go through ``sbatch`` to slurmctld, which starts them on the slurmd
daemons. What the host needs, and where it comes from:

- the ``slurmctld slurmd slurm-client munge`` packages (installed with apt-get when missing and running
  as root; otherwise the tests are skipped with the reason);
- ``n1`` and ``n2`` resolving to 127.0.0.1 (torch.distributed connects to the first node by name), added
  to /etc/hosts when missing.

The config, state, spool and logs live in one temporary folder; ``SLURM_CONF`` points the client
commands (and the jobs) at it, so the host's own /etc/slurm is left alone.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Optional

NODES = ("n1", "n2")
TERMINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")
PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
BINARIES = ("slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "sacct", "munged")


def _run(*cmd: str, env: Optional[dict] = None, check: bool = True, timeout: float = 60,
         cwd: Optional[Path] = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, check=check, timeout=timeout, capture_output=True, text=True, cwd=cwd)


def install_reason() -> Optional[str]:
    """Installs SLURM and munge where missing; returns why the cluster cannot run here, or None."""
    if all(shutil.which(b) or os.path.exists(f"/usr/sbin/{b}") for b in BINARIES if b != "sacct"):
        return None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "SLURM is not installed and cannot be installed here (needs root and apt-get for " + " ".join(PACKAGES) + ")"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    done = _run("apt-get", "install", "-y", "-q", *PACKAGES, env=env, check=False, timeout=900)
    if done.returncode != 0:
        done = _run("sh", "-c", "apt-get update -q && apt-get install -y -q " + " ".join(PACKAGES), env=env,
                    check=False, timeout=900)
    if done.returncode != 0:
        return f"apt-get install {' '.join(PACKAGES)} failed: {done.stderr.strip()[-400:]}"
    return None


def _ensure_hosts() -> None:
    missing = []
    for name in NODES:
        try:
            socket.gethostbyname(name)
        except OSError:
            missing.append(name)
    if missing:
        with open("/etc/hosts", "a") as hosts:
            hosts.write(f"\n127.0.0.1 {' '.join(missing)}  # lit_rl SLURM test nodes\n")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalSlurm:
    """``start()`` brings up the cluster in ``root``; ``stop()`` ends every daemon it started."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.conf = self.root / "slurm.conf"
        self.procs: list[str] = []  # pid files of the daemons started here
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    # ------------------------------------------------------------------ config
    def _write_config(self) -> None:
        cpus = max(1, os.cpu_count() or 1)
        for sub in ("state", "spool", "log", "run"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        ctld_port = _free_port()
        lines = [
            "ClusterName=litrl",
            f"SlurmctldHost={socket.gethostname()}(127.0.0.1)",
            f"SlurmctldPort={ctld_port}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            f"StateSaveLocation={self.root / 'state'}",
            f"SlurmdSpoolDir={self.root / 'spool'}/%n",
            f"SlurmctldLogFile={self.root / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={self.root / 'log'}/slurmd.%n.log",
            f"SlurmctldPidFile={self.root / 'run' / 'slurmctld.pid'}",
            f"SlurmdPidFile={self.root / 'run'}/slurmd.%n.pid",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "SchedulerType=sched/backfill",
            "ReturnToService=2",
            "JobRequeue=1",
            "MpiDefault=none",
            "KillWait=10",
            "MinJobAge=600",
            "SlurmctldTimeout=30",
            "SlurmdTimeout=60",
            "InactiveLimit=0",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
        ]
        for i, name in enumerate(NODES):
            lines.append(f"NodeName={name} NodeHostname={socket.gethostname()} NodeAddr=127.0.0.1 "
                         f"Port={_free_port()} CPUs={cpus} State=UNKNOWN")
        lines.append(f"PartitionName=debug Nodes={','.join(NODES)} Default=YES MaxTime=INFINITE State=UP")
        self.conf.write_text("\n".join(lines) + "\n")

    # ------------------------------------------------------------------ life cycle
    def start(self, timeout: float = 60) -> None:
        _ensure_hosts()
        self._write_config()
        self._start_munge()
        _run("/usr/sbin/slurmctld", "-f", str(self.conf), env=self.env)
        self.procs.append(str(self.root / "run" / "slurmctld.pid"))
        for name in NODES:
            _run("/usr/sbin/slurmd", "-f", str(self.conf), "-N", name, env=self.env)
            self.procs.append(str(self.root / "run" / f"slurmd.{name}.pid"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = _run("sinfo", "-h", "-N", "-o", "%N %t", env=self.env, check=False).stdout.split()
            states = dict(zip(out[::2], out[1::2]))
            if all(states.get(n) in ("idle", "alloc", "mix") for n in NODES):
                return
            time.sleep(1)
        raise RuntimeError(f"the SLURM nodes did not come up in {timeout:.0f} s: {states}\n{self.logs()}")

    def _start_munge(self) -> None:
        if _run("munge", "-n", check=False).returncode == 0:
            return  # a munged is already running
        key = Path("/etc/munge/munge.key")
        if not key.exists():
            _run("sh", "-c", "mungekey --create 2>/dev/null || create-munge-key -f")
        Path("/run/munge").mkdir(parents=True, exist_ok=True)
        shutil.chown("/run/munge", "munge", "munge")
        _run("runuser", "-u", "munge", "--", "/usr/sbin/munged")
        self.procs.append("/run/munge/munged.pid")

    def stop(self) -> None:
        if self.conf.exists():
            _run("scancel", "--full", "-u", "root", env=self.env, check=False)
        for pidfile in reversed(self.procs):
            try:
                os.kill(int(Path(pidfile).read_text().split()[0]), 15)
            except (OSError, ValueError):
                pass
        self.procs.clear()

    def logs(self) -> str:
        parts = []
        for log in sorted((self.root / "log").glob("*.log")):
            parts.append(f"--- {log.name}\n" + "\n".join(log.read_text().splitlines()[-30:]))
        return "\n".join(parts)

    # ------------------------------------------------------------------ jobs
    def sbatch(self, script: Path, options: list[str], args: list[str], cwd: Path, env: Optional[dict] = None) -> str:
        """``sbatch [options] script [args]`` from ``cwd``; returns the job id."""
        done = _run("sbatch", "--parsable", *options, str(script), *args, env={**self.env, **(env or {})},
                    check=False, cwd=cwd)
        if done.returncode != 0:
            raise RuntimeError(f"sbatch failed: {done.stderr}")
        return done.stdout.strip().split(";")[0]

    def _records(self, job: str) -> list[dict[str, str]]:
        """``scontrol show job`` as one dict of fields per job (per task, for an array)."""
        out = _run("scontrol", "show", "job", job, "-o", env=self.env, check=False).stdout
        return [dict(f.split("=", 1) for f in line.split() if "=" in f) for line in out.splitlines()]

    def states(self, job: str) -> list[str]:
        """The state of the job, or of each task of a job array."""
        return [record["JobState"] for record in self._records(job) if "JobState" in record]

    def state(self, job: str) -> str:
        states = self.states(job)
        return states[0] if states else "UNKNOWN"

    def field(self, job: str, name: str) -> str:
        records = self._records(job)
        return records[0].get(name, "") if records else ""

    def wait(self, job: str, timeout: float, until: tuple[str, ...] = TERMINAL) -> str:
        """Waits until the job (every task of an array) is in one of ``until``; returns the state (the
        first task's that is not COMPLETED, for an array)."""
        deadline = time.monotonic() + timeout
        while True:
            states = self.states(job) or ["UNKNOWN"]
            if all(s in until for s in states) or time.monotonic() > deadline:
                return next((s for s in states if s != "COMPLETED"), states[0])
            time.sleep(1)
