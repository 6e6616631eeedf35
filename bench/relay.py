"""The simplest TCP relay on uvloop: a floor for what a Python relay pays a round trip.

``python -m bench.relay BACKEND_PORT`` listens on a port of 127.0.0.1 chosen by the OS and prints
it as one JSON line (``{"port": P}``) once it accepts connections; SIGTERM or SIGINT stops it.
For each connection it opens one to ``127.0.0.1:BACKEND_PORT`` and relays bytes both ways as
they come: plain TCP, no WebSocket, no parsing. The benchmark measures its round trips beside
vizgate's tunnel (which relays WebSocket frames on the same kind of event loop), so the report
shows what is left for the tunnel to win.

Two ``asyncio.Protocol`` halves, one per socket, write what they read to the other's transport
(``TCP_NODELAY`` on both). Bytes from the client that arrive before the backend connection is
up are kept until it is. A transport whose write buffer is full pauses reading on the other
socket until it drains; an end of file is passed on (``write_eof``), and a closed or failed
connection closes the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from typing import cast

import uvloop

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


class _ClientHalf(_Half):
    """The accepted socket: opens the backend connection and keeps what arrives before it."""

    def __init__(self, backend_port: int, tasks: set[asyncio.Task[None]]) -> None:
        super().__init__()
        self._backend_port = backend_port
        self._tasks = tasks
        self._pending: list[bytes] = []
        self._pending_size = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        task = asyncio.get_running_loop().create_task(self._connect())
        # The loop keeps only a weak reference to a task.
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        backend = _Half()
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


async def serve(backend_port: int, announce: Callable[[int], None]) -> None:
    """Relay to ``backend_port``; call ``announce`` with the port; serve until SIGTERM/SIGINT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    tasks: set[asyncio.Task[None]] = set()
    server = await loop.create_server(
        lambda: _ClientHalf(backend_port, tasks), "127.0.0.1", 0, backlog=4096
    )
    try:
        announce(server.sockets[0].getsockname()[1])
        await stop.wait()
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.relay BACKEND_PORT``: relay until stopped; the port goes to stdout."""
    args = list(argv if argv is not None else sys.argv[1:])
    if len(args) != 1 or not args[0].isdigit():
        print("usage: python -m bench.relay BACKEND_PORT", file=sys.stderr)
        return 2

    def announce(port: int) -> None:
        print(json.dumps({"port": port}), flush=True)

    uvloop.run(serve(int(args[0]), announce))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
