"""Connections of the load client: raw TCP and WebSocket, and the targets they go to.

Two kinds of connection carry :mod:`bench.protocol`: raw TCP (an ``asyncio.BufferedProtocol``
reading into one reused buffer) and WebSocket (picows, a Cython client that costs about
0.5 CPU s per GB, so that the client is not what limits a proxy). Each hands what it reads to a
:class:`Receiver` and reports the transport's backpressure. A *target* is where a connection
goes: the backend itself, websockify, a reference TCP relay, or a vizgate gateway (which needs a
fresh reservation token for each connection).
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, cast

from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

__all__ = [
    "MAX_FRAME",
    "TCP_READ_BUFFER",
    "BenchError",
    "Connection",
    "Receiver",
    "Target",
    "connect_tcp",
    "connect_ws",
]

#: One read of a raw TCP client.
TCP_READ_BUFFER = 256 * 1024
#: Larger than any frame a proxy here sends.
MAX_FRAME = 64 * 1024 * 1024


class BenchError(Exception):
    """A connection failed or carried the wrong bytes."""


class Receiver(Protocol):
    """What a connection hands its incoming bytes to."""

    def received(self, data: memoryview) -> None:
        """Bytes arrived; ``data`` is valid only during the call."""

    def closed(self, why: str) -> None:
        """The connection ended."""


class Connection(ABC):
    """A connection to a target: write bytes, respect backpressure, close."""

    def __init__(self) -> None:
        self.paused = False
        self._resumed: asyncio.Future[None] | None = None

    @abstractmethod
    def write(self, data: bytes) -> None:
        """Send ``data`` (one WebSocket message on a WebSocket)."""

    @abstractmethod
    def close(self) -> None:
        """Close the connection (a normal closure on a WebSocket)."""

    @abstractmethod
    async def wait_closed(self) -> None:
        """Wait until the connection is gone."""

    async def writable(self) -> None:
        """Wait until the transport's write buffer has drained below its low-water mark."""
        if not self.paused:
            return
        if self._resumed is None or self._resumed.done():
            self._resumed = asyncio.get_running_loop().create_future()
        await self._resumed

    def _pause(self) -> None:
        self.paused = True

    def _resume(self) -> None:
        self.paused = False
        if self._resumed is not None and not self._resumed.done():
            self._resumed.set_result(None)

    def _lost(self) -> None:
        if self._resumed is not None and not self._resumed.done():
            self._resumed.set_exception(BenchError("connection lost while writing"))


class _TcpConnection(asyncio.BufferedProtocol, Connection):
    def __init__(self, receiver: Receiver) -> None:
        Connection.__init__(self)
        self._receiver = receiver
        self._view = memoryview(bytearray(TCP_READ_BUFFER))
        self._transport: asyncio.Transport | None = None
        self._gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport, only alike.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        self._receiver.received(self._view[:nbytes])

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost()
        self._receiver.closed(f"TCP connection lost: {exc}" if exc else "TCP connection closed")
        if not self._gone.done():
            self._gone.set_result(None)

    def pause_writing(self) -> None:
        self._pause()

    def resume_writing(self) -> None:
        self._resume()

    def write(self, data: bytes) -> None:
        assert self._transport is not None
        self._transport.write(data)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    async def wait_closed(self) -> None:
        await self._gone


class _WsConnection(WSListener, Connection):
    def __init__(self, receiver: Receiver) -> None:
        WSListener.__init__(self)
        Connection.__init__(self)
        self._receiver = receiver
        self._transport: WSTransport | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self._transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind in (WSMsgType.BINARY, WSMsgType.CONTINUATION, WSMsgType.TEXT):
            self._receiver.received(frame.get_payload_as_memoryview())
        elif kind == WSMsgType.CLOSE:
            code = frame.get_close_code()
            reason = frame.get_close_message().decode(errors="replace")
            self._receiver.closed(f"WebSocket closed by the server: {code.value} {reason}")
            transport.send_close(code)
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self._lost()
        self._receiver.closed("WebSocket disconnected")

    def pause_writing(self) -> None:
        self._pause()

    def resume_writing(self) -> None:
        self._resume()

    def write(self, data: bytes) -> None:
        assert self._transport is not None
        self._transport.send(WSMsgType.BINARY, data)

    def close(self) -> None:
        if self._transport is not None and not self._transport.is_disconnected:
            self._transport.send_close(WSCloseCode.OK)
            self._transport.disconnect()

    async def wait_closed(self) -> None:
        if self._transport is not None:
            await self._transport.wait_disconnected()


async def connect_tcp(host: str, port: int, receiver: Receiver) -> Connection:
    """A raw TCP connection handing what it reads to ``receiver``."""
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(lambda: _TcpConnection(receiver), host, port)
    return protocol


async def connect_ws(url: str, receiver: Receiver) -> Connection:
    """A WebSocket connection (picows) handing each frame's payload to ``receiver``."""
    _, listener = await ws_connect(
        lambda: _WsConnection(receiver),
        url,
        max_frame_size=MAX_FRAME,
        websocket_handshake_timeout=60,
        read_buffer_init_size=TCP_READ_BUFFER,
    )
    assert isinstance(listener, _WsConnection)
    return listener


# ---------------------------------------------------------------------------------------------
# Targets


@dataclass
class Target:
    """Where the client's connections go.

    Attributes:
        name: short name used in tables and JSON (``raw-tcp``, ``client-ceiling``,
            ``websockify``, ``vizgate``, and the reference relays ``python-relay`` and
            ``c-relay``).
        kind: ``tcp`` or ``ws``.
        host: the address.
        port: the port.
        reserve: for a gateway, returns a fresh ``(token, session_id)``; called before a
            connection is opened, never while one is timed.
        cpu: the proxy's (or relay's) CPU seconds so far (None: nothing between client and
            backend).
        memory_kib: the proxy's resident memory in KiB.
        settle: waits until the proxy has finished with the connections that closed.
    """

    name: str
    kind: str
    host: str
    port: int
    reserve: Callable[[], tuple[str, str]] | None = None
    cpu: Callable[[], float] | None = None
    memory_kib: Callable[[], int] | None = None
    settle: Callable[[], None] | None = None
    _tickets: list[tuple[str, str]] = field(default_factory=list, repr=False)
    last_session_id: str = ""

    @property
    def is_proxy(self) -> bool:
        return self.cpu is not None

    def prepare(self, count: int) -> None:
        """Hold ``count`` reservations so that opening connections makes no HTTP request."""
        if self.reserve is not None:
            while len(self._tickets) < count:
                self._tickets.append(self.reserve())

    async def open(self, receiver: Receiver) -> Connection:
        """A new connection to the target."""
        if self.kind == "tcp":
            return await connect_tcp(self.host, self.port, receiver)
        query = ""
        if self.reserve is not None:
            if not self._tickets:
                self.prepare(1)
            token, self.last_session_id = self._tickets.pop(0)
            query = f"?token={token}"
        return await connect_ws(f"ws://{self.host}:{self.port}/websockify{query}", receiver)

    def done_with_connections(self) -> None:
        if self.settle is not None:
            self.settle()
