"""Benchmark vizgate's tunnel against websockify and raw TCP: ``python -m bench.run``.

One command starts everything on 127.0.0.1 (ports from the OS), measures, prints Markdown
tables and writes every sample as JSON (``bench/results/``, git-ignored)::

    python -m bench.run                # the full run, a few minutes
    python -m bench.run --smoke        # seconds, tiny sizes: checks bytes, not speed
    python -m bench.run --profile      # also samples the gateway with py-spy

Processes: a backend (:mod:`bench.backends`) stands in for a VNC server; a real ``vizgate
serve`` whose catalog script (:mod:`bench.bench_session`) points at it; ``websockify`` (from
PyPI) relaying to the same backend. The load client (:mod:`bench.clients`, picows) runs in
this process.

Targets, measured in the same run and interleaved (each repetition takes the targets in a
rotated order, so a slow spell of a noisy machine is spread over all of them):

* ``raw-tcp``: the client straight to the backend (the limit);
* ``client-ceiling``: the client straight to a WebSocket backend (what the client can do);
* ``websockify``: the reference proxy;
* ``vizgate``: the gateway's real tunnel (a fresh reservation per connection).

Measurements: downstream and upstream throughput with the proxy's CPU seconds per GB
(MB = 10^6 bytes, GB = 10^9 bytes); 100-byte round trips (p50/p99); many tunnels at once doing
modest echo traffic (errors, p99, the proxy's peak RSS and RSS per tunnel); and the start
latency a gateway adds (WebSocket connect to the first RFB byte, minus the script's own
``start()`` time).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import http.client
import importlib.metadata
import json
import math
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import uvloop

from bench import profiling
from bench.backends import raise_open_files_limit
from bench.clients import (
    FirstByte,
    Load,
    RoundTrips,
    Target,
    Transfer,
    download,
    echo_load,
    first_byte,
    percentile,
    round_trips,
    upload,
)
from bench.processes import (
    Process,
    descendants,
    free_port,
    memory_kib,
    start_process,
    thread_count,
    tree_pss_kib,
    wait_until,
)

__all__ = [
    "FULL",
    "SMOKE",
    "Gateway",
    "Settings",
    "main",
    "run",
]

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
SESSION_SCRIPT = BENCH_DIR / "bench_session.py"
LISTENING = "vizgate listening on "
MIB = 1024 * 1024

#: The catalog's session types: tunnels to the ``mux`` backend, and to the ``rfb`` one.
MUX_TYPE = "bench"
RFB_TYPE = "bench-rfb"

#: The order of targets in tables.
TARGET_ORDER = ("raw-tcp", "client-ceiling", "websockify", "vizgate")


@dataclass(frozen=True)
class Settings:
    """How much a run measures.

    Attributes:
        down_bytes: bytes per downstream transfer.
        up_bytes: bytes per upstream transfer.
        round_trips: timed round trips per repetition.
        repeats: repetitions of the throughput and round-trip measurements.
        concurrency: how many simultaneous tunnels, one load run per number.
        concurrency_seconds: how long each load runs.
        echo_rate: echoes per second on each tunnel under load.
        echo_size: bytes per echo under load.
        websockify_concurrency: the loads websockify also runs (it forks a process per
            connection, so the largest are left to vizgate and raw TCP).
        start_sessions: sessions whose start latency is measured.
        warmup_bytes: an unrecorded transfer each way per target before the first repetition.
    """

    down_bytes: int = 512 * MIB
    up_bytes: int = 512 * MIB
    round_trips: int = 5000
    repeats: int = 9
    concurrency: tuple[int, ...] = (100, 500, 1000)
    concurrency_seconds: float = 10.0
    echo_rate: float = 5.0
    echo_size: int = 512
    websockify_concurrency: tuple[int, ...] = (100,)
    start_sessions: int = 50
    warmup_bytes: int = 32 * MIB


FULL = Settings()
SMOKE = Settings(
    down_bytes=3 * MIB + 12345,
    up_bytes=3 * MIB + 6789,
    round_trips=100,
    repeats=1,
    concurrency=(20,),
    concurrency_seconds=1.0,
    websockify_concurrency=(5,),
    start_sessions=5,
    warmup_bytes=256 * 1024,
)

# ---------------------------------------------------------------------------------------------
# The processes


def _child_env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("VIZGATE_")}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    # The backend is ``python -m bench.backends``: the repository must be importable.
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


def _websockify_settle(process: Process) -> None:
    # Each connection is a forked child; it must be gone (and reaped) before the next window.
    wait_until(
        lambda: not descendants(process.pid),
        30,
        message="websockify's connection processes did not exit",
    )


# ---------------------------------------------------------------------------------------------
# Measuring


@dataclass
class Report:
    """Everything one run measured, and where it ran."""

    settings: dict[str, Any]
    machine: dict[str, Any]
    started: str
    transfers: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    round_trips: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    loads: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    start_latency: dict[str, dict[str, Any]] = field(default_factory=dict)
    profiles: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _transfer_json(target: str, repeat: int, transfer: Transfer) -> dict[str, Any]:
    return {
        "target": target,
        "repeat": repeat,
        **asdict(transfer),
        "mb_per_s": transfer.mb_per_s,
        "proxy_cpu_s_per_gb": transfer.proxy_cpu_per_gb,
        "client_cpu_s_per_gb": transfer.client_cpu_per_gb,
    }


def _trips_json(target: str, repeat: int, trips: RoundTrips) -> dict[str, Any]:
    return {
        "target": target,
        "repeat": repeat,
        "size": trips.size,
        "count": len(trips.latencies),
        "ok": trips.ok,
        "error": trips.error,
        "p50_ms": trips.percentile_ms(50),
        "p99_ms": trips.percentile_ms(99),
        "proxy_cpu_seconds": trips.proxy_cpu_seconds,
    }


def _load_json(target: str, load: Load, settings: Settings) -> dict[str, Any]:
    return {
        "target": target,
        "tunnels": load.tunnels,
        "opened": load.opened,
        "open_seconds": load.open_seconds,
        "seconds": settings.concurrency_seconds,
        "echo_rate": settings.echo_rate,
        "echo_size": settings.echo_size,
        "round_trips": len(load.latencies),
        "expected_round_trips": int(
            load.tunnels * settings.concurrency_seconds * settings.echo_rate
        ),
        "errors": dict(load.errors),
        "error_count": load.error_count,
        "p50_ms": percentile(load.latencies, 50) * 1e3,
        "p99_ms": percentile(load.latencies, 99) * 1e3,
        "proxy_rss_before_kib": load.proxy_rss_before_kib,
        "proxy_rss_open_kib": load.proxy_rss_open_kib,
        "proxy_peak_kib": load.proxy_peak_kib,
        "rss_per_tunnel_kib": load.rss_per_tunnel_kib,
    }


def _rotated(items: Sequence[Target], by: int) -> list[Target]:
    shift = by % len(items) if items else 0
    return [*items[shift:], *items[:shift]]


def _note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def measure_throughput(targets: Sequence[Target], settings: Settings, report: Report) -> None:
    """Downstream, upstream and round trips, repeated, the targets interleaved."""
    for target in targets:
        # Unrecorded: lazy imports, first allocations, the gateway's first reservation.
        await download(target, settings.warmup_bytes)
        await upload(target, settings.warmup_bytes)
        await round_trips(target, 100, warmup=0)
    for repeat in range(settings.repeats):
        order = _rotated(targets, repeat)
        _note(f"repetition {repeat + 1}/{settings.repeats}: {', '.join(t.name for t in order)}")
        for direction, move, size in (
            ("down", download, settings.down_bytes),
            ("up", upload, settings.up_bytes),
        ):
            for target in order:
                transfer = await move(target, size)
                report.transfers.setdefault(target.name, []).append(
                    _transfer_json(target.name, repeat, transfer)
                )
                if not transfer.ok:
                    report.failures.append(f"{target.name} {direction}: {transfer.error}")
        for target in order:
            trips = await round_trips(target, settings.round_trips)
            report.round_trips.setdefault(target.name, []).append(
                _trips_json(target.name, repeat, trips)
            )
            if not trips.ok:
                report.failures.append(f"{target.name} round trips: {trips.error}")


async def measure_load(
    target: Target,
    tunnels: int,
    settings: Settings,
    report: Report,
    peak: Callable[[], int | None] | None,
    threads: Callable[[], int | None] | None = None,
) -> None:
    _note(f"load: {tunnels} tunnels through {target.name} for {settings.concurrency_seconds:g} s")
    load = await echo_load(
        target,
        tunnels,
        settings.concurrency_seconds,
        rate=settings.echo_rate,
        size=settings.echo_size,
        peak_kib=peak,
    )
    entry = _load_json(target.name, load, settings)
    # Threads outlive the tunnels that made them (an executor per session instance).
    entry["proxy_threads_after"] = threads() if threads is not None else None
    report.loads.setdefault(target.name, []).append(entry)
    if load.error_count or load.opened != tunnels:
        report.failures.append(f"{target.name} with {tunnels} tunnels: {dict(load.errors)}")


def _start_latency_json(result: FirstByte, start_times: dict[str, float] | None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "sessions": len(result.latencies) + len(result.errors),
        "errors": result.errors,
        "connect_to_first_byte_ms": [value * 1e3 for value in result.latencies],
        "p50_ms": percentile(result.latencies, 50) * 1e3,
        "p99_ms": percentile(result.latencies, 99) * 1e3,
    }
    if start_times is not None:
        script = [start_times.get(session, math.nan) for session in result.session_ids]
        added = [total - own for total, own in zip(result.latencies, script, strict=True)]
        entry["script_start_ms"] = [value * 1e3 for value in script]
        entry["gateway_added_ms"] = [value * 1e3 for value in added]
        entry["gateway_added_p50_ms"] = percentile(added, 50) * 1e3
        entry["gateway_added_p99_ms"] = percentile(added, 99) * 1e3
        entry["unmatched_sessions"] = sum(math.isnan(value) for value in script)
    return entry


def _read_start_log(path: Path) -> dict[str, float]:
    times: dict[str, float] = {}
    if path.exists():
        for line in path.read_text(encoding="ascii").splitlines():
            session, _, seconds = line.partition(" ")
            times[session] = float(seconds)
    return times


# ---------------------------------------------------------------------------------------------
# The run


class _Stoppable(Protocol):
    def stop(self) -> None: ...


@contextlib.contextmanager
def _stopped_at_exit() -> Iterator[list[_Stoppable]]:
    """A list to put started processes in; each is stopped (by its PID) when the block ends."""
    running: list[_Stoppable] = []
    try:
        yield running
    finally:
        for thing in reversed(running):
            with contextlib.suppress(Exception):
                thing.stop()


def machine_info() -> dict[str, Any]:
    """What the figures were measured on."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory_gib = 0.0
    with contextlib.suppress(OSError, ValueError, IndexError):
        total = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
        memory_gib = int(total) / MIB
    versions = {}
    for package in (
        "vizgate",
        "uvicorn",
        "websockets",
        "uvloop",
        "httptools",
        "django",
        "picows",
        "websockify",
        "numpy",
    ):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package)
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "memory_gib": round(memory_gib, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": versions,
    }


async def run(
    settings: Settings, *, directory: Path, with_websockify: bool, profile: bool
) -> Report:
    """Start the processes, measure, stop them; return the report."""
    began = time.monotonic()
    report = Report(
        settings={
            key: list(value) if isinstance(value, tuple) else value
            for key, value in asdict(settings).items()
        },
        machine=machine_info(),
        started=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    )
    start_log = directory / "starts.txt"
    with _stopped_at_exit() as running:
        backend, ports = start_backend(directory)
        running.append(backend)
        catalog = write_catalog(directory, ports, settings, start_log)
        gateway = Gateway.start("vizgate", directory, catalog)
        running.append(gateway)
        websockify = None
        websockify_rfb = None
        command = websockify_command() if with_websockify else None
        if with_websockify and command is None:
            report.failures.append("websockify is not installed (pip install websockify)")
        if command is not None:
            websockify = start_websockify("websockify", directory, command, ports["mux"])
            running.append(websockify)
            websockify_rfb = start_websockify("websockify-rfb", directory, command, ports["rfb"])
            running.append(websockify_rfb)

        def websockify_target(name: str, process: Process) -> Target:
            return Target(
                name,
                "ws",
                "127.0.0.1",
                int(str(process.info["port"])),
                cpu=process.cpu_seconds,
                memory_kib=lambda: tree_pss_kib(process.pid),
                settle=lambda: _websockify_settle(process),
            )

        def gateway_target(gateway: Gateway, service: str) -> Target:
            return Target(
                "vizgate",
                "ws",
                "127.0.0.1",
                gateway.port,
                reserve=lambda: gateway.reserve(service),
                cpu=gateway.cpu_seconds,
                memory_kib=gateway.rss_kib,
                settle=gateway.settle,
            )

        raw = Target("raw-tcp", "tcp", "127.0.0.1", ports["mux"])
        ceiling = Target("client-ceiling", "ws", "127.0.0.1", ports["ws"])
        targets = [raw, ceiling]
        if websockify is not None:
            targets.append(websockify_target("websockify", websockify))
        targets.append(gateway_target(gateway, MUX_TYPE))

        await measure_throughput(targets, settings, report)

        if profile:
            report.profiles = await profiling.profile_gateway(
                gateway.process.pid,
                gateway_target(gateway, MUX_TYPE),
                settings,
                RESULTS_DIR,
            )

        # Start latency, on the long-running gateway (its first sessions are long past).
        _note(f"start latency: {settings.start_sessions} sessions per target")
        start_targets: list[tuple[Target, bool]] = [
            (Target("raw-tcp", "tcp", "127.0.0.1", ports["rfb"]), False),
        ]
        if websockify_rfb is not None:
            start_targets.append((websockify_target("websockify", websockify_rfb), False))
        start_targets.append((gateway_target(gateway, RFB_TYPE), True))
        for target, is_gateway in start_targets:
            result = await first_byte(target, settings.start_sessions)
            start_times = _read_start_log(start_log) if is_gateway else None
            entry = _start_latency_json(result, start_times)
            report.start_latency[target.name] = entry
            if result.errors:
                report.failures.append(f"{target.name} start latency: {result.errors[:3]}")
            if entry.get("unmatched_sessions"):
                report.failures.append("vizgate start latency: a session's start() time is missing")

        # Concurrency: a fresh gateway per load, so its memory before the load is a clean base.
        for tunnels in settings.concurrency:
            await measure_load(raw, tunnels, settings, report, None)
            if websockify is not None and tunnels in settings.websockify_concurrency:
                await measure_load(
                    websockify_target("websockify", websockify), tunnels, settings, report, None
                )
            fresh = Gateway.start(f"vizgate-load-{tunnels}", directory, catalog)
            running.append(fresh)
            try:
                target = gateway_target(fresh, MUX_TYPE)
                # One tunnel first: Django's first request, the tunnel's first connection.
                await round_trips(target, 10, warmup=0)
                await measure_load(target, tunnels, settings, report, fresh.peak_kib, fresh.threads)
            finally:
                fresh.stop()
                running.remove(fresh)
        for thing in running:
            process = thing.process if isinstance(thing, Gateway) else thing
            if isinstance(process, Process) and process.popen.poll() is not None:
                report.failures.append(f"{process.name} exited during the run")
    report.summary = summarize(report)
    report.seconds = time.monotonic() - began
    return report


# ---------------------------------------------------------------------------------------------
# Summaries and tables


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(present) if present else None


def summarize(report: Report) -> dict[str, Any]:
    """Medians over the repetitions, per target, and the targets' verdicts."""
    per_target: dict[str, dict[str, Any]] = {}
    for name, entries in report.transfers.items():
        down = [e for e in entries if e["direction"] == "down" and e["ok"]]
        up = [e for e in entries if e["direction"] == "up" and e["ok"]]
        trips = [e for e in report.round_trips.get(name, []) if e["ok"]]
        per_target[name] = {
            "down_mb_per_s": _median([e["mb_per_s"] for e in down]),
            "up_mb_per_s": _median([e["mb_per_s"] for e in up]),
            "down_cpu_s_per_gb": _median([e["proxy_cpu_s_per_gb"] for e in down]),
            "up_cpu_s_per_gb": _median([e["proxy_cpu_s_per_gb"] for e in up]),
            "client_down_cpu_s_per_gb": _median([e["client_cpu_s_per_gb"] for e in down]),
            "client_up_cpu_s_per_gb": _median([e["client_cpu_s_per_gb"] for e in up]),
            "rtt_p50_ms": _median([e["p50_ms"] for e in trips]),
            "rtt_p99_ms": _median([e["p99_ms"] for e in trips]),
        }
    paired = {
        f"{key}_vs_{baseline}": _paired(report, key, baseline)
        for key in PAIRED_FIGURES
        for baseline in ("websockify", "raw-tcp")
    }
    summary: dict[str, Any] = {
        "targets": per_target,
        "paired_ratios": paired,
        "checks": _checks(report, paired),
    }
    return summary


#: The figures compared repetition by repetition: (table key, where it comes from, its field).
PAIRED_FIGURES: dict[str, tuple[str, str]] = {
    "down_mb_per_s": ("down", "mb_per_s"),
    "up_mb_per_s": ("up", "mb_per_s"),
    "down_cpu_s_per_gb": ("down", "proxy_cpu_s_per_gb"),
    "rtt_p50_ms": ("trips", "p50_ms"),
}


def _paired(report: Report, key: str, baseline: str) -> list[float]:
    """vizgate's figure over ``baseline``'s, one ratio per repetition that measured both.

    The two are measured seconds apart within a repetition, so a slow spell of a shared machine
    weighs on both sides of a ratio; the median of these ratios is what the targets are held to.
    """
    source, field_name = PAIRED_FIGURES[key]

    def by_repeat(target: str) -> dict[int, float]:
        if source == "trips":
            entries = report.round_trips.get(target, [])
        else:
            entries = [e for e in report.transfers.get(target, []) if e["direction"] == source]
        return {
            e["repeat"]: e[field_name] for e in entries if e["ok"] and e.get(field_name) is not None
        }

    ours, theirs = by_repeat("vizgate"), by_repeat(baseline)
    return [ours[repeat] / theirs[repeat] for repeat in sorted(ours) if theirs.get(repeat)]


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def _checks(report: Report, paired: dict[str, list[float]]) -> list[dict[str, Any]]:
    checks: list[dict[str, Any]] = []

    def check(
        goal: str, value: float | None, limit: float, higher_is_better: bool, shown: str
    ) -> None:
        met = None if value is None else (value >= limit if higher_is_better else value <= limit)
        checks.append({"goal": goal, "value": value, "limit": limit, "met": met, "shown": shown})

    def ratio_check(
        goal: str, key: str, limit: float, higher_is_better: bool, *, percent: bool = False
    ) -> None:
        ratios = paired.get(key, [])
        value = _median(ratios)
        show = _pct if percent else _times
        shown = show(value)
        if len(ratios) > 1:
            shown += f" ({show(min(ratios))} to {show(max(ratios))})"
        check(goal, value, limit, higher_is_better, shown)

    ratio_check(
        "downstream >= 60 % of raw TCP", "down_mb_per_s_vs_raw-tcp", 0.60, True, percent=True
    )
    ratio_check("downstream >= 1.5x websockify", "down_mb_per_s_vs_websockify", 1.5, True)
    ratio_check(
        "CPU per GB downstream <= 0.5x websockify's", "down_cpu_s_per_gb_vs_websockify", 0.5, False
    )
    ratio_check("upstream >= 4x websockify", "up_mb_per_s_vs_websockify", 4.0, True)
    ratio_check("round trip p50 <= 0.8x websockify's", "rtt_p50_ms_vs_websockify", 0.8, False)
    loads = report.loads.get("vizgate", [])
    if loads:
        biggest = max(loads, key=lambda e: e["tunnels"])
        errors = biggest["error_count"] + (biggest["tunnels"] - biggest["opened"])
        check(f"{biggest['tunnels']} concurrent tunnels: 0 errors", errors, 0, False, f"{errors}")
        per = biggest["rss_per_tunnel_kib"]
        check(
            f"{biggest['tunnels']} concurrent tunnels: < 64 KiB RSS per tunnel",
            per,
            64,
            False,
            _num(per, " KiB"),
        )
    added = report.start_latency.get("vizgate", {}).get("gateway_added_p50_ms")
    check("gateway-added start latency p50 <= 20 ms", added, 20.0, False, _num(added, " ms", 1))
    return checks


def _num(value: float | None, unit: str = "", digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}{unit}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f} %"


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def render(report: Report) -> str:
    """The report as Markdown tables."""
    lines: list[str] = []
    machine = report.machine
    lines.append(
        f"Run {report.started}, {report.seconds:.0f} s; {machine['cpus']} CPUs ({machine['cpu']}), "
        f"{machine['memory_gib']} GiB, Linux {machine['kernel']}, Python {machine['python']}."
    )
    packages = ", ".join(f"{k} {v}" for k, v in machine["packages"].items())
    lines.append(f"Packages: {packages}.")
    s = report.settings
    lines.append(
        f"Medians of {s['repeats']} interleaved repetitions; {s['down_bytes'] / MIB:g} MiB down, "
        f"{s['up_bytes'] / MIB:g} MiB up per transfer, {s['round_trips']} round trips of "
        "100 bytes. "
        "MB = 10^6 bytes; CPU is the proxy process's (for websockify, with its per-connection "
        "children) over the transfer."
    )
    lines.append("")
    targets = report.summary.get("targets", {})
    ws = targets.get("websockify", {})
    raw = targets.get("raw-tcp", {})
    lines.append(
        "| path | down MB/s | up MB/s | round trip p50 | p99 | proxy CPU s/GB down | up "
        "| client CPU s/GB down |"
    )
    lines.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    labels = {
        "raw-tcp": "raw loopback TCP (the limit)",
        "client-ceiling": "load client straight to a WebSocket backend (its ceiling)",
        "websockify": "websockify",
        "vizgate": "vizgate tunnel (`vizgate serve`)",
    }
    for name in TARGET_ORDER:
        if name not in targets:
            continue
        t = targets[name]
        lines.append(
            f"| {labels[name]} | {_num(t['down_mb_per_s'])} | {_num(t['up_mb_per_s'])} "
            f"| {_num(t['rtt_p50_ms'], ' ms', 3)} | {_num(t['rtt_p99_ms'], ' ms', 3)} "
            f"| {_num(t['down_cpu_s_per_gb'], '', 2)} | {_num(t['up_cpu_s_per_gb'], '', 2)} "
            f"| {_num(t['client_down_cpu_s_per_gb'], '', 2)} |"
        )
    viz = targets.get("vizgate")
    if viz:
        for other, label in ((ws, "websockify"), (raw, "raw TCP")):
            if not other:
                continue
            cells = [
                _times(_ratio(viz[key], other.get(key)))
                for key in (
                    "down_mb_per_s",
                    "up_mb_per_s",
                    "rtt_p50_ms",
                    "rtt_p99_ms",
                    "down_cpu_s_per_gb",
                    "up_cpu_s_per_gb",
                )
            ]
            lines.append(f"| vizgate / {label} | {' | '.join(cells)} | |")
    lines.append("")
    if report.loads:
        s_load = report.settings
        lines.append(
            f"Concurrent tunnels, each echoing {s_load['echo_size']} bytes {s_load['echo_rate']:g} "
            f"times a second for {s_load['concurrency_seconds']:g} s (vizgate: a fresh gateway per "
            "row; websockify's memory is the PSS of its process tree):"
        )
        lines.append("")
        lines.append(
            "| path | tunnels | errors | open all | round trips | p50 | p99 | proxy RSS before "
            "| with tunnels | peak | RSS per tunnel | threads after |"
        )
        lines.append("| --- |" + " ---: |" * 11)
        for name in TARGET_ORDER:
            for entry in report.loads.get(name, []):
                errors = entry["error_count"] + entry["tunnels"] - entry["opened"]
                lines.append(
                    f"| {name} | {entry['tunnels']:,} | {errors} | {entry['open_seconds']:.2f} s "
                    f"| {entry['round_trips']:,} | {_num(entry['p50_ms'], ' ms', 2)} "
                    f"| {_num(entry['p99_ms'], ' ms', 2)} "
                    f"| {_kib(entry['proxy_rss_before_kib'])} "
                    f"| {_kib(entry['proxy_rss_open_kib'])} "
                    f"| {_kib(entry['proxy_peak_kib'])} "
                    f"| {_num(entry['rss_per_tunnel_kib'], ' KiB', 1)} "
                    f"| {_num(entry.get('proxy_threads_after'))} |"
                )
        lines.append("")
    if report.start_latency:
        lines.append(
            f"Start latency: WebSocket (or TCP) connect to the first RFB byte, "
            f"{report.settings['start_sessions']} sessions each; for vizgate each is a new "
            "session whose script's start() returns at once:"
        )
        lines.append("")
        lines.append("| path | p50 | p99 | gateway-added p50 | gateway-added p99 | errors |")
        lines.append("| --- | ---: | ---: | ---: | ---: | ---: |")
        for name in TARGET_ORDER:
            if name not in report.start_latency:
                continue
            entry = report.start_latency[name]
            lines.append(
                f"| {name} | {_num(entry['p50_ms'], ' ms', 2)} | {_num(entry['p99_ms'], ' ms', 2)} "
                f"| {_num(entry.get('gateway_added_p50_ms'), ' ms', 2)} "
                f"| {_num(entry.get('gateway_added_p99_ms'), ' ms', 2)} | {len(entry['errors'])} |"
            )
        lines.append("")
    checks = report.summary.get("checks", [])
    if checks:
        lines.append(
            "Targets: a ratio is the median of the repetitions' own ratios (each repetition "
            "measures both sides seconds apart), with the lowest and highest in brackets."
        )
        lines.append("")
        lines.append("| target | measured | met |")
        lines.append("| --- | ---: | :---: |")
        for item in checks:
            met = {True: "yes", False: "**no**", None: "-"}[item["met"]]
            lines.append(f"| {item['goal']} | {item['shown']} | {met} |")
        lines.append("")
    if report.profiles:
        lines.append(profiling.render(report.profiles))
    if report.failures:
        lines.append("Failures:")
        lines.extend(f"- {failure}" for failure in report.failures)
    return "\n".join(lines)


def _kib(value: int | None) -> str:
    if value is None:
        return "-"
    return f"{value / 1024:,.1f} MiB"


# ---------------------------------------------------------------------------------------------
# The command line


def _sizes(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.run``; exit status 1 when a byte was wrong or a tunnel failed."""
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one repetition: seconds")
    parser.add_argument("--repeats", type=int, help="repetitions of the throughput measurements")
    parser.add_argument("--down-mib", type=float, help="MiB per downstream transfer")
    parser.add_argument("--up-mib", type=float, help="MiB per upstream transfer")
    parser.add_argument("--round-trips", type=int, help="timed round trips per repetition")
    parser.add_argument("--concurrency", type=_sizes, help="tunnel counts, e.g. 100,500,1000")
    parser.add_argument("--concurrency-seconds", type=float, help="seconds each load runs")
    parser.add_argument(
        "--websockify-concurrency", type=_sizes, help="the loads websockify runs too"
    )
    parser.add_argument("--start-sessions", type=int, help="sessions for the start latency")
    parser.add_argument("--no-websockify", action="store_true", help="leave websockify out")
    parser.add_argument("--profile", action="store_true", help="sample the gateway with py-spy")
    parser.add_argument(
        "--json", metavar="FILE", help="where to write the report (default: bench/results/)"
    )
    args = parser.parse_args(argv)

    settings = SMOKE if args.smoke else FULL
    overrides: dict[str, Any] = {}
    for option, key, scale in (
        ("repeats", "repeats", 1),
        ("down_mib", "down_bytes", MIB),
        ("up_mib", "up_bytes", MIB),
        ("round_trips", "round_trips", 1),
        ("concurrency", "concurrency", None),
        ("concurrency_seconds", "concurrency_seconds", None),
        ("websockify_concurrency", "websockify_concurrency", None),
        ("start_sessions", "start_sessions", 1),
    ):
        value = getattr(args, option)
        if value is not None:
            overrides[key] = int(value * scale) if scale is not None else value
    settings = replace(settings, **overrides)

    limit = raise_open_files_limit()
    if max(settings.concurrency, default=0) * 3 + 100 > limit:
        print(
            f"the open-files limit ({limit}) is too low for {max(settings.concurrency)} tunnels",
            file=sys.stderr,
        )
        return 2

    with tempfile.TemporaryDirectory(prefix="vizgate-bench-") as temporary:
        directory = Path(temporary)
        try:
            report = uvloop.run(
                _cancelled_by_sigterm(
                    run(
                        settings,
                        directory=directory,
                        with_websockify=not args.no_websockify,
                        profile=args.profile,
                    )
                )
            )
        except (KeyboardInterrupt, asyncio.CancelledError):
            print("interrupted: every process the benchmark started is stopped", file=sys.stderr)
            return 130
        except BaseException:
            _dump_logs(directory)
            raise
    text = render(report)
    print(text)
    path = (
        Path(args.json)
        if args.json
        else RESULTS_DIR / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_finite(asdict(report)), indent=1), encoding="utf-8")
    print(f"\nreport written to {path}", file=sys.stderr)
    return 1 if report.failures else 0


async def _cancelled_by_sigterm(work: Coroutine[Any, Any, Report]) -> Report:
    """Await ``work``; SIGTERM (a CI timeout, ``kill PID``) cancels it as Ctrl-C does, so that
    every process it started is stopped by its PID on the way out."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await work
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def _finite(value: Any) -> Any:
    """``value`` with NaN (a percentile of nothing) as None: JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def _dump_logs(directory: Path) -> None:
    for path in sorted(directory.glob("*/std*.txt")):
        text = path.read_text(errors="replace")[-3000:]
        if text.strip():
            print(f"--- {path.relative_to(directory)} ---\n{text}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
