"""What the load client does with the bytes of one connection, mode by mode.

Each receiver takes the backend's HELLO and READY off the front of the stream (see
:mod:`bench.protocol`), then handles the payload of its mode: a download checks the pattern and
stamps the end, an upload waits for the sink's verdict, an echo matches each answer to what was
sent, and a first-bytes receiver stamps the first RFB byte. Stamps are taken in the callback
that sees the deciding bytes (time, and CPU time through a ``snapshot`` callable).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from bench.connections import BenchError, Connection
from bench.protocol import (
    HEADER_SIZE,
    HELLO,
    READY,
    PatternChecker,
    header,
)

__all__ = ["Download", "Echo", "Exchange", "FirstBytes", "Snapshot", "Upload"]

#: Reads (wall time, the proxy's CPU seconds or None, this client's CPU seconds).
Snapshot = Callable[[], tuple[float, float | None, float]]


class Exchange:
    """Takes the backend's HELLO and READY off the front of the stream, then hands on the
    payload.

    The client sends its header once :attr:`hello` is done: like a VNC server, the backend
    speaks first, and a gateway may take a client that speaks before the session runs for one
    that is leaving.
    """

    def __init__(self, snapshot: Snapshot | None = None) -> None:
        loop = asyncio.get_running_loop()
        self._snapshot = snapshot
        self._prefix = bytearray()
        self.hello: asyncio.Future[None] = loop.create_future()
        self.ready: asyncio.Future[tuple[float, float | None, float]] = loop.create_future()
        self.why_closed = ""

    def received(self, data: memoryview) -> None:
        if not self.ready.done():
            need = 2 * HEADER_SIZE - len(self._prefix)
            self._prefix += data[:need]
            data = data[need:]
            if not self.hello.done() and len(self._prefix) >= HEADER_SIZE:
                if bytes(self._prefix[:HEADER_SIZE]) != HELLO:
                    self.fail(f"expected HELLO from the backend, got {bytes(self._prefix)!r}")
                    return
                self.hello.set_result(None)
            if len(self._prefix) < 2 * HEADER_SIZE:
                return
            if bytes(self._prefix[HEADER_SIZE:]) != READY:
                self.fail(f"expected READY from the backend, got {bytes(self._prefix)!r}")
                return
            self.ready.set_result(
                self._snapshot() if self._snapshot else (time.perf_counter(), None, 0.0)
            )
            if not data:
                return
        self.payload(data)

    async def start(self, connection: Connection, mode: bytes, count: int = 0) -> None:
        """Wait for the backend's HELLO, then send the header for ``mode``."""
        await self.hello
        connection.write(header(mode, count))

    def payload(self, data: memoryview) -> None:
        raise NotImplementedError

    def closed(self, why: str) -> None:
        if not self.why_closed:
            self.why_closed = why
        self.fail(why)

    def fail(self, why: str) -> None:
        for future in self.futures():
            if not future.done():
                future.set_exception(BenchError(why))
                # Whoever awaits it sees the error; a future nobody awaits stays quiet.
                future.exception()

    def futures(self) -> list[asyncio.Future[Any]]:
        return [self.hello, self.ready]


class Download(Exchange):
    def __init__(self, count: int, snapshot: Snapshot) -> None:
        super().__init__(snapshot)
        self.count = count
        self.checker = PatternChecker()
        self.done: asyncio.Future[tuple[float, float | None, float]] = (
            asyncio.get_running_loop().create_future()
        )

    def payload(self, data: memoryview) -> None:
        self.checker.feed(data)
        if self.checker.offset >= self.count and not self.done.done():
            assert self._snapshot is not None
            self.done.set_result(self._snapshot())

    def futures(self) -> list[asyncio.Future[Any]]:
        return [self.hello, self.ready, self.done]


class Upload(Exchange):
    def __init__(self, snapshot: Snapshot) -> None:
        super().__init__(snapshot)
        self._reply = bytearray()
        self.done: asyncio.Future[tuple[float, float | None, float]] = (
            asyncio.get_running_loop().create_future()
        )

    def payload(self, data: memoryview) -> None:
        self._reply += data
        if len(self._reply) >= HEADER_SIZE and not self.done.done():
            assert self._snapshot is not None
            self.done.set_result(self._snapshot())

    @property
    def reply(self) -> bytes:
        return bytes(self._reply)

    def futures(self) -> list[asyncio.Future[Any]]:
        return [self.hello, self.ready, self.done]


class Echo(Exchange):
    def __init__(self) -> None:
        super().__init__()
        self._buffer = bytearray()
        self._want = 0
        self._waiter: asyncio.Future[tuple[float, bytes]] | None = None

    def expect(self, size: int) -> asyncio.Future[tuple[float, bytes]]:
        """A future for the next ``size`` bytes: (the time they were complete, the bytes)."""
        self._want = size
        self._waiter = asyncio.get_running_loop().create_future()
        self._complete()
        return self._waiter

    def payload(self, data: memoryview) -> None:
        self._buffer += data
        self._complete()

    def _complete(self) -> None:
        waiter = self._waiter
        if waiter is not None and len(self._buffer) >= self._want and not waiter.done():
            answer = bytes(self._buffer[: self._want])
            del self._buffer[: self._want]
            waiter.set_result((time.perf_counter(), answer))

    def futures(self) -> list[asyncio.Future[Any]]:
        waiters: list[asyncio.Future[Any]] = [self.hello, self.ready]
        if self._waiter is not None:
            waiters.append(self._waiter)
        return waiters


class FirstBytes:
    def __init__(self, size: int) -> None:
        self._size = size
        self._buffer = bytearray()
        self.first_at = 0.0
        self.done: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def received(self, data: memoryview) -> None:
        if not self._buffer:
            self.first_at = time.perf_counter()
        self._buffer += data
        if len(self._buffer) >= self._size and not self.done.done():
            self.done.set_result(bytes(self._buffer[: self._size]))

    def closed(self, why: str) -> None:
        if not self.done.done():
            self.done.set_exception(BenchError(why))


# ---------------------------------------------------------------------------------------------
# Measurements
