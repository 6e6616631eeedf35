"""Sessions that are Slurm batch jobs: a password-protected Xvnc on a compute node.

Use it from ``external_services.json`` with the built-in script name::

    "Cluster Desktop": {"script": "builtin:slurm", "count": 4,
                        "options": {"sizes": ["1600x1200"], "partition": "viz",
                                    "time_limit": "8:00:00", "sbatch_args": ["--gres=gpu:1"]}}

Each instance's ``start()`` creates a private folder for the session (mode 0700, named by type,
index and a random suffix: Slurm job ids restart at 1 on a fresh cluster, so they never name
anything alone), writes a fresh VNC password into it in TigerVNC's ``passwd`` format (0600), and
submits ``slurm_job.sh`` (beside this file) with ``sbatch``. The job starts Xvnc on a free display
and port of its node and writes ``HOST PORT`` to the folder's ``connection`` file; ``start()``
polls the job's state (reporting it, e.g. ``PENDING (Resources)``, with
:meth:`~vizgate.scripts.RemoteServiceScript.report_progress`) until the job runs and the file is
there. The gateway answers Xvnc's password challenge itself; the browser never sees the password.

The session folder must therefore be visible from the compute nodes under the same path (home
directories on a shared file system usually are). Jobs run as the user that runs vizgate, unless
``run_as`` is ``"user"``: then each session's job, folder and files belong to the Unix account of
its portal user (:mod:`vizgate.launchers.job_owner`).

When a session cannot start, ``start()`` returns False after calling ``report_progress`` with a
message for the person waiting that carries Slurm's state and reason (e.g. ``Slurm job 12 cannot
run: PENDING (BadConstraints)``, or sbatch's own error); that last progress message is the
user-facing reason of the failure. The same line goes to stderr for the admin.

Its options (``partition``, ``time_limit``, ``sbatch_args``, ``xvnc``, ``state_dir``, ``run_as``,
``min_uid``, ``start_timeout``, and the ``choices`` users pick among) are described, and
checked, in :mod:`vizgate.launchers.slurm_options`.

Jobs are submitted with ``--export=ALL`` from a reduced environment, so a job inherits only a few
variables of the gateway's (:data:`~vizgate.launchers.slurm_commands.JOB_ENVIRONMENT`, plus
``SLURM_*`` and ``SBATCH_*``; :mod:`vizgate.launchers.slurm_commands` says why). Give a job more
with ``"sbatch_args": ["--export=ALL,NAME=value"]``. That module also runs every Slurm command
(``sbatch``, ``squeue``, ``scancel``) for this one; this one is the session script.

For a restarted gateway, :meth:`SlurmSession.get_state` / :meth:`SlurmSession.load_state` hold
what it takes to re-adopt a running job (job id, folder, host, port; never the password, which is
read back from the folder).
"""

from __future__ import annotations

import contextlib
import re
import secrets
import socket
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vizgate.launchers.job_owner import DEFAULT_MIN_UID, JobOwner, JobOwnerError, OwnerFiles
from vizgate.launchers.slurm_commands import (
    ENDED_STATES,
    NEVER_RUNS_REASONS,
    SlurmUnavailableError,
    command_error,
    first_line,
    job_environment,
    job_status,
    run_command,
)
from vizgate.launchers.slurm_options import RESOURCE_OPTIONS, check_options
from vizgate.scripts import RemoteServiceScript
from vizgate.vnc_password import VncPasswordFileError, obfuscate_vnc_password, vnc_password_of
from vizgate.window_sizes import DEFAULT_SIZES

__all__ = [
    "DEFAULT_START_TIMEOUT",
    "DEFAULT_STATE_DIR",
    "JOB_SCRIPT",
    "NEVER_RUNS_REASONS",
    "USER_CHOSEN_OPTIONS",
    "SlurmSession",
    "job_script_said",
    "realize_service",
]

#: The options users may pick per session when the type's ``choices`` offer them.
USER_CHOSEN_OPTIONS = ("partition", "time_limit", *RESOURCE_OPTIONS)

#: The batch script every session job runs.
JOB_SCRIPT = Path(__file__).resolve().parent / "slurm_job.sh"

#: Where session folders are made unless the ``state_dir`` option says otherwise.
DEFAULT_STATE_DIR = "~/.local/state/vizgate/slurm"

#: The broker's default start timeout, which ``start()`` stays within.
DEFAULT_START_TIMEOUT = 120.0

# The colour depth of every session's desktop.
_DEPTH = 24
# How often start() asks Slurm about the job.
_POLL_INTERVAL = 0.5
# start() stops waiting this much (at most) before the broker's start timeout.
_START_MARGIN = 5.0
# How long stop() waits for the job to end and its port to close.
_STOP_TIMEOUT = 15.0
# A TCP connection attempt to the session's port gives up after this.
_CONNECT_TIMEOUT = 2.0
_SIZE_RE = re.compile(r"[1-9][0-9]{0,4}x[1-9][0-9]{0,4}")
_JOB_ID_RE = re.compile(r"[0-9]+")


def _last_line(files: OwnerFiles, path: Path) -> str:
    """The last non-blank line of the file's last 4 KiB (a job log's error, if any), or ``""``."""
    content = files.read(path, last=4096)
    if content:
        lines = [line.strip() for line in content.decode(errors="replace").splitlines()]
        lines = [line for line in lines if line]
        if lines:
            return lines[-1][:300]
    return ""


# A line the job script itself writes to job.log (its log() function): a time, then what it says.
_JOB_SCRIPT_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d vizgate-slurm-job: (.+)")


def job_script_said(log_line: str) -> str:
    """What the job script said last, when the job log ends with one of its own lines.

    Only those reach the user: other programs' output in the log is for the administrator.
    """
    match = _JOB_SCRIPT_LINE.fullmatch(log_line)
    return match.group(1) if match else ""


def _port_accepts(host: str, port: int) -> bool:
    """Whether a TCP connection to the session's port succeeds (a job's state alone does not
    say whether its Xvnc still listens)."""
    try:
        with socket.create_connection((host, port), timeout=_CONNECT_TIMEOUT):
            return True
    except OSError:
        return False


def _safe_name(text: str) -> str:
    """Letters, digits, ``.``, ``_`` and ``-`` only: usable in file and job names."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._-")
    return cleaned[:40] or "session"


class SlurmSession(RemoteServiceScript):
    """One instance of a session type whose sessions are Slurm jobs running Xvnc.

    Args:
        name: the session type's name.
        count: how many instances the type has.
        index: this instance's index.
        common_options: the type's options (see the module's documentation).

    Raises:
        ValueError: an option has the wrong type (e.g. ``sbatch_args`` given as one string).
    """

    def __init__(
        self,
        name: str = "",
        count: int = 1,
        index: int = 0,
        common_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(name, count=count, index=index, common_options=common_options)
        problems = check_options(self._common_options)
        if problems:
            raise ValueError("; ".join(problems))
        # The job this instance runs. poll() may be called from another thread than
        # start() / stop(), so these are read and written under a lock of their own.
        self._job_lock = threading.Lock()
        self._job_id: str | None = None
        self._folder: Path | None = None
        # The account the job and its folder belong to.
        self._files = OwnerFiles(JobOwner.of_gateway())

    # -- options -------------------------------------------------------------------------------

    @property
    def state_dir(self) -> Path:
        """Where this type's session folders are made (``~``: the home of the account of the
        session's job)."""
        return self._files.owner.expand(
            str(self._common_options.get("state_dir") or DEFAULT_STATE_DIR)
        )

    @property
    def runs_as_user(self) -> bool:
        """Whether each session runs as its user's account (``run_as``: ``"user"``)."""
        return self._common_options.get("run_as") == "user"

    def job_owner(self, username: str) -> JobOwner:
        """The account the session of the portal user ``username`` runs as.

        Raises:
            JobOwnerError: it cannot run as that user (see :meth:`JobOwner.of_user`).
        """
        if not self.runs_as_user:
            return JobOwner.of_gateway()
        min_uid = self._common_options.get("min_uid")
        return JobOwner.of_user(username, min_uid=DEFAULT_MIN_UID if min_uid is None else min_uid)

    @property
    def start_timeout(self) -> float:
        """The broker's start timeout for this type, in seconds."""
        return float(self._common_options.get("start_timeout") or DEFAULT_START_TIMEOUT)

    def start_budget(self) -> float:
        """How long ``start()`` waits for the job, leaving a margin before the broker's timeout."""
        timeout = self.start_timeout
        return timeout - min(_START_MARGIN, timeout / 4)

    def job_name(self) -> str:
        """``vizgate-<type>-<index>``, with the type reduced to characters safe in a job name."""
        return f"vizgate-{_safe_name(self._name)}-{self._index}"

    def sbatch_command(
        self,
        folder: Path,
        size: str,
        script: Path = JOB_SCRIPT,
        chosen: Mapping[str, str] | None = None,
    ) -> list[str]:
        """The ``sbatch`` argv submitting a session job (``script``) for ``folder`` at ``size``,
        with the ``partition``, ``time_limit`` and resources (``cpus``, ``memory``, ``gpus``)
        the user ``chosen`` in place of the type's.

        The admin's ``sbatch_args`` come after vizgate's defaults (so they may override the job
        name, ``--export``, ...) but before ``--output`` and ``--chdir``, which the session
        depends on. Run it with
        :func:`~vizgate.launchers.slurm_commands.job_environment` as its environment.
        """
        options = {**self._common_options, **(chosen or {})}
        argv = [
            "sbatch",
            "--parsable",
            "--job-name",
            self.job_name(),
            "--export=ALL",
        ]
        if options.get("partition"):
            argv += ["--partition", str(options["partition"])]
        if options.get("time_limit") is not None:
            argv += ["--time", str(options["time_limit"])]
        for name, (flag, _, _) in RESOURCE_OPTIONS.items():
            if options.get(name) is not None:
                argv += [f"{flag}={options[name]}"]
        argv += [str(arg) for arg in options.get("sbatch_args") or ()]
        argv += [
            "--output",
            str(folder / "job.log"),
            "--chdir",
            str(folder),
            str(script),
            str(folder),
            size,
            str(options.get("xvnc") or "Xvnc"),
            str(_DEPTH),
            self._name or "vizgate",
        ]
        return argv

    # -- the seed's API ------------------------------------------------------------------------

    def start(
        self,
        token: str,
        timestamp: float | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> bool:
        """Submit the session's job and wait until its Xvnc accepts connections.

        Returns:
            True once the job runs and reported its host and port (``set_host_port`` was
            called); False when it cannot start. Then the last progress message (see
            :meth:`report_progress`) says why, with Slurm's state and reason, and nothing of
            the attempt is left (the job is cancelled, the folder removed).
        """
        with self._job_lock:
            leftover = self._job_id is not None or self._folder is not None
        if leftover:
            # start() again without stop(): never leave the previous job running unseen.
            self._cleanup()
        given = dict(options or {})
        sizes = self._common_options.get("sizes") or DEFAULT_SIZES
        size = str(given.get("size") or sizes[0])
        if not _SIZE_RE.fullmatch(size):
            return self._fail(f"invalid size {size!r}: expected WIDTHxHEIGHT, e.g. 1600x1200")
        deadline = time.monotonic() + self.start_budget()
        try:
            owner = self.job_owner(str(given.get("username") or ""))
        except JobOwnerError as exc:
            return self._fail(str(exc))
        self._files = OwnerFiles(owner)
        try:
            folder = self._files.make_folder(
                self.state_dir, f"{_safe_name(self._name)}-{self._index}-"
            )
        except OSError as exc:
            return self._fail(f"cannot create a session folder in {self.state_dir}: {exc}")
        with self._job_lock:
            self._folder = folder
        password = secrets.token_urlsafe(6)  # 8 characters: all VNC authentication uses
        try:
            self._files.write_new(folder / "passwd", obfuscate_vnc_password(password.encode()))
        except OSError as exc:
            self._cleanup()
            return self._fail(f"cannot write the VNC password file in {folder}: {exc}")
        self.set_password(password)
        script = JOB_SCRIPT
        if owner.switch:
            # sbatch reads the script as the user, who may not reach the installed package.
            script = folder / "job.sh"
            try:
                self._files.write_new(script, JOB_SCRIPT.read_bytes())
            except OSError as exc:
                self._cleanup()
                return self._fail(f"cannot write the job script in {folder}: {exc}")

        offered = self._common_options.get("choices") or {}
        chosen = {
            name: str(given[name])
            for name in USER_CHOSEN_OPTIONS
            if name in offered and given.get(name) in offered[name]
        }
        self.report_progress("submitting the Slurm job")
        try:
            result = run_command(
                self.sbatch_command(folder, size, script, chosen),
                env=job_environment(),
                owner=owner,
            )
        except SlurmUnavailableError as exc:
            self._cleanup()
            return self._fail(f"cannot submit the job: {exc}")
        if result.returncode != 0:
            self._cleanup()
            error = command_error("sbatch", result.stderr, result.returncode)
            return self._fail(f"sbatch refused the job: {error}")
        job_id = first_line(result.stdout).split(";", 1)[0]
        if not _JOB_ID_RE.fullmatch(job_id):
            self._cleanup()
            return self._fail(f"sbatch printed no job id: {first_line(result.stdout)!r}")
        with self._job_lock:
            self._job_id = job_id
        self.report_progress(f"Slurm job {job_id}: submitted")

        if not self._wait_until_running(job_id, folder, deadline):
            self._cleanup()
            return False
        return super().start(token, timestamp=timestamp, options=options)

    def stop(self) -> bool:
        """Cancel the job, wait (at most 15 s) until it ended and its port closed, and remove
        the session folder."""
        self._cleanup()
        return super().stop()

    def poll(self) -> bool | None:
        """True if the job runs and its Xvnc accepts connections; False if the job is finished,
        unknown to Slurm or its Xvnc is gone; None if Slurm cannot be asked (or the job has not
        started running yet)."""
        with self._job_lock:
            job_id = self._job_id
        if job_id is None:
            return False
        try:
            status = job_status(job_id, self._files.owner)
        except SlurmUnavailableError:
            return None
        if status is None or status.state in ENDED_STATES or status.state == "COMPLETING":
            return False
        if status.state != "RUNNING":
            return None
        host_port = self.host_port()
        if host_port is None:
            return None
        return _port_accepts(*host_port)

    # -- restart safety (JupyterHub's Spawner.get_state / load_state) -------------------------

    def get_state(self) -> dict[str, Any]:
        """What a restarted gateway needs to re-adopt the running job; ``{}`` when there is none.

        Holds ``job_id``, ``folder``, ``host`` and ``port``, and ``user`` when the job runs as
        its user: no secret (the VNC password stays in the session folder, readable only by its
        owner).
        """
        with self._job_lock:
            job_id, folder = self._job_id, self._folder
        if job_id is None:
            return {}
        state: dict[str, Any] = {"job_id": job_id, "folder": str(folder) if folder else None}
        if self._files.owner.switch:
            state["user"] = self._files.owner.name
        host_port = self.host_port()
        if host_port is not None:
            state["host"], state["port"] = host_port
        return state

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Re-adopt the job described by :meth:`get_state`'s result; ``{}`` forgets any job.

        Afterwards :meth:`poll` and :meth:`stop` work on that job, and the session's password
        is read back from its folder so that the gateway can connect again.

        Raises:
            ValueError: ``state`` is not something :meth:`get_state` returned.
        """
        if not state:
            self.reset()
            with self._job_lock:
                self._job_id = None
                self._folder = None
            self._files = OwnerFiles(JobOwner.of_gateway())
            return
        job_id = state.get("job_id")
        if not isinstance(job_id, str) or not _JOB_ID_RE.fullmatch(job_id):
            raise ValueError(f"load_state: job_id must be a Slurm job id, not {job_id!r}")
        folder_name = state.get("folder")
        folder = Path(folder_name) if isinstance(folder_name, str) and folder_name else None
        host, port = state.get("host"), state.get("port")
        if (host is not None or port is not None) and (
            not isinstance(host, str) or not isinstance(port, int) or isinstance(port, bool)
        ):
            raise ValueError("load_state: host must be a string and port an integer")
        user = state.get("user")
        if user is not None and (not isinstance(user, str) or not user):
            raise ValueError(f"load_state: user must be an account name, not {user!r}")
        # What the previous session reported does not belong to the adopted job.
        self.reset()
        if isinstance(host, str) and isinstance(port, int):
            self.set_host_port(host, port)
        try:
            self._files = OwnerFiles(self.job_owner(user) if user else JobOwner.of_gateway())
        except JobOwnerError as exc:
            # The account is gone or barred: the job can still be polled and cancelled, but
            # its folder is left alone (it belongs to that account).
            print(f"vizgate slurm [{self._name}#{self._index}]: {exc}", file=sys.stderr)
            self._files = OwnerFiles(JobOwner.of_gateway())
            folder = None
        if folder is not None:
            content = self._files.read(folder / "passwd")
            with contextlib.suppress(VncPasswordFileError):
                self.set_password(vnc_password_of(content or b"", folder / "passwd"))
        with self._job_lock:
            self._job_id = job_id
            self._folder = folder

    # -- internals -----------------------------------------------------------------------------

    def _fail(self, message: str) -> bool:
        """Report why the session did not start, to the user and to the admin; return False."""
        self.report_progress(message)
        print(f"vizgate slurm [{self._name}#{self._index}]: {message}", file=sys.stderr)
        return False

    def _wait_until_running(self, job_id: str, folder: Path, deadline: float) -> bool:
        """Poll the job until it runs and wrote its connection file (True), or fail (False)."""
        last = "submitted"
        while True:
            try:
                status = job_status(job_id, self._files.owner)
            except SlurmUnavailableError as exc:
                last = f"waiting for Slurm ({exc})"
                self.report_progress(f"Slurm job {job_id}: {last}")
            else:
                if status is None:
                    return self._fail(f"Slurm job {job_id} disappeared from the queue")
                last = status.describe()
                if status.state in ENDED_STATES or status.state == "COMPLETING":
                    log_line = _last_line(self._files, folder / "job.log")
                    message = f"Slurm job {job_id} ended before its VNC server was ready: {last}"
                    said = job_script_said(log_line)
                    if said:
                        # Why, in the job script's words: "Xvnc program not found: ...".
                        message += f": {said}"
                    self.report_progress(message)
                    print(
                        f"vizgate slurm [{self._name}#{self._index}]: {message}"
                        + (f"; job.log: {log_line}" if log_line else ""),
                        file=sys.stderr,
                    )
                    return False
                if status.state == "PENDING" and status.reason_code in NEVER_RUNS_REASONS:
                    return self._fail(f"Slurm job {job_id} cannot run: {last}")
                if status.state == "RUNNING":
                    connection = self._read_connection(self._files, folder)
                    if connection is not None:
                        self.set_host_port(*connection)
                        # The job's time limit ends the desktop: the gateway warns before.
                        self.set_end_time(status.end_timestamp)
                        self.report_progress(
                            f"Slurm job {job_id}: RUNNING on {status.node or connection[0]}"
                        )
                        return True
                    last = f"RUNNING on {status.node}, starting the VNC server"
                self.report_progress(f"Slurm job {job_id}: {last}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return self._fail(
                    f"Slurm job {job_id} did not start within {self.start_budget():g} s: {last}"
                )
            time.sleep(min(_POLL_INTERVAL, remaining))

    @staticmethod
    def _read_connection(files: OwnerFiles, folder: Path) -> tuple[str, int] | None:
        """``(host, port)`` from the job's ``connection`` file, or None if it is not there."""
        content = files.read(folder / "connection")
        if content is None:
            return None
        fields = content.decode(errors="replace").split()
        if len(fields) != 2 or not fields[1].isdigit() or not 0 < int(fields[1]) < 65536:
            return None
        return fields[0], int(fields[1])

    def _cleanup(self) -> None:
        """Cancel the job (if any) and wait for it and its port; remove the session folder."""
        with self._job_lock:
            job_id, folder = self._job_id, self._folder
        host_port = self.host_port()
        if job_id is not None:
            self._cancel(job_id, host_port)
        if folder is not None:
            self._files.remove_tree(folder)
        with self._job_lock:
            self._job_id = None
            self._folder = None

    def _cancel(self, job_id: str, host_port: tuple[str, int] | None) -> None:
        where = f"vizgate slurm [{self._name}#{self._index}]"
        try:
            result = run_command(["scancel", job_id], owner=self._files.owner)
        except SlurmUnavailableError as exc:
            print(f"{where}: cannot cancel Slurm job {job_id}: {exc}", file=sys.stderr)
            return
        # A job that already ended is not worth a word.
        ended = ("Invalid job id", "already completing or completed")
        if result.returncode != 0 and not any(text in result.stderr for text in ended):
            error = command_error("scancel", result.stderr, result.returncode)
            print(f"{where}: scancel {job_id} failed: {error}", file=sys.stderr)
        # The job's state alone is not enough: a server that escaped the job's process tree
        # keeps its port open after the job is CANCELLED.
        deadline = time.monotonic() + _STOP_TIMEOUT
        state = "unknown"
        while True:
            try:
                status = job_status(job_id, self._files.owner)
            except SlurmUnavailableError:
                job_over = False
            else:
                job_over = status is None or status.state in ENDED_STATES
                state = status.describe() if status is not None else "gone"
            port_closed = host_port is None or not _port_accepts(*host_port)
            if job_over and port_closed:
                return
            if time.monotonic() >= deadline:
                still = [f"job {job_id} is {state}"] if not job_over else []
                if not port_closed and host_port is not None:
                    still.append(f"port {host_port[0]}:{host_port[1]} is open")
                print(
                    f"{where}: {_STOP_TIMEOUT:g} s after scancel, " + " and ".join(still),
                    file=sys.stderr,
                )
                return
            time.sleep(_POLL_INTERVAL / 5)


def realize_service(
    name: str = "",
    count: int = 1,
    index: int = 0,
    common_options: Mapping[str, Any] | None = None,
) -> SlurmSession:
    """The seed's entry point: one :class:`SlurmSession` per instance index.

    Raises:
        ValueError: an option has the wrong type.
    """
    return SlurmSession(name, count=count, index=index, common_options=common_options)
