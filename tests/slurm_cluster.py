"""A real single-node Slurm cluster for tests, started as root in a folder of the test run.

:func:`start_cluster` starts a private ``munged`` (its own key, and its own socket, so the
cluster neither needs nor disturbs a machine-wide MUNGE), then ``slurmctld`` and ``slurmd`` with
a generated ``slurm.conf`` whose ports the OS chose and whose state, pid and log files all live
in the folder (the config, the socket and slurmd's spool in one beside it that every user may
reach); it returns once ``sinfo`` reports the node idle. The Slurm commands find the cluster
through ``SLURM_CONF`` (:attr:`SlurmCluster.env`), so several clusters can run side by side on
one machine.

:func:`stop_cluster` cancels the cluster's jobs, stops every daemon by its PID and checks that no
process of the cluster is left. Import it with ``from slurm_cluster import start_cluster``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "DOWN_PARTITION",
    "GPUS",
    "SHORT_PARTITION",
    "SLURM_PROGRAMS",
    "SlurmCluster",
    "cluster_processes",
    "processes_mentioning",
    "running_cluster",
    "running_job_ids",
    "start_cluster",
    "stop_cluster",
]

#: Programs a test cluster needs (Debian: slurmctld, slurmd, slurm-client, munge).
SLURM_PROGRAMS: tuple[str, ...] = (
    "munged",
    "slurmctld",
    "slurmd",
    "slurmstepd",
    "sbatch",
    "squeue",
    "scancel",
    "scontrol",
    "sinfo",
)

#: A partition whose State is DOWN: jobs submitted to it stay PENDING (PartitionDown).
DOWN_PARTITION = "closed"
#: A partition with a one-minute MaxTime: a job asking for more stays PENDING
#: (PartitionConfig).
SHORT_PARTITION = "short"
#: What the node's GPUs are in gres.conf: devices that are not GPUs, which Slurm counts.
GPU_STAND_INS = ("/dev/null", "/dev/zero")
#: GPUs the node has, as Slurm counts them.
GPUS = len(GPU_STAND_INS)

_DAEMON_STOP_TIMEOUT = 15.0


@dataclass
class SlurmCluster:
    """A running test cluster.

    Attributes:
        folder: the cluster's state and logs live here.
        conf: its ``slurm.conf``, readable by every user, beside the munge socket.
        node: the one node's name (this machine's short host name).
        partition: the default partition's name.
        env: what a process needs in its environment to use the cluster (``SLURM_CONF``).
        munge_socket: the private munged's socket (in a folder of its own with the config,
            see :func:`start_cluster`).
        pids: daemon name -> PID, for the daemons this cluster started.
    """

    folder: Path
    conf: Path
    node: str
    partition: str
    env: dict[str, str]
    munge_socket: Path
    pids: dict[str, int] = field(default_factory=dict)

    def run(self, *argv: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
        """Run a Slurm command against this cluster; its output is returned, not checked."""
        return subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **self.env},
            check=False,
        )

    def log(self, daemon: str) -> str:
        """The log of ``slurmctld``, ``slurmd`` or ``munged``, for failure messages."""
        path = self.folder / f"{daemon}.log"
        return path.read_text(errors="replace") if path.exists() else f"({path} does not exist)"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _comm(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


def _alive(pid: int) -> bool:
    """Exists and is not a zombie (PID 1 may take seconds to reap an orphan)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2 :].split()[0] != "Z"


def _read_pid(pid_file: Path, comm: str) -> int | None:
    """The PID in a pid file, if that process is alive and really is ``comm``."""
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    # PIDs wrap: a stale pid file may name an unrelated process by now.
    return pid if _alive(pid) and _comm(pid) == comm else None


def _wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} (waited {timeout:g} s)")
        time.sleep(0.05)


def _start_daemon(
    argv: list[str], pid_file: Path, comm: str, env: dict[str, str], timeout: float
) -> int:
    """Run a daemon that forks and writes a pid file; return the daemon's PID."""
    result = subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
        start_new_session=True,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} exited with {result.returncode}: {result.stderr.strip()}"
        )
    found: list[int] = []

    def started() -> bool:
        pid = _read_pid(pid_file, comm)
        if pid is not None:
            found.append(pid)
        return pid is not None

    _wait_for(started, timeout, f"{comm} wrote no pid file {pid_file}")
    return found[0]


def _stop_pid(pid: int, comm: str, timeout: float = _DAEMON_STOP_TIMEOUT) -> bool:
    """SIGTERM, wait, then SIGKILL. Returns False if SIGKILL was needed."""
    if _comm(pid) != comm:
        return True
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if not _alive(pid):
        return True
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    _wait_for(lambda: not _alive(pid), 5.0, f"{comm} ({pid}) survived SIGKILL")
    return False


def _slurm_conf(folder: Path, public: Path, node: str, partition: str) -> str:
    # At least 4 CPUs, whatever the machine has, so that concurrent test jobs (one CPU each)
    # never queue behind each other; config_overrides keeps slurmd from draining the node for
    # having fewer CPUs than configured.
    cpus = max(4, os.cpu_count() or 1)
    return "\n".join(
        [
            "# A single-node test cluster (tests/slurm_cluster.py).",
            f"ClusterName=vizgate{secrets.token_hex(3)}",
            f"SlurmctldHost={node}(127.0.0.1)",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={public / 'munge.socket'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "SchedulerParameters=batch_sched_delay=0",
            "ReturnToService=2",
            "MpiDefault=none",
            "SwitchType=switch/none",
            "MailProg=/bin/true",
            "SlurmdParameters=config_overrides",
            f"StateSaveLocation={folder / 'state'}",
            f"SlurmdSpoolDir={public / 'spool'}",
            f"SlurmctldPidFile={folder / 'slurmctld.pid'}",
            f"SlurmdPidFile={folder / 'slurmd.pid'}",
            f"SlurmctldLogFile={folder / 'slurmctld.log'}",
            f"SlurmdLogFile={folder / 'slurmd.log'}",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "JobCompType=jobcomp/none",
            "MinJobAge=300",
            "KillWait=5",
            # Two GPUs that Slurm only counts (gres.conf): jobs can ask for them with --gpus.
            "GresTypes=gpu",
            f"NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=1024 Gres=gpu:{GPUS} "
            "State=UNKNOWN",
            f"PartitionName={partition} Nodes={node} Default=YES MaxTime=INFINITE State=UP",
            # Jobs can be submitted here but never run: for tests of jobs that cannot start.
            f"PartitionName={DOWN_PARTITION} Nodes={node} MaxTime=INFINITE State=DOWN",
            f"PartitionName={SHORT_PARTITION} Nodes={node} MaxTime=1 State=UP",
            "",
        ]
    )


def start_cluster(folder: Path, timeout: float = 30.0) -> SlurmCluster:
    """Start munged, slurmctld and slurmd for a one-node cluster living in ``folder``.

    Must run as root (slurmd starts jobs as their users). On failure, whatever was started is
    stopped again and the daemons' logs are in the error.

    Raises:
        RuntimeError: a daemon did not start or the node did not become idle.
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "state").mkdir(mode=0o700, exist_ok=True)
    node = socket.gethostname().split(".")[0]
    partition = "debug"
    # munged insists that everyone may traverse its socket's folder, and users other than root
    # read slurm.conf when they submit jobs; a test's temporary folder (0700 under a 0700
    # parent) allows neither, so both get a folder of their own.
    # So does slurmd's spool, from which jobs run their batch scripts as their users.
    public = Path(tempfile.mkdtemp(prefix="vizgate-slurm-"))
    public.chmod(0o711)
    (public / "spool").mkdir(mode=0o755)
    munge_socket = public / "munge.socket"
    conf = public / "slurm.conf"
    conf.write_text(_slurm_conf(folder, public, node, partition))
    conf.chmod(0o644)
    gres = public / "gres.conf"
    # Slurm counts a GPU per device file; /dev/null and /dev/zero stand in (task/none binds
    # nothing to them). A count without files is ignored by Slurm 22.05's gpu plugin.
    gres.write_text(f"NodeName={node} Name=gpu File={','.join(GPU_STAND_INS)}\n")
    gres.chmod(0o644)
    cluster = SlurmCluster(
        folder=folder,
        conf=conf,
        node=node,
        partition=partition,
        env={"SLURM_CONF": str(conf)},
        munge_socket=munge_socket,
    )
    env = {**os.environ, **cluster.env}
    try:
        key = folder / "munge.key"
        descriptor = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(secrets.token_bytes(1024))
        cluster.pids["munged"] = _start_daemon(
            [
                shutil.which("munged") or "/usr/sbin/munged",
                f"--socket={munge_socket}",
                f"--key-file={key}",
                f"--pid-file={folder / 'munged.pid'}",
                f"--log-file={folder / 'munged.log'}",
                f"--seed-file={folder / 'munged.seed'}",
            ],
            folder / "munged.pid",
            "munged",
            env,
            timeout,
        )
        cluster.pids["slurmctld"] = _start_daemon(
            [shutil.which("slurmctld") or "slurmctld", "-f", str(conf)],
            folder / "slurmctld.pid",
            "slurmctld",
            env,
            timeout,
        )
        cluster.pids["slurmd"] = _start_daemon(
            [shutil.which("slurmd") or "slurmd", "-f", str(conf)],
            folder / "slurmd.pid",
            "slurmd",
            env,
            timeout,
        )

        def node_idle() -> bool:
            result = cluster.run("sinfo", "-h", "-N", "-p", partition, "-o", "%T")
            return result.returncode == 0 and result.stdout.strip() == "idle"

        _wait_for(node_idle, timeout, "the Slurm node did not become idle")
    except BaseException as exc:
        logs = "\n".join(
            f"--- {name}.log ---\n{cluster.log(name)[-3000:]}"
            for name in ("munged", "slurmctld", "slurmd")
        )
        with contextlib.suppress(Exception):
            stop_cluster(cluster)
        if isinstance(exc, Exception):
            raise RuntimeError(f"the test Slurm cluster did not start: {exc}\n{logs}") from exc
        raise
    return cluster


def running_job_ids(cluster: SlurmCluster) -> list[str]:
    """Ids of the cluster's jobs that are pending, running or completing."""
    result = cluster.run("squeue", "-h", "-o", "%i")
    if result.returncode != 0:
        raise RuntimeError(f"squeue failed: {result.stderr.strip()}")
    return result.stdout.split()


def cluster_processes(cluster: SlurmCluster) -> dict[int, str]:
    """Live processes that belong to the cluster: its folders (the config's too) in their
    command line or environment (daemons, slurmstepd, job processes). PID -> command line."""
    return {**processes_mentioning(cluster.folder), **processes_mentioning(cluster.conf.parent)}


def processes_mentioning(path: Path) -> dict[int, str]:
    """Live processes (not this one) with ``path`` in their command line or environment.

    PID -> command line. Only root can read every process's environment.
    """
    marker = str(path).encode()
    found: dict[int, str] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid = int(entry.name)
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if (marker in cmdline or marker in environ) and _alive(pid):
            found[pid] = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
    return found


def stop_cluster(cluster: SlurmCluster) -> None:
    """Cancel every job, stop slurmd, slurmctld and munged by PID, and check nothing is left.

    Raises:
        AssertionError: a job or a process of the cluster outlived the shutdown (it is killed
            first, so a failing test still leaves the machine clean).
    """
    problems: list[str] = []
    if "slurmctld" in cluster.pids:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            jobs = running_job_ids(cluster)
            if jobs:
                cluster.run("scancel", "--full", *jobs)
        try:
            _wait_for(
                lambda: not running_job_ids(cluster), _DAEMON_STOP_TIMEOUT, "jobs still listed"
            )
        except (TimeoutError, RuntimeError, subprocess.TimeoutExpired) as exc:
            problems.append(f"jobs did not end: {exc}")
    for daemon in ("slurmd", "slurmctld", "munged"):
        pid = cluster.pids.pop(daemon, None)
        if pid is not None and not _stop_pid(pid, daemon):
            problems.append(f"{daemon} ({pid}) ignored SIGTERM for {_DAEMON_STOP_TIMEOUT:g} s")
    shutil.rmtree(cluster.munge_socket.parent, ignore_errors=True)
    leftovers = cluster_processes(cluster)
    for pid, cmdline in leftovers.items():
        problems.append(f"left running: {pid} {cmdline}")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if problems:
        raise AssertionError("the test Slurm cluster did not stop cleanly:\n" + "\n".join(problems))


@contextlib.contextmanager
def running_cluster(folder: Path, timeout: float = 30.0) -> Iterator[SlurmCluster]:
    """:func:`start_cluster` and, on leaving, :func:`stop_cluster`."""
    cluster = start_cluster(folder, timeout)
    try:
        yield cluster
    finally:
        stop_cluster(cluster)
