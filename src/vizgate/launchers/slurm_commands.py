"""A thin typed layer over Slurm's command-line tools: ``sbatch``, ``squeue`` and ``scancel``.

The built-in Slurm launcher (:mod:`vizgate.launchers.slurm`) asks Slurm everything through these
helpers. They run the programs with :mod:`subprocess` (an argv list, never a shell string)
rather than through pyslurm, which is built for one Slurm release (the one on PyPI refuses
Debian's 22.05). A program that is missing, or a controller that does not answer, raises
:class:`SlurmUnavailableError`; what a command prints is returned for the caller to judge.

* :func:`run_command` runs one command with a timeout; :func:`first_line` and
  :func:`command_error` turn its output into a job id or a one-line error.
* :func:`job_status` asks ``squeue`` about a job, finished ones included (``-t all``; ``sacct``
  tells nothing on a cluster without accounting), as a :class:`JobStatus`;
  :data:`ENDED_STATES` are the states after which a job never runs again.
* :func:`job_environment` is the environment ``sbatch`` and its jobs get.

A job inherits only a few variables of the gateway's environment (:data:`JOB_ENVIRONMENT`, plus
``SLURM_*`` and ``SBATCH_*``), so that nothing else of it (database URLs, secret keys) reaches
jobs: ``sbatch`` runs in that reduced environment with ``--export=ALL``. (Naming the variables
with ``--export=PATH,HOME,...`` instead would make Slurm build the rest from a login shell of the
user on the node, ``su - USER``, which runs login scripts and can take seconds or hang.) Give a
job more with ``"sbatch_args": ["--export=ALL,NAME=value"]``.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import re
import subprocess
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vizgate.launchers.job_owner import JobOwner

__all__ = [
    "ENDED_STATES",
    "JOB_ENVIRONMENT",
    "NEVER_RUNS_REASONS",
    "JobStatus",
    "SlurmUnavailableError",
    "command_error",
    "first_line",
    "job_environment",
    "job_status",
    "reason_in_words",
    "run_command",
]

#: Variables of the gateway's environment that its jobs inherit, besides ``SLURM_*`` and
#: ``SBATCH_*`` (which also configure sbatch itself).
JOB_ENVIRONMENT: tuple[str, ...] = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LC_ALL",
    "TZ",
    "LD_LIBRARY_PATH",
)
_JOB_ENVIRONMENT_PREFIXES = ("SLURM_", "SBATCH_")

#: Job states after which a job never runs again (squeue's long names).
ENDED_STATES = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "REVOKED",
        "SPECIAL_EXIT",
        "TIMEOUT",
    }
)

#: Reasons of a pending job that mean it will not start without someone changing the cluster or
#: the request: waiting for them would only make the user wait for the start timeout.
NEVER_RUNS_REASONS = frozenset(
    {
        "AccountNotAllowed",
        "BadConstraints",
        "DependencyNeverSatisfied",
        "InvalidAccount",
        "InvalidQOS",
        "PartitionConfig",
        "PartitionDown",
        "PartitionInactive",
        "PartitionNodeLimit",
        "PartitionTimeLimit",
        "QOSNotAllowed",
        "ReqNodeNotAvail",
    }
)

# One Slurm command may take this long (Slurm's own MessageTimeout is 10 s).
_COMMAND_TIMEOUT = 20.0


class SlurmUnavailableError(Exception):
    """A Slurm command could not be run or could not reach the controller."""


@dataclasses.dataclass(frozen=True)
class JobStatus:
    """What ``squeue`` says about a job.

    Attributes:
        state: the long state name, e.g. ``PENDING``, ``RUNNING``, ``CANCELLED``.
        reason: why it is in that state, e.g. ``Resources``; ``None`` when there is no reason.
        node: the node list, empty while pending.
        end: when the job will end by its time limit, as squeue prints it (local time,
            ``2026-11-29T18:00:00``), or ``N/A``, ``Unknown``, "".
    """

    state: str
    reason: str
    node: str
    end: str = ""

    @property
    def end_timestamp(self) -> float | None:
        """:attr:`end` in seconds since the epoch, or None when squeue gave no time."""
        try:
            return datetime.datetime.fromisoformat(self.end).timestamp()
        except ValueError:
            return None

    @property
    def reason_code(self) -> str:
        """The reason without details: ``ReqNodeNotAvail, UnavailableNodes:n1`` gives
        ``ReqNodeNotAvail``."""
        return self.reason.split(",", 1)[0].strip()

    def describe(self) -> str:
        """``PENDING (Resources): waiting for free resources``: the state, Slurm's reason and,
        for the reasons users meet most, what it means in words (:func:`reason_in_words`);
        the bare state when there is no reason."""
        if not self.reason or self.reason == "None":
            return self.state
        words = reason_in_words(self.reason_code)
        return f"{self.state} ({self.reason})" + (f": {words}" if words else "")


#: Slurm's pending reasons that users meet most, in words (squeue(1), "JOB REASON CODES").
_REASON_WORDS: dict[str, str] = {
    "Resources": "waiting for free resources",
    "Priority": "waiting behind jobs of higher priority",
    "Dependency": "waiting for the jobs it depends on",
    "BeginTime": "waiting for its earliest start time",
    "JobHeldUser": "held by its user",
    "JobHeldAdmin": "held by an administrator",
    "Licenses": "waiting for licenses",
    "Reservation": "waiting for its reservation",
    "NodeDown": "a node it needs is down",
    "ReqNodeNotAvail": "the nodes it needs are not available",
    "BadConstraints": "no node has what it asks for",
    "PartitionDown": "its partition is down",
    "PartitionInactive": "its partition runs no jobs",
    "PartitionConfig": "it asks for more than its partition allows",
    "PartitionTimeLimit": "it asks for more time than its partition allows",
    "PartitionNodeLimit": "it asks for more nodes than its partition allows",
    "InvalidAccount": "its account is not valid",
    "InvalidQOS": "its quality of service is not valid",
    "AccountNotAllowed": "its account may not use the partition",
    "QOSNotAllowed": "its quality of service may not use the partition",
}


def reason_in_words(code: str) -> str:
    """What a pending reason code means for the person waiting; "" when it has no words here.

    The limits of accounts and qualities of service (``QOSMaxJobsPerUserLimit``,
    ``AssocGrpCpuLimit``, ...) all read as one: the user's share of the cluster is in use.
    """
    if code in _REASON_WORDS:
        return _REASON_WORDS[code]
    if code.startswith(("QOSMax", "QOSGrp", "AssocMax", "AssocGrp")) and code.endswith("Limit"):
        return "a limit of its account or quality of service is reached"
    return ""


def job_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The part of ``environ`` (default: this process's) that ``sbatch`` and its jobs get."""
    source = os.environ if environ is None else environ
    return {
        name: value
        for name, value in source.items()
        if name in JOB_ENVIRONMENT or name.startswith(_JOB_ENVIRONMENT_PREFIXES)
    }


def run_command(
    argv: list[str], env: Mapping[str, str] | None = None, owner: JobOwner | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a Slurm command (an argv list, never a shell string), as ``owner`` when given (the
    account a session runs as, :meth:`vizgate.launchers.job_owner.JobOwner.command`; then
    ``env`` defaults to :func:`job_environment`).

    Raises:
        SlurmUnavailableError: the program is missing or did not answer in time.
    """
    ids: dict[str, Any] = {}
    if owner is not None and owner.switch:
        argv, env, ids = owner.command(argv, job_environment() if env is None else env)
    try:
        return subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=_COMMAND_TIMEOUT,
            check=False,
            env=env,
            **ids,
        )
    except subprocess.TimeoutExpired:
        raise SlurmUnavailableError(
            f"{argv[0]} did not answer within {_COMMAND_TIMEOUT:g} s"
        ) from None
    except OSError as exc:
        raise SlurmUnavailableError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None


def first_line(text: str) -> str:
    """The first line of ``text`` that is not blank, stripped; ``""`` when there is none."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else ""


def command_error(program: str, stderr: str, returncode: int) -> str:
    """A Slurm command's error lines, joined, without their ``sbatch: error:`` prefixes."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line or "fatal:" in line] or lines
    prefix = re.compile(rf"^{re.escape(program)}:\s*((error|fatal):\s*)?")
    cleaned = list(dict.fromkeys(prefix.sub("", line) for line in errors))
    if not cleaned:
        return f"{program} exited with status {returncode}"
    text = "; ".join(cleaned)
    return text if len(text) <= 300 else text[:297] + "..."


def job_status(job_id: str, owner: JobOwner | None = None) -> JobStatus | None:
    """Ask ``squeue`` about a job, finished ones included (as ``owner``, if given).

    Returns:
        The job's status, or None when Slurm does not know the job (never submitted, or
        finished longer ago than the cluster's ``MinJobAge``).

    Raises:
        SlurmUnavailableError: squeue is missing or cannot reach the controller.
    """
    result = run_command(
        ["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T|%r|%N|%e"], owner=owner
    )
    if result.returncode != 0:
        if "Invalid job id" in result.stderr:
            return None
        raise SlurmUnavailableError(
            first_line(result.stderr) or f"squeue exited with {result.returncode}"
        )
    line = first_line(result.stdout)
    if not line:
        return None
    state, reason, node, end = [field.strip() for field in [*line.split("|"), "", "", ""][:4]]
    return JobStatus(state=state, reason=reason, node=node, end=end)
