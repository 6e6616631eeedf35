"""Benchmark vizgate's tunnel against websockify and raw TCP: ``python -m bench.run``.

One command starts everything on 127.0.0.1 (ports from the OS), measures, prints Markdown
tables and writes every sample as JSON (``bench/results/``, git-ignored)::

    python -m bench.run                # the full run, a few minutes
    python -m bench.run --smoke        # seconds, tiny sizes: checks bytes, not speed
    python -m bench.run --profile      # also samples the gateway with py-spy

Processes (started by :mod:`bench.targets`): a backend (:mod:`bench.backends`) stands in for a
VNC server; a real ``vizgate serve`` whose catalog script (:mod:`bench.bench_session`) points at
it; ``websockify`` (from PyPI) relaying to the same backend; two reference relays of plain TCP
(:mod:`bench.relay` on uvloop, and ``bench/relay.c`` when a C compiler is installed). The load
client (:mod:`bench.clients` over :mod:`bench.connections`, picows) runs in this process; the
report is summarized and rendered by :mod:`bench.report`.

Targets, measured in the same run and interleaved (each repetition takes the targets in a
rotated order, so a slow spell of a noisy machine is spread over all of them):

* ``raw-tcp``: the client straight to the backend (the limit);
* ``client-ceiling``: the client straight to a WebSocket backend (what the client can do);
* ``websockify``: the reference proxy;
* ``vizgate``: the gateway's real tunnel (a fresh reservation per connection);
* ``ws-relay``, ``python-relay`` and ``c-relay``, downstream and in the round trips: the
  simplest WebSocket relay with vizgate's frame code on uvloop, and the simplest TCP relays in
  Python on uvloop and in C on epoll: what a relay of each kind reaches on this machine.

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
import json
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import uvloop

from bench import profiling
from bench.backends import raise_open_files_limit
from bench.clients import (
    download,
    echo_load,
    first_byte,
    interleaved_round_trips,
    round_trips,
    upload,
)
from bench.connections import Target
from bench.processes import Process, tree_pss_kib
from bench.report import (
    MIB,
    Report,
    jsonable,
    load_json,
    machine_info,
    render,
    start_latency_json,
    summarize,
    transfer_json,
    trips_json,
)
from bench.targets import (
    BENCH_DIR,
    MUX_TYPE,
    RFB_TYPE,
    Gateway,
    build_c_relay,
    start_backend,
    start_c_relay,
    start_python_relay,
    start_websockify,
    websockify_command,
    websockify_settle,
    write_catalog,
)

__all__ = [
    "FULL",
    "SMOKE",
    "Settings",
    "main",
    "run",
]

RESULTS_DIR = BENCH_DIR / "results"


@dataclass(frozen=True)
class Settings:
    """How much a run measures.

    Attributes:
        down_bytes: bytes per downstream transfer.
        up_bytes: bytes per upstream transfer.
        round_trips: timed round trips per repetition.
        round_trip_block: round trips a target makes before the next target takes its turn.
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
    round_trip_block: int = 250
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
    round_trip_block=40,
    repeats=1,
    concurrency=(20,),
    concurrency_seconds=1.0,
    websockify_concurrency=(5,),
    start_sessions=5,
    warmup_bytes=256 * 1024,
)

# ---------------------------------------------------------------------------------------------
# Measuring


def _relay_target(name: str, process: Process, kind: str = "tcp") -> Target:
    """A reference relay as a target, its process's CPU measured."""
    return Target(name, kind, "127.0.0.1", int(str(process.info["port"])), cpu=process.cpu_seconds)


def _rotated(items: Sequence[Target], by: int) -> list[Target]:
    shift = by % len(items) if items else 0
    return [*items[shift:], *items[:shift]]


def _note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def measure_throughput(
    targets: Sequence[Target],
    settings: Settings,
    report: Report,
    references: Sequence[Target] = (),
) -> None:
    """Downstream, upstream and round trips, repeated, the targets interleaved.

    ``references`` (the reference relays) take part in the downstream transfers and the round
    trips, rotated with the targets in each repetition: what any relay reaches on the machine.
    """
    for target in targets:
        # Unrecorded: lazy imports, first allocations, the gateway's first reservation.
        await download(target, settings.warmup_bytes)
        await upload(target, settings.warmup_bytes)
        await round_trips(target, 100, warmup=0)
    for target in references:
        await download(target, settings.warmup_bytes)
        await round_trips(target, 100, warmup=0)
    for repeat in range(settings.repeats):
        order = _rotated(targets, repeat)
        with_references = _rotated([*targets, *references], repeat)
        _note(
            f"repetition {repeat + 1}/{settings.repeats}: {', '.join(t.name for t in order)}"
            + (
                f"; down and round trips: {', '.join(t.name for t in with_references)}"
                if references
                else ""
            )
        )
        for direction, move, size, movers in (
            ("down", download, settings.down_bytes, with_references),
            ("up", upload, settings.up_bytes, order),
        ):
            for target in movers:
                transfer = await move(target, size)
                report.transfers.setdefault(target.name, []).append(
                    transfer_json(target.name, repeat, transfer)
                )
                if not transfer.ok:
                    report.failures.append(f"{target.name} {direction}: {transfer.error}")
        measured = await interleaved_round_trips(
            with_references, settings.round_trips, block=settings.round_trip_block
        )
        for name, trips in measured.items():
            report.round_trips.setdefault(name, []).append(trips_json(name, repeat, trips))
            if not trips.ok:
                report.failures.append(f"{name} round trips: {trips.error}")


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
    entry = load_json(target.name, load, settings)
    # Threads outlive the tunnels that made them (an executor per session instance).
    entry["proxy_threads_after"] = threads() if threads is not None else None
    report.loads.setdefault(target.name, []).append(entry)
    if load.error_count or load.opened != tunnels:
        report.failures.append(f"{target.name} with {tunnels} tunnels: {dict(load.errors)}")


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

        # The reference relays to the same backend, downstream and in the round trips: WebSocket
        # with vizgate's frame code and nothing else, then plain TCP in Python and in C.
        references: list[Target] = []
        ws_relay = start_python_relay(directory, ports["mux"], websocket=True)
        running.append(ws_relay)
        references.append(_relay_target("ws-relay", ws_relay, "ws"))
        python_relay = start_python_relay(directory, ports["mux"])
        running.append(python_relay)
        references.append(_relay_target("python-relay", python_relay))
        try:
            binary = build_c_relay(directory)
        except RuntimeError as exc:
            binary = None
            report.failures.append(f"c-relay: {exc}")
        else:
            if binary is None:
                report.notes.append(
                    "No C compiler (cc or gcc) on PATH: the C reference relay is left out."
                )
        if binary is not None:
            c_relay = start_c_relay(binary, directory, ports["mux"])
            running.append(c_relay)
            references.append(_relay_target("c-relay", c_relay))

        def websockify_target(name: str, process: Process) -> Target:
            return Target(
                name,
                "ws",
                "127.0.0.1",
                int(str(process.info["port"])),
                cpu=process.cpu_seconds,
                memory_kib=lambda: tree_pss_kib(process.pid),
                settle=lambda: websockify_settle(process),
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

        await measure_throughput(targets, settings, report, references)

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
            entry = start_latency_json(result, start_times)
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
# The command line


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive whole number")
    return value


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
    parser.add_argument(
        "--round-trip-block",
        type=_positive,
        help="round trips per target before the next one's turn",
    )
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
        ("round_trip_block", "round_trip_block", 1),
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
    path.write_text(json.dumps(jsonable(asdict(report)), indent=1), encoding="utf-8")
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


def _dump_logs(directory: Path) -> None:
    for path in sorted(directory.glob("*/std*.txt")):
        text = path.read_text(errors="replace")[-3000:]
        if text.strip():
            print(f"--- {path.relative_to(directory)} ---\n{text}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
