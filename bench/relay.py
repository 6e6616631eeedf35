"""The simplest relays on uvloop: floors for what a Python relay pays a round trip.

``python -m bench.relay [--websocket] BACKEND_PORT`` listens on a port of 127.0.0.1 chosen by
the OS and prints it as one JSON line (``{"port": P}``) once it accepts connections; SIGTERM or
SIGINT stops it. For each connection it opens one to ``127.0.0.1:BACKEND_PORT`` and relays bytes
both ways as they come: plain TCP, no parsing. With ``--websocket`` the client side speaks
WebSocket instead, with vizgate's own frame code (:mod:`vizgate.wsframes`) and a bare upgrade
handshake: the tunnel's work without its web server, portal, session broker or bookkeeping.
The benchmark measures their round trips beside vizgate's tunnel (which relays WebSocket frames
on the same kind of event loop), so the report shows what is left for the tunnel to win.

Two ``asyncio.Protocol`` halves, one per socket, write what they read to the other's transport
(``TCP_NODELAY`` on both). Bytes from the client that arrive before the backend connection is
up are kept until it is. A transport whose write buffer is full pauses reading on the other
socket until it drains; an end of file is passed on (``write_eof``), and a closed or failed
connection closes the other.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from typing import cast

import uvloop

from vizgate.wsframes import (
    OP_PONG,
    Close,
    Data,
    Failure,
    FrameParser,
    Ping,
    close_frame,
    frame_header,
)

__all__ = ["PENDING_LIMIT", "main", "serve"]

#: Bytes from the client kept while the backend connection opens; past this, reading pauses.
PENDING_LIMIT = 256 * 1024


def _no_delay(transport: asyncio.Transport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _Half(asyncio.Protocol):
    """One socket of a relayed connection; what it reads goes to :attr:`peer`."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Half | None = None
        self.got_eof = False
        self.sent_eof = False
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport, only alike.
        self.transport = cast(asyncio.Transport, transport)
        _no_delay(self.transport)

    def _peer_transport(self) -> asyncio.Transport | None:
        peer = self.peer
        if peer is None or peer.transport is None or peer.lost:
            return None
        return peer.transport

    def data_received(self, data: bytes) -> None:
        out = self._peer_transport()
        if out is not None:
            out.write(data)

    def eof_received(self) -> bool:
        self.got_eof = True
        if self.peer is not None and self.peer.transport is not None:
            self.peer.send_eof()
        self._close_when_done()
        # Keep the transport open: the other direction may still be carrying bytes.
        return True

    def send_eof(self) -> None:
        """The peer's socket ended: end this one's writing once its buffer is sent."""
        transport = self.transport
        if transport is None or self.lost or self.sent_eof:
            return
        self.sent_eof = True
        if transport.can_write_eof():
            transport.write_eof()
        else:
            transport.close()
        self._close_when_done()

    def _close_when_done(self) -> None:
        # Both directions ended: nothing more will pass through this socket.
        if self.got_eof and self.sent_eof and self.transport is not None:
            self.transport.close()

    def pause_writing(self) -> None:
        out = self._peer_transport()
        if out is not None and not out.is_closing():
            out.pause_reading()

    def resume_writing(self) -> None:
        out = self._peer_transport()
        if out is not None and not out.is_closing():
            out.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        out = self._peer_transport()
        if out is not None:
            if exc is None:
                # What this side sent is still in the peer's buffer: close() sends it first.
                out.close()
            else:
                out.abort()


class _FramingHalf(_Half):
    """The backend's socket of a WebSocket relay: what it reads goes out as a binary frame."""

    def data_received(self, data: bytes) -> None:
        out = self._peer_transport()
        if out is not None:
            out.writelines((frame_header(len(data)), data))


class _ClientHalf(_Half):
    """The accepted socket: opens the backend connection and keeps what arrives before it."""

    backend_half: type[_Half] = _Half

    def __init__(self, backend_port: int, tasks: set[asyncio.Task[None]]) -> None:
        super().__init__()
        self._backend_port = backend_port
        self._tasks = tasks
        self._pending: list[bytes] = []
        self._pending_size = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._open_backend()

    def _open_backend(self) -> None:
        task = asyncio.get_running_loop().create_task(self._connect())
        # The loop keeps only a weak reference to a task.
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        backend = self.backend_half()
        backend.peer = self
        try:
            await loop.create_connection(lambda: backend, "127.0.0.1", self._backend_port)
        except OSError:
            if self.transport is not None:
                self.transport.abort()
            return
        self.peer = backend
        assert backend.transport is not None
        if self.lost:
            backend.transport.close()
            return
        if backend.lost:
            # The backend closed at once (its connection_lost has closed ours).
            return
        if self._pending:
            assert self.transport is not None
            # Before the write: a write that fills the backend's buffer pauses reading again.
            self.transport.resume_reading()
            backend.transport.writelines(self._pending)
            self._pending.clear()
            self._pending_size = 0
        if self.got_eof:
            backend.send_eof()

    def data_received(self, data: bytes) -> None:
        if self.peer is None:
            self._pending.append(data)
            self._pending_size += len(data)
            if self._pending_size >= PENDING_LIMIT and self.transport is not None:
                self.transport.pause_reading()
            return
        super().data_received(data)


#: The most a client's upgrade request may hold.
MAX_REQUEST = 16 * 1024
# RFC 6455 §1.3: the server's proof that it read the client's key.
_ACCEPT_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class _WebSocketClientHalf(_ClientHalf):
    """The accepted socket of a WebSocket relay: an upgrade, then frames whose payloads go on."""

    backend_half = _FramingHalf

    def __init__(self, backend_port: int, tasks: set[asyncio.Task[None]]) -> None:
        super().__init__(backend_port, tasks)
        self._request = b""
        self._parser: FrameParser | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The backend may speak first: it is connected once the upgrade is answered, so that
        # nothing it sends can come before the 101 response.
        _Half.connection_made(self, transport)

    def data_received(self, data: bytes) -> None:
        if self._parser is None:
            data = self._upgrade(data)
            if self._parser is None or not data:
                return
        for event in self._parser.receive(data):
            if type(event) is Data:
                if event.data:
                    super().data_received(event.data)
            elif type(event) is Ping:
                self._send(frame_header(len(event.data), OP_PONG) + event.data)
            elif type(event) is Close:
                self._send(close_frame(event.code, ""))
                self._close()
            elif type(event) is Failure:
                self._close()

    def _upgrade(self, data: bytes) -> bytes:
        """Answer the upgrade request once it is whole; returns what followed it."""
        self._request += data
        head, found, rest = self._request.partition(b"\r\n\r\n")
        if not found:
            if len(self._request) > MAX_REQUEST:
                self._close()
            return b""
        headers = {}
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        key = headers.get(b"sec-websocket-key")
        if key is None or headers.get(b"upgrade", b"").lower() != b"websocket":
            self._send(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            self._close()
            return b""
        accept = base64.b64encode(hashlib.sha1(key + _ACCEPT_GUID, usedforsecurity=False).digest())
        protocols = [p.strip() for p in headers.get(b"sec-websocket-protocol", b"").split(b",")]
        chosen = b"Sec-WebSocket-Protocol: binary\r\n" if b"binary" in protocols else b""
        self._send(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\n" + chosen + b"\r\n"
        )
        self._request = b""
        self._parser = FrameParser(1 << 24)
        self._open_backend()
        return rest

    def _send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def serve(
    backend_port: int, announce: Callable[[int], None], *, websocket: bool = False
) -> None:
    """Relay to ``backend_port``; call ``announce`` with the port; serve until SIGTERM/SIGINT.

    ``websocket``: clients speak WebSocket, the backend plain TCP.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    tasks: set[asyncio.Task[None]] = set()
    half = _WebSocketClientHalf if websocket else _ClientHalf
    server = await loop.create_server(
        lambda: half(backend_port, tasks), "127.0.0.1", 0, backlog=4096
    )
    try:
        announce(server.sockets[0].getsockname()[1])
        await stop.wait()
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.relay [--websocket] BACKEND_PORT``: relay until stopped; the port goes
    to stdout."""
    args = list(argv if argv is not None else sys.argv[1:])
    websocket = "--websocket" in args
    if websocket:
        args.remove("--websocket")
    if len(args) != 1 or not args[0].isdigit():
        print("usage: python -m bench.relay [--websocket] BACKEND_PORT", file=sys.stderr)
        return 2

    def announce(port: int) -> None:
        print(json.dumps({"port": port}), flush=True)

    uvloop.run(serve(int(args[0]), announce, websocket=websocket))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
