"""The load client's measurements: transfers, round trips, first bytes and many tunnels at once.

Each measurement opens connections to a :class:`~bench.connections.Target` (see
:mod:`bench.connections`) and speaks :mod:`bench.protocol` over them: bulk transfers each way
(:func:`download`, :func:`upload`), one-at-a-time echoes (:func:`round_trips`), connect to the
first byte of an RFB banner (:func:`first_byte`) and many tunnels echoing at a modest rate
(:func:`echo_load`).

Every measurement stamps time (and CPU time, through a ``snapshot`` callable) in the callback
that sees the deciding bytes, not after the event loop gets round to the awaiting coroutine.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bench.connections import BenchError, Connection, Target
from bench.exchanges import Download, Echo, FirstBytes, Snapshot, Upload
from bench.protocol import (
    HEADER_SIZE,
    MODE_ECHO,
    MODE_SINK,
    MODE_SOURCE,
    PATTERN,
    PATTERN_PERIOD,
    RFB_BANNER,
    parse_sink_verdict,
)

__all__ = [
    "UPLOAD_MESSAGE",
    "FirstByte",
    "Load",
    "RoundTrips",
    "Snapshot",
    "Transfer",
    "download",
    "echo_load",
    "first_byte",
    "interleaved_round_trips",
    "percentile",
    "round_trips",
    "snapshot_of",
    "upload",
]

#: The client's upstream writes (one WebSocket message each): 64 KiB.
UPLOAD_MESSAGE = PATTERN_PERIOD


def snapshot_of(target: Target) -> Snapshot:
    """Reads (wall time, the proxy's CPU seconds or None, this client's CPU seconds)."""
    proxy_cpu = target.cpu

    def snapshot() -> tuple[float, float | None, float]:
        return (
            time.perf_counter(),
            proxy_cpu() if proxy_cpu is not None else None,
            time.process_time(),
        )

    return snapshot


# ---------------------------------------------------------------------------------------------
# Receivers


@dataclass
class Transfer:
    """One bulk transfer through a target.

    Attributes:
        direction: ``down`` (backend to client, what a VNC server sends a browser) or ``up``.
        expected: the bytes asked for.
        moved: the bytes that arrived and were checked.
        seconds: from the backend's READY to the last byte (down) or the sink's verdict (up).
        ok: every byte arrived, in order, unchanged.
        proxy_cpu_seconds: the proxy's CPU time over the same window (None: no proxy).
        client_cpu_seconds: this client's CPU time over the window.
        error: why it is not ok.
    """

    direction: str
    expected: int
    moved: int
    seconds: float
    ok: bool
    proxy_cpu_seconds: float | None
    client_cpu_seconds: float
    error: str = ""

    @property
    def mb_per_s(self) -> float:
        return self.moved / self.seconds / 1e6 if self.seconds > 0 else 0.0

    @property
    def proxy_cpu_per_gb(self) -> float | None:
        if self.proxy_cpu_seconds is None or not self.moved:
            return None
        return self.proxy_cpu_seconds / (self.moved / 1e9)

    @property
    def client_cpu_per_gb(self) -> float | None:
        return self.client_cpu_seconds / (self.moved / 1e9) if self.moved else None


def _window(
    start: tuple[float, float | None, float], end: tuple[float, float | None, float]
) -> tuple[float, float | None, float]:
    proxy = None if start[1] is None or end[1] is None else end[1] - start[1]
    return end[0] - start[0], proxy, end[2] - start[2]


async def download(target: Target, count: int, *, timeout: float = 300.0) -> Transfer:
    """Have the backend send ``count`` bytes through ``target``; check every byte."""
    receiver = Download(count, snapshot_of(target))
    connection = await target.open(receiver)
    try:
        async with asyncio.timeout(timeout):
            await receiver.start(connection, MODE_SOURCE, count)
            start = await receiver.ready
            end = await receiver.done
        seconds, proxy_cpu, client_cpu = _window(start, end)
        checker = receiver.checker
        ok = checker.ok and checker.offset == count
        error = ""
        if checker.first_bad is not None:
            error = f"byte {checker.first_bad} differs from what the backend sent"
        elif checker.offset != count:
            error = f"{checker.offset} bytes arrived, {count} were sent"
        return Transfer("down", count, checker.offset, seconds, ok, proxy_cpu, client_cpu, error)
    except (BenchError, TimeoutError) as exc:
        return Transfer(
            "down", count, receiver.checker.offset, 0.0, False, None, 0.0, _describe(exc)
        )
    finally:
        await _close(connection)
        target.done_with_connections()


async def upload(target: Target, count: int, *, timeout: float = 300.0) -> Transfer:
    """Send ``count`` bytes through ``target`` to the backend's sink; it checks every byte."""
    receiver = Upload(snapshot_of(target))
    connection = await target.open(receiver)
    sent = 0
    try:
        async with asyncio.timeout(timeout):
            await receiver.start(connection, MODE_SINK, count)
            start = await receiver.ready
            block = PATTERN[:UPLOAD_MESSAGE]
            while sent < count:
                if connection.paused:
                    await connection.writable()
                size = min(UPLOAD_MESSAGE, count - sent)
                connection.write(block if size == UPLOAD_MESSAGE else block[:size])
                sent += size
            end = await receiver.done
        seconds, proxy_cpu, client_cpu = _window(start, end)
        verdict = parse_sink_verdict(receiver.reply[:HEADER_SIZE])
        ok = verdict.ok and verdict.received == count
        error = ""
        if verdict.first_bad is not None:
            error = f"the sink found byte {verdict.first_bad} wrong"
        elif verdict.received != count:
            error = f"the sink took {verdict.received} bytes, {count} were sent"
        return Transfer("up", count, verdict.received, seconds, ok, proxy_cpu, client_cpu, error)
    except (BenchError, TimeoutError, ValueError) as exc:
        return Transfer("up", count, 0, 0.0, False, None, 0.0, f"{_describe(exc)} ({sent} sent)")
    finally:
        await _close(connection)
        target.done_with_connections()


@dataclass
class RoundTrips:
    """Small-message round trips through a target, one at a time.

    Attributes:
        size: bytes per message.
        latencies: seconds, one per round trip (warm-up excluded).
        proxy_cpu_seconds: the proxy's CPU over the timed round trips.
        ok: every echo matched what was sent.
        error: why not.
    """

    size: int
    latencies: list[float]
    proxy_cpu_seconds: float | None
    ok: bool
    error: str = ""

    def percentile_ms(self, q: float) -> float:
        return percentile(self.latencies, q) * 1e3


async def round_trips(
    target: Target, count: int, *, size: int = 100, warmup: int = 50, timeout: float = 300.0
) -> RoundTrips:
    """``count`` echoes of a ``size``-byte message through ``target``, each awaited in turn."""
    measured = await interleaved_round_trips(
        [target], count, block=warmup + count, size=size, warmup=warmup, timeout=timeout
    )
    return measured[target.name]


@dataclass
class _EchoLine:
    """One target's connection in :func:`interleaved_round_trips`, and what it measured."""

    target: Target
    receiver: Echo
    connection: Connection | None = None
    proxy_cpu_seconds: float | None = 0.0
    error: str = ""


async def interleaved_round_trips(
    targets: Sequence[Target],
    count: int,
    *,
    block: int = 250,
    size: int = 100,
    warmup: int = 50,
    timeout: float = 300.0,
) -> dict[str, RoundTrips]:
    """``count`` echoes through each of ``targets``, in blocks of ``block`` taken in turn.

    A connection per target stays open throughout; the targets' blocks alternate, in an order
    rotated from one round of blocks to the next, so every target's round trips are spread over
    the same seconds of a shared machine instead of each having its own. The proxy's CPU is
    summed over its own blocks.
    """
    lines = [_EchoLine(target, Echo()) for target in targets]
    latencies: dict[str, list[float]] = {line.target.name: [] for line in lines}
    try:
        for line in lines:
            try:
                async with asyncio.timeout(timeout):
                    line.connection = await line.target.open(line.receiver)
                    await line.receiver.start(line.connection, MODE_ECHO)
                    await line.receiver.ready
            except (BenchError, TimeoutError) as exc:
                line.error = _describe(exc)
        total = warmup + count
        for round_number, first in enumerate(range(0, total, block)):
            shift = round_number % len(lines)
            for line in lines[shift:] + lines[:shift]:
                if line.error or line.connection is None:
                    continue
                await _echo_block(
                    line, range(first, min(first + block, total)), size, warmup, latencies, timeout
                )
    finally:
        for line in lines:
            if line.connection is not None:
                await _close(line.connection)
            line.target.done_with_connections()
    return {
        line.target.name: RoundTrips(
            size,
            latencies[line.target.name],
            None if line.error else line.proxy_cpu_seconds,
            not line.error,
            line.error,
        )
        for line in lines
    }


async def _echo_block(
    line: _EchoLine,
    indices: range,
    size: int,
    warmup: int,
    latencies: dict[str, list[float]],
    timeout: float,
) -> None:
    assert line.connection is not None
    snapshot = snapshot_of(line.target)
    recorded = latencies[line.target.name]
    try:
        async with asyncio.timeout(timeout):
            start = snapshot()
            for index in indices:
                offset = (index * 7919) % (PATTERN_PERIOD - size)
                message = PATTERN[offset : offset + size]
                waiter = line.receiver.expect(size)
                sent_at = time.perf_counter()
                line.connection.write(message)
                arrived_at, answer = await waiter
                if answer != message:
                    line.error = "an echo differs"
                    return
                if index >= warmup:
                    recorded.append(arrived_at - sent_at)
            proxy_cpu = _window(start, snapshot())[1]
    except (BenchError, TimeoutError) as exc:
        line.error = _describe(exc)
        return
    if proxy_cpu is None or line.proxy_cpu_seconds is None:
        line.proxy_cpu_seconds = None
    else:
        line.proxy_cpu_seconds += proxy_cpu


@dataclass
class FirstByte:
    """Connect → first byte of the VNC server's banner, per connection.

    Attributes:
        latencies: seconds from starting the connection to the first byte.
        session_ids: for a gateway, the session of each connection (to match start() times).
        errors: what went wrong, one entry per failed connection.
    """

    latencies: list[float]
    session_ids: list[str]
    errors: list[str]


async def first_byte(target: Target, sessions: int, *, timeout: float = 60.0) -> FirstByte:
    """Open ``sessions`` connections one after another; time each to its first RFB byte."""
    result = FirstByte([], [], [])
    for _ in range(sessions):
        target.prepare(1)
        receiver = FirstBytes(len(RFB_BANNER))
        connection: Connection | None = None
        began = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                connection = await target.open(receiver)
                banner = await receiver.done
            if banner != RFB_BANNER:
                result.errors.append(f"banner {banner!r}")
                continue
            result.latencies.append(receiver.first_at - began)
            result.session_ids.append(target.last_session_id)
        except (BenchError, TimeoutError, OSError) as exc:
            result.errors.append(_describe(exc))
        finally:
            if connection is not None:
                await _close(connection)
            target.done_with_connections()
    return result


@dataclass
class Load:
    """Many tunnels at once, each echoing small messages at a modest rate.

    Attributes:
        tunnels: how many were asked for.
        opened: how many opened (got the backend's READY).
        open_seconds: how long opening them all took.
        latencies: every round trip, seconds.
        errors: counts of what went wrong (failed opens, early closes, wrong or late echoes).
        proxy_rss_before_kib: the proxy's resident memory before the tunnels' reservations.
        proxy_rss_open_kib: the most it had while they were open (sampled every 0.2 s).
        proxy_peak_kib: the proxy's peak resident memory as the kernel kept it (VmHWM), when
            known.
    """

    tunnels: int
    opened: int
    open_seconds: float
    latencies: list[float]
    errors: Counter[str]
    proxy_rss_before_kib: int | None = None
    proxy_rss_open_kib: int | None = None
    proxy_peak_kib: int | None = None

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def rss_per_tunnel_kib(self) -> float | None:
        if self.proxy_rss_before_kib is None or self.proxy_rss_open_kib is None or not self.opened:
            return None
        return (self.proxy_rss_open_kib - self.proxy_rss_before_kib) / self.opened


async def echo_load(
    target: Target,
    tunnels: int,
    seconds: float,
    *,
    rate: float = 5.0,
    size: int = 512,
    open_parallel: int = 50,
    echo_timeout: float = 10.0,
    peak_kib: Callable[[], int | None] | None = None,
) -> Load:
    """Open ``tunnels`` tunnels, then for ``seconds`` send ``rate`` echoes per second on each.

    Tunnels open ``open_parallel`` at a time. Memory is sampled every 0.2 s while they are open.
    """
    loop = asyncio.get_running_loop()
    # Before the reservations: a tunnel's cost includes its session's place in the broker.
    rss_before = target.memory_kib() if target.memory_kib else None
    target.prepare(tunnels)
    errors: Counter[str] = Counter()
    latencies: list[float] = []
    gate = asyncio.Semaphore(open_parallel)
    opened: list[tuple[Connection, Echo]] = []

    async def open_one() -> None:
        async with gate:
            receiver = Echo()
            try:
                async with asyncio.timeout(60):
                    connection = await target.open(receiver)
                    await receiver.start(connection, MODE_ECHO)
                    await receiver.ready
            except (BenchError, TimeoutError, OSError) as exc:
                errors[f"open: {_describe(exc)}"] += 1
                return
            opened.append((connection, receiver))

    began = loop.time()
    await asyncio.gather(*(open_one() for _ in range(tunnels)))
    open_seconds = loop.time() - began
    rss_seen: list[int] = []

    async def sample_memory(stop: asyncio.Event) -> None:
        while not stop.is_set():
            if target.memory_kib is not None:
                rss_seen.append(target.memory_kib())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)

    async def talk(index: int, connection: Connection, receiver: Echo) -> None:
        rng = random.Random(index)
        interval = 1.0 / rate
        deadline = loop.time() + seconds
        # A random phase, so the tunnels do not all speak in the same instant.
        next_at = loop.time() + rng.random() * interval
        sent = 0
        while True:
            delay = next_at - loop.time()
            if next_at >= deadline:
                return
            if delay > 0:
                await asyncio.sleep(delay)
            offset = (index * 131 + sent * 17) % (PATTERN_PERIOD - size)
            message = PATTERN[offset : offset + size]
            waiter = receiver.expect(size)
            sent_at = time.perf_counter()
            try:
                connection.write(message)
                async with asyncio.timeout(echo_timeout):
                    arrived_at, answer = await waiter
            except TimeoutError:
                errors[f"echo late (> {echo_timeout:g} s)"] += 1
                return
            except BenchError as exc:
                errors[f"closed: {_describe(exc)}"] += 1
                return
            if answer != message:
                errors["echo differs"] += 1
                return
            latencies.append(arrived_at - sent_at)
            sent += 1
            next_at += interval

    stop_sampling = asyncio.Event()
    sampler = asyncio.create_task(sample_memory(stop_sampling))
    try:
        await asyncio.gather(
            *(talk(index, conn, receiver) for index, (conn, receiver) in enumerate(opened))
        )
    finally:
        stop_sampling.set()
        await sampler
        peak = peak_kib() if peak_kib is not None else None
        for connection, _ in opened:
            connection.close()
        await asyncio.gather(
            *(asyncio.wait_for(c.wait_closed(), 10) for c, _ in opened), return_exceptions=True
        )
        target.done_with_connections()
    return Load(
        tunnels=tunnels,
        opened=len(opened),
        open_seconds=open_seconds,
        latencies=latencies,
        errors=errors,
        proxy_rss_before_kib=rss_before,
        proxy_rss_open_kib=max(rss_seen) if rss_seen else None,
        proxy_peak_kib=peak,
    )


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values``, linearly interpolated; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    below = int(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__


async def _close(connection: Connection) -> None:
    connection.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(connection.wait_closed(), 10)
