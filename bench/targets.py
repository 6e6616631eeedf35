"""Starting what the benchmark measures: the backend, the gateways, websockify, the relays.

Each runs as a process of its own (:class:`bench.processes.Process`), started here and stopped
by its PID by the harness (:mod:`bench.run`):

* the backend (:mod:`bench.backends`), standing in for a VNC server; it prints its ports;
* ``vizgate serve`` (:class:`Gateway`), with a catalog (:func:`write_catalog`) whose script
  (:mod:`bench.bench_session`) points each session at the backend;
* ``websockify 127.0.0.1:P 127.0.0.1:BACKEND`` (from PyPI), the reference proxy;
* three reference relays: ``python -m bench.relay --websocket BACKEND`` (WebSocket to plain TCP
  with vizgate's frame code and nothing else), and two of plain TCP, no WebSocket:
  ``python -m bench.relay BACKEND`` (the simplest uvloop relay, :mod:`bench.relay`) and
  ``bench/relay.c`` (epoll, one thread),
  compiled with ``cc -O2`` into the run's directory when a C compiler is installed. They show
  what a relay costs a round trip on this machine before any WebSocket work.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.processes import (
    Process,
    descendants,
    free_port,
    memory_kib,
    start_process,
    thread_count,
    wait_until,
)

if TYPE_CHECKING:
    from bench.run import Settings

__all__ = [
    "BENCH_DIR",
    "C_RELAY_SOURCE",
    "LISTENING",
    "MUX_TYPE",
    "REPO_DIR",
    "RFB_TYPE",
    "SESSION_SCRIPT",
    "Gateway",
    "build_c_relay",
    "c_compiler",
    "start_backend",
    "start_c_relay",
    "start_python_relay",
    "start_websockify",
    "websockify_command",
    "websockify_settle",
    "write_catalog",
]

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
SESSION_SCRIPT = BENCH_DIR / "bench_session.py"
LISTENING = "vizgate listening on "

#: The catalog's session types: tunnels to the ``mux`` backend, and to the ``rfb`` one.
MUX_TYPE = "bench"
RFB_TYPE = "bench-rfb"

#: The C reference relay's source; the harness compiles it into the run's directory.
C_RELAY_SOURCE = BENCH_DIR / "relay.c"


def _child_env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("VIZGATE_")}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    # ``python -m bench.backends`` and ``python -m bench.relay``: the repository must be
    # importable.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_DIR), env.get("PYTHONPATH")]))
    return env


def start_backend(directory: Path) -> tuple[Process, dict[str, int]]:
    """Start :mod:`bench.backends`; return it and its ports."""
    process = start_process(
        "backend", [sys.executable, "-m", "bench.backends"], directory, env=_child_env()
    )
    try:
        ports: dict[str, int] = json.loads("{" + process.first_line("{", 30))
    except BaseException:
        process.stop()
        raise
    return process, ports


def write_catalog(
    directory: Path, ports: dict[str, int], settings: Settings, start_log: Path
) -> Path:
    """The ``external_services.json`` of the benchmark's gateways."""
    catalog = {
        MUX_TYPE: {
            "script": str(SESSION_SCRIPT),
            "count": max(settings.concurrency, default=1) + 100,
            "options": {"port": ports["mux"], "start_log": str(start_log)},
        },
        RFB_TYPE: {
            "script": str(SESSION_SCRIPT),
            "count": settings.start_sessions + 10,
            "options": {"port": ports["rfb"], "start_log": str(start_log)},
        },
    }
    path = directory / "external_services.json"
    path.write_text(json.dumps(catalog, indent=1), encoding="utf-8")
    return path


class Gateway:
    """A ``vizgate serve`` process and a keep-alive HTTP connection to its ``/v1`` API."""

    def __init__(self, process: Process, port: int) -> None:
        self.process = process
        self.port = port
        self._http: http.client.HTTPConnection | None = None

    @classmethod
    def start(cls, name: str, directory: Path, catalog: Path) -> Gateway:
        """Start a gateway (``--linger 0``, warnings only) and wait until it listens."""
        data_dir = directory / name / "data"
        command = [
            sys.executable,
            "-m",
            "vizgate",
            "serve",
            "--config",
            str(catalog),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--data-dir",
            str(data_dir),
            # A session ends as its last connection closes, so its instance is free at once.
            "--linger",
            "0",
            # One line per connection at INFO would cost the gateway as much as some relays.
            "--log-level",
            "warning",
        ]
        process = start_process(name, command, directory, env=_child_env())
        try:
            url = process.first_line(LISTENING, 60).strip()
        except BaseException:
            process.stop()
            raise
        port = int(url.rstrip("/").rsplit(":", 1)[1])
        return cls(process, port)

    def _get(self, path: str) -> Any:
        for attempt in range(2):
            if self._http is None:
                self._http = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            try:
                self._http.request("GET", path)
                response = self._http.getresponse()
                body = response.read()
            except (OSError, http.client.HTTPException):
                self._http.close()
                self._http = None
                if attempt:
                    raise
                continue
            if response.status != 200:
                raise RuntimeError(
                    f"GET {path.split('?')[0]}: HTTP {response.status}: {body[:300]!r}"
                )
            return json.loads(body)
        raise AssertionError("unreachable")

    def reserve(self, service: str) -> tuple[str, str]:
        """A new reservation: (token, public session id)."""
        answer = self._get(f"/v1/reserve/{service}")
        return str(answer["token"]), str(answer["session_id"])

    def live_sessions(self) -> int:
        return len(self._get("/v1/status")["sessions"])

    def settle(self) -> None:
        """Wait until every session whose connections closed has ended."""
        wait_until(
            lambda: self.live_sessions() == 0 or None,
            60,
            message="the gateway's sessions did not end",
        )

    def cpu_seconds(self) -> float:
        return self.process.cpu_seconds()

    def rss_kib(self) -> int:
        return memory_kib(self.process.pid).get("VmRSS", 0)

    def peak_kib(self) -> int | None:
        return memory_kib(self.process.pid).get("VmHWM")

    def threads(self) -> int | None:
        return thread_count(self.process.pid)

    def stop(self) -> None:
        if self._http is not None:
            self._http.close()
        self.process.stop()


def websockify_command() -> list[str] | None:
    """How to run websockify, or None when it is not installed."""
    beside = Path(sys.executable).parent / "websockify"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("websockify")
    return [found] if found else None


def _listening(port: int) -> bool:
    wanted = f"0100007F:{port:04X}"
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return False
    # A LISTEN socket (state 0A), found without connecting: websockify forks for a connection.
    return any(
        fields[1] == wanted and fields[3] == "0A" for fields in (line.split() for line in lines)
    )


def start_websockify(name: str, directory: Path, command: list[str], backend: int) -> Process:
    """``websockify 127.0.0.1:PORT 127.0.0.1:BACKEND`` as its own process."""
    for attempt in range(3):
        port = free_port()
        process = start_process(
            name, [*command, f"127.0.0.1:{port}", f"127.0.0.1:{backend}"], directory
        )
        try:

            def listening(port: int = port, process: Process = process) -> bool:
                process.check_running()
                return _listening(port)

            wait_until(listening, 30, message=f"{name} did not listen")
        except RuntimeError:
            # Another program took the port between our probe and websockify's bind.
            process.stop()
            if attempt == 2:
                raise
            continue
        except BaseException:
            process.stop()
            raise
        process.info["port"] = port
        return process
    raise AssertionError("unreachable")


def websockify_settle(process: Process) -> None:
    # Each connection is a forked child; it must be gone (and reaped) before the next window.
    wait_until(
        lambda: not descendants(process.pid),
        30,
        message="websockify's connection processes did not exit",
    )


def _start_relay(
    name: str, command: list[str], directory: Path, env: dict[str, str] | None = None
) -> Process:
    # A relay prints {"port": N} once it listens.
    process = start_process(name, command, directory, env=env)
    try:
        answer: dict[str, int] = json.loads("{" + process.first_line("{", 30))
    except BaseException:
        process.stop()
        raise
    process.info["port"] = int(answer["port"])
    return process


def start_python_relay(directory: Path, backend: int, *, websocket: bool = False) -> Process:
    """``python -m bench.relay BACKEND``: the simplest TCP relay on uvloop (:mod:`bench.relay`);
    with ``websocket``, the same whose clients speak WebSocket (``ws-relay``).

    Its port is in ``info["port"]``.
    """
    command = [sys.executable, "-m", "bench.relay", *(["--websocket"] if websocket else [])]
    name = "ws-relay" if websocket else "python-relay"
    return _start_relay(name, [*command, str(backend)], directory, env=_child_env())


def c_compiler() -> str | None:
    """A C compiler on PATH (``cc``, else ``gcc``), or None."""
    return shutil.which("cc") or shutil.which("gcc")


def build_c_relay(directory: Path) -> Path | None:
    """Compile ``bench/relay.c`` with ``cc -O2`` into ``directory``; None without a compiler.

    Raises:
        RuntimeError: the compiler failed (with what it said) or took more than two minutes.
    """
    compiler = c_compiler()
    if compiler is None:
        return None
    folder = directory / "c-relay"
    folder.mkdir(parents=True, exist_ok=True)
    binary = folder / "relay"
    command = [compiler, "-O2", "-Wall", "-Wextra", "-o", str(binary), str(C_RELAY_SOURCE)]
    try:
        completed = subprocess.run(
            command, capture_output=True, text=True, timeout=120, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"{' '.join(command)} took more than {exc.timeout:g} s") from exc
    if completed.returncode != 0 or not binary.exists():
        said = (completed.stdout + completed.stderr).strip()[-2000:]
        raise RuntimeError(f"{' '.join(command)} failed with status {completed.returncode}: {said}")
    return binary


def start_c_relay(binary: Path, directory: Path, backend: int) -> Process:
    """The compiled ``bench/relay.c``: the same relay in C (epoll, one thread).

    Its port is in ``info["port"]``.
    """
    return _start_relay("c-relay", [str(binary), str(backend)], directory)
