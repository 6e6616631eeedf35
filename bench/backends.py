"""The benchmark's backends: what stands in for a VNC server, in a process of its own.

``python -m bench.backends`` listens on three ports of 127.0.0.1 and prints them as one JSON
line (``{"mux": P, "rfb": P, "ws": P}``) once it accepts connections; SIGTERM or SIGINT stops
it. It runs apart from the proxies so that its CPU time is not counted as theirs.

* ``mux``: raw TCP speaking :mod:`bench.protocol` (a HELLO first, then source, sink or echo,
  as the client's header chooses). The proxies under test relay to this port.
* ``rfb``: raw TCP that sends an RFB banner the moment a client connects, then echoes; it
  measures how long a viewer waits for the first byte of its VNC server.
* ``ws``: the same protocol as ``mux`` over WebSocket (picows): the load client connects to
  it directly to show its own ceiling.

Every port tolerates a connection that closes before saying anything: vizgate's readiness
probe connects and closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import signal
import sys
from collections.abc import Callable, Sequence
from typing import cast

import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_create_server

from bench.protocol import (
    HEADER_SIZE,
    HELLO,
    MODE_ECHO,
    MODE_SINK,
    MODE_SOURCE,
    PATTERN,
    READY,
    RFB_BANNER,
    PatternChecker,
    parse_header,
    sink_verdict,
)

__all__ = [
    "TCP_READ_BUFFER",
    "TCP_SOURCE_WRITE",
    "WS_SOURCE_MESSAGE",
    "BackendLogic",
    "main",
    "raise_open_files_limit",
    "serve",
]

#: The source's writes on TCP: 64 KiB, as a VNC server writing framebuffer updates might.
TCP_SOURCE_WRITE: bytes = PATTERN
#: The WebSocket source's messages: 256 KiB, the largest any proxy here sends, so the client's
#: ceiling is measured with the fewest frames per byte.
WS_SOURCE_MESSAGE: bytes = PATTERN * 4
#: One read from a TCP client, into a buffer reused for the life of the connection.
TCP_READ_BUFFER = 256 * 1024

Writer = Callable[[bytes | memoryview], None]


def raise_open_files_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit; return the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


class BackendLogic:
    """One connection's side of :mod:`bench.protocol`, whatever carries it.

    Args:
        write: sends bytes to the client (may copy them or not; the caller's buffer is reused).
        source_chunk: what one write of the source sends (a whole number of pattern periods).
        pause_reading: stop reading from the client (the echo's backpressure).
        resume_reading: read again.
        close: end the connection (a malformed header).
    """

    def __init__(
        self,
        *,
        write: Writer,
        source_chunk: bytes,
        pause_reading: Callable[[], None],
        resume_reading: Callable[[], None],
        close: Callable[[], None],
    ) -> None:
        self._write = write
        self._source_chunk = source_chunk
        self._pause_reading = pause_reading
        self._resume_reading = resume_reading
        self._close = close
        self._header = bytearray()
        self._mode: bytes | None = None
        self._remaining = 0
        self._checker = PatternChecker()
        self._paused = False

    def received(self, data: memoryview) -> None:
        """Bytes from the client; ``data`` is only valid during the call."""
        if self._mode is None:
            need = HEADER_SIZE - len(self._header)
            self._header += data[:need]
            data = data[need:]
            if len(self._header) < HEADER_SIZE:
                return
            try:
                self._mode, self._remaining = parse_header(bytes(self._header))
            except ValueError:
                self._close()
                return
            self._write(READY)
            if self._mode == MODE_SOURCE:
                self._stream()
            elif self._mode == MODE_SINK and self._remaining == 0:
                self._write(sink_verdict(0, None))
        if not data:
            return
        if self._mode == MODE_ECHO:
            self._write(data)
        elif self._mode == MODE_SINK and self._remaining > 0:
            taken = data[: self._remaining]
            self._checker.feed(taken)
            self._remaining -= len(taken)
            if self._remaining == 0:
                self._write(sink_verdict(self._checker.offset, self._checker.first_bad))

    def pause_writing(self) -> None:
        """The client is not taking what we send: stop producing."""
        self._paused = True
        if self._mode == MODE_ECHO:
            self._pause_reading()

    def resume_writing(self) -> None:
        """The client caught up."""
        self._paused = False
        if self._mode == MODE_ECHO:
            self._resume_reading()
        elif self._mode == MODE_SOURCE:
            self._stream()

    def _stream(self) -> None:
        chunk = self._source_chunk
        size = len(chunk)
        # write() calls pause_writing() synchronously once the transport's buffer is full.
        while self._remaining > 0 and not self._paused:
            if self._remaining >= size:
                self._write(chunk)
                self._remaining -= size
            else:
                self._write(chunk[: self._remaining])
                self._remaining = 0


class _TcpBackend(asyncio.BufferedProtocol):
    """The ``mux`` port: :class:`BackendLogic` over a raw TCP connection."""

    def __init__(self) -> None:
        self._view = memoryview(bytearray(TCP_READ_BUFFER))
        self._transport: asyncio.Transport | None = None
        self._logic: BackendLogic | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport, only alike.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport

        def write(data: bytes | memoryview) -> None:
            # The read buffer is reused: an echoed slice of it must be copied.
            transport.write(data if isinstance(data, bytes) else bytes(data))

        self._logic = BackendLogic(
            write=write,
            source_chunk=TCP_SOURCE_WRITE,
            pause_reading=transport.pause_reading,
            resume_reading=transport.resume_reading,
            close=transport.close,
        )
        transport.write(HELLO)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        assert self._logic is not None
        self._logic.received(self._view[:nbytes])

    def pause_writing(self) -> None:
        assert self._logic is not None
        self._logic.pause_writing()

    def resume_writing(self) -> None:
        assert self._logic is not None
        self._logic.resume_writing()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._logic = None


class _RfbBackend(asyncio.Protocol):
    """The ``rfb`` port: the RFB banner at once, then an echo."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport, only alike.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        transport.write(RFB_BANNER)

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        self._transport.write(data)

    def eof_received(self) -> bool:
        return False


class _WsBackend(WSListener):
    """The ``ws`` port: :class:`BackendLogic` over WebSocket messages."""

    def __init__(self) -> None:
        self._logic: BackendLogic | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        underlying = transport.underlying_transport

        def write(data: bytes | memoryview) -> None:
            transport.send(WSMsgType.BINARY, data)

        def close() -> None:
            transport.send_close()
            transport.disconnect()

        self._logic = BackendLogic(
            write=write,
            source_chunk=WS_SOURCE_MESSAGE,
            pause_reading=underlying.pause_reading,
            resume_reading=underlying.resume_reading,
            close=close,
        )
        transport.send(WSMsgType.BINARY, HELLO)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind in (WSMsgType.BINARY, WSMsgType.CONTINUATION, WSMsgType.TEXT):
            if self._logic is not None:
                self._logic.received(frame.get_payload_as_memoryview())
        elif kind == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self._logic = None

    def pause_writing(self) -> None:
        if self._logic is not None:
            self._logic.pause_writing()

    def resume_writing(self) -> None:
        if self._logic is not None:
            self._logic.resume_writing()


async def serve(announce: Callable[[dict[str, int]], None]) -> None:
    """Listen on the three ports, call ``announce`` with them, serve until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    backlog = 4096
    mux = await loop.create_server(_TcpBackend, "127.0.0.1", 0, backlog=backlog)
    rfb = await loop.create_server(_RfbBackend, "127.0.0.1", 0, backlog=backlog)
    ws = await ws_create_server(
        lambda request: _WsBackend(),
        "127.0.0.1",
        0,
        backlog=backlog,
        max_frame_size=64 * 1024 * 1024,
        websocket_handshake_timeout=30,
    )
    servers = {"mux": mux, "rfb": rfb, "ws": ws}
    try:
        announce({name: server.sockets[0].getsockname()[1] for name, server in servers.items()})
        await stop.wait()
    finally:
        for server in servers.values():
            server.close()
        for server in servers.values():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.backends``: serve until stopped; the ports go to stdout as JSON."""
    if list(argv if argv is not None else sys.argv[1:]):
        print("usage: python -m bench.backends (no arguments)", file=sys.stderr)
        return 2
    raise_open_files_limit()

    def announce(ports: dict[str, int]) -> None:
        print(json.dumps(ports), flush=True)

    uvloop.run(serve(announce))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
