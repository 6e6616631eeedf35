"""The processes of a benchmark run, and what /proc says about them.

The proxies under test and the backend run as processes of their own. The harness reads their
CPU time and memory from ``/proc`` (Linux) and stops each one by its PID when it is done.

CPU time of a process *tree* is the user + system time of the process and of its live
descendants, plus what its reaped children used (``cutime + cstime``): websockify forks one
child per connection, and a child's time lands in its parent's ``cutime`` once reaped.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

__all__ = [
    "CLOCK_TICKS",
    "Process",
    "descendants",
    "free_port",
    "memory_kib",
    "start_process",
    "thread_count",
    "tree_cpu_seconds",
    "tree_pss_kib",
    "wait_until",
]

T = TypeVar("T")

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def wait_until(
    predicate: Callable[[], T | None],
    timeout: float,
    *,
    interval: float = 0.02,
    message: str = "condition not met",
) -> T:
    """Poll ``predicate`` until it returns something truthy; return it.

    Raises:
        TimeoutError: ``timeout`` seconds passed first (with ``message``).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{message} within {timeout:g} s")
        time.sleep(interval)


def free_port() -> int:
    """A TCP port of 127.0.0.1 that the OS says is free now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold blanks and parentheses; it ends at the last ")".
    return text[text.rindex(")") + 2 :].split()


def _start_time(pid: int) -> int | None:
    fields = _stat_fields(pid)
    # starttime is field 22 of /proc/PID/stat.
    return int(fields[19]) if fields is not None else None


def _own_and_reaped_ticks(pid: int) -> tuple[int, int]:
    fields = _stat_fields(pid)
    if fields is None:
        return 0, 0
    # After the command: state is field 3, so utime (14) .. cstime (17) are [11:15] here.
    utime, stime, cutime, cstime = (int(value) for value in fields[11:15])
    return utime + stime, cutime + cstime


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (children of every thread, recursively)."""
    found: list[int] = []
    pending = [pid]
    while pending:
        parent = pending.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                children = Path(f"/proc/{parent}/task/{task}/children").read_text().split()
            except OSError:
                continue
            for child in children:
                found.append(int(child))
                pending.append(int(child))
    return found


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) used so far by ``pid``, its live descendants and the children
    it reaped."""
    own, reaped = _own_and_reaped_ticks(pid)
    ticks = own + reaped
    for child in descendants(pid):
        ticks += _own_and_reaped_ticks(child)[0]
    return ticks / CLOCK_TICKS


def memory_kib(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` (peak RSS) of one process, in KiB (empty when it is gone)."""
    values: dict[str, int] = {}
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return values
    for line in lines:
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values


def thread_count(pid: int) -> int | None:
    """How many threads ``pid`` has, or None when it is gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return None


def _pss_kib(pid: int) -> int:
    try:
        lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    except OSError:
        return 0
    for line in lines:
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def tree_pss_kib(pid: int) -> int:
    """The proportional set size of ``pid`` and its live descendants, in KiB.

    Forked children share their parent's pages until they write them; PSS splits shared pages
    among the processes that map them, so the sum is the tree's fair share of memory (summed
    RSS would count each shared page once per child).
    """
    return _pss_kib(pid) + sum(_pss_kib(child) for child in descendants(pid))


@dataclass
class Process:
    """A process the harness started; its output goes to files in ``directory``."""

    name: str
    popen: subprocess.Popen[bytes]
    directory: Path
    stdout_path: Path
    stderr_path: Path
    info: dict[str, object] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        """What it wrote so far, stdout then stderr."""
        return self.stdout_path.read_text(errors="replace") + self.stderr_path.read_text(
            errors="replace"
        )

    def check_running(self) -> None:
        """Raise with its output if it exited."""
        if self.popen.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with status {self.popen.returncode}:\n{self.output()[-4000:]}"
            )

    def first_line(self, prefix: str, timeout: float) -> str:
        """Wait for a line of stdout starting with ``prefix``; return the rest of it."""

        def found() -> str | None:
            for line in self.stdout_path.read_text(errors="replace").splitlines():
                if line.startswith(prefix):
                    return line[len(prefix) :] or " "
            self.check_running()
            return None

        return wait_until(found, timeout, message=f"{self.name} did not print {prefix!r}")

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.pid)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, wait, then SIGKILL; by PID only. Children it forked are stopped too."""
        if self.popen.poll() is not None:
            return
        children = {child: _start_time(child) for child in descendants(self.pid)}
        self.popen.terminate()
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=timeout)
        for child, started in children.items():
            # Only a child still alive with the same start time is the one it forked (a PID
            # can be reused once the child is gone).
            if started is not None and _start_time(child) == started:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)


def start_process(
    name: str,
    command: Sequence[str],
    directory: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Process:
    """Start ``command`` with its stdout and stderr in files under ``directory / name``."""
    folder = directory / name
    folder.mkdir(parents=True, exist_ok=True)
    stdout_path = folder / "stdout.txt"
    stderr_path = folder / "stderr.txt"
    with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
        popen = subprocess.Popen(
            list(command),
            stdout=stdout,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None,
            cwd=cwd,
        )
    return Process(name, popen, folder, stdout_path, stderr_path)
