"""The relay of a taken-over connection: the browser's socket and the VNC server's, joined.

:mod:`vizgate.fastpath` takes a WebSocket connection over from uvicorn after the upgrade; from
then on a :class:`FastLink` relays both directions in the transports' callbacks, with no task,
queue or message object in the data path.

* Browser to VNC server: :class:`FrameParser` reads the browser's frames as they arrive
  (RFC 6455 §5), unmasks each payload slice as soon as it is there (no wait for the frame's
  end, no reassembly) and the slice is written to the VNC server's transport. Pings are
  answered, the closing handshake is completed, text frames are passed on as their UTF-8 bytes,
  a message larger than uvicorn's ``ws_max_size`` is refused with 1009.
* VNC server to browser: the VNC server's socket is read up to 1 MiB at a time into a buffer
  the connections share (:class:`VncSide`), and what a read brings is written at once as
  binary frames of at most 256 KiB, ``transport.writelines((header, piece, header, ...))``:
  the payload is not copied in user space before the transport's own buffer.
* Backpressure both ways: a transport whose write buffer is full pauses reading on the other
  side until it has drained.
* Keepalive: uvicorn's pings stop at the takeover; the fast path pings every
  ``ws_ping_interval`` and closes with 1011 when no pong comes within ``ws_ping_timeout``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from typing import TYPE_CHECKING, Final, Protocol

from vizgate.wsframes import (
    CLOSE_INTERNAL_ERROR,
    OP_PING,
    OP_PONG,
    Close,
    Data,
    Failure,
    FrameParser,
    Ping,
    Pong,
    close_frame,
    frame_header,
)

if TYPE_CHECKING:
    from vizgate.fastpath import TakeoverProtocol

__all__ = [
    "CLIENT_GONE",
    "MAX_FRAME",
    "READ_SIZE",
    "SERVER_CLOSED",
    "BrowserSide",
    "Counters",
    "FastLink",
    "VncSide",
]

logger = logging.getLogger(__name__)

#: How a taken-over connection ended: the browser closed or went away...
CLIENT_GONE: Final = "client"
#: ... or the VNC server closed its connection.
SERVER_CLOSED: Final = "server"


class Counters(Protocol):
    """Where a taken-over connection counts its bytes (the broker's attachment)."""

    bytes_to_client: int
    bytes_to_server: int

    def note_input(self) -> None:
        """The viewer sent something."""


#: The VNC server's socket is read up to this much at a time. On this kind of machine the
#: kernel's socket work is most of a relay's CPU, and it goes by reads more than by bytes: a
#: relay reading 1 MiB at a time measured about 30 % less CPU per GB than one reading 256 KiB.
READ_SIZE: Final = 1024 * 1024
#: ... and what reaches the browser is cut into frames of at most this much (written at once):
#: a frame reaches noVNC only whole, and on a 10 Mbit/s link 256 KiB is 0.2 s.
MAX_FRAME: Final = 256 * 1024


class _SharedReadBuffer:
    """The read buffer the taken-over VNC connections of one thread share.

    Reads are handled one at a time, each before the next begins, so one buffer serves every
    connection of an event loop, and an idle connection holds none.
    """

    def __init__(self) -> None:
        self.view = memoryview(bytearray(READ_SIZE))

    def renew(self) -> None:
        """The last read's bytes are still referenced (by a write): read into a new buffer."""
        self.view = memoryview(bytearray(READ_SIZE))


_thread_state = threading.local()


def _shared_read_buffer() -> _SharedReadBuffer:
    buffer: _SharedReadBuffer | None = getattr(_thread_state, "read_buffer", None)
    if buffer is None:
        buffer = _thread_state.read_buffer = _SharedReadBuffer()
    return buffer


class VncSide(asyncio.BufferedProtocol):
    """The VNC server's connection after the takeover: its chunks go straight to the browser.

    While the browser takes what it is sent, reads go into the thread's shared buffer
    (:data:`READ_SIZE`) and are written from it without a copy. A write the browser's socket
    does not take whole keeps a reference to its buffer until the rest is sent: the shared
    buffer is then replaced, and this connection reads into buffers of its own of
    :data:`MAX_FRAME` bytes until a write is taken whole again. So a viewer that falls behind
    holds at most one frame in the gateway, as it would with plain ``bytes`` reads.
    """

    def __init__(self, link: FastLink) -> None:
        self.link = link
        self.shared = _shared_read_buffer()
        self._own: memoryview | None = None

    def get_buffer(self, sizehint: int) -> memoryview:
        own = self._own
        return own if own is not None else self.shared.view

    def buffer_updated(self, nbytes: int) -> None:
        own = self._own
        link = self.link
        link.to_client((own if own is not None else self.shared.view)[:nbytes])
        if link.client.get_write_buffer_size():
            if own is None:
                self.shared.renew()
            self._own = memoryview(bytearray(MAX_FRAME))
        else:
            self._own = None

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.link.end(SERVER_CLOSED)

    def pause_writing(self) -> None:
        self.link.pause_client_reading(True)

    def resume_writing(self) -> None:
        self.link.pause_client_reading(False)


class BrowserSide(asyncio.BufferedProtocol):
    """The browser's connection after the takeover: read into the thread's shared buffer (the
    frame parser keeps no reference to what it is given); everything but the bytes goes on to
    uvicorn's protocol, which still owns the connection."""

    def __init__(self, protocol: TakeoverProtocol, link: FastLink) -> None:
        self.protocol = protocol
        self.link = link
        self.shared = _shared_read_buffer()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.shared.view

    def buffer_updated(self, nbytes: int) -> None:
        self.link.from_client(self.shared.view[:nbytes])

    def eof_received(self) -> None:
        self.protocol.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.protocol.connection_lost(exc)

    def pause_writing(self) -> None:
        self.protocol.pause_writing()

    def resume_writing(self) -> None:
        self.protocol.resume_writing()


class FastLink:
    """A taken-over connection: the browser's transport and the VNC server's, joined.

    Created by :meth:`Takeover.__call__`. The tunnel awaits :attr:`ended` (alongside the
    broker's close request) and closes with :meth:`close`.
    """

    def __init__(
        self,
        protocol: TakeoverProtocol,
        server: asyncio.Transport,
        counters: Counters,
        parser: FrameParser,
    ) -> None:
        self.protocol = protocol
        self.client = protocol.transport
        self.server = server
        self.counters = counters
        self.parser = parser
        #: Resolves to :data:`CLIENT_GONE` or :data:`SERVER_CLOSED`, whichever came first.
        self.ended: asyncio.Future[str] = protocol.loop.create_future()
        self.close_sent = False
        self._client_paused = False
        self._ping_timer: asyncio.TimerHandle | None = None
        self._pong_timer: asyncio.TimerHandle | None = None
        self._ping_payload: bytes | None = None

    def end(self, how: str) -> None:
        """Note how the connection ended (the first ending counts)."""
        if not self.ended.done():
            self.ended.set_result(how)

    # Browser to VNC server.

    def from_client(self, data: bytes | memoryview) -> None:
        """Bytes the browser sent (not referenced once this returns).

        The payloads they complete go to the VNC server in one write: a read holds several
        frames when the browser sends faster than they are relayed.
        """
        payloads: list[bytes] = []
        for event in self.parser.receive(data):
            if type(event) is Data:
                if event.data and not self.close_sent:
                    payloads.append(event.data)
            elif type(event) is Ping:
                if not self.close_sent:
                    self.client.writelines((frame_header(len(event.data), OP_PONG), event.data))
            elif type(event) is Pong:
                self._pong(event.data)
            elif type(event) is Close:
                self._closed_by_client(event)
            else:
                assert type(event) is Failure
                logger.info("closing a viewer's WebSocket: %s", event.reason)
                self._send_close(event.code, event.reason)
                self.client.close()
                self.end(CLIENT_GONE)
        if payloads:
            self._to_server(payloads)

    def _to_server(self, payloads: list[bytes]) -> None:
        counters = self.counters
        if len(payloads) == 1:
            payload = payloads[0]
            counters.bytes_to_server += len(payload)
            self.server.write(payload)
        else:
            counters.bytes_to_server += sum(map(len, payloads))
            self.server.writelines(payloads)
        counters.note_input()

    def _closed_by_client(self, event: Close) -> None:
        if not self.close_sent:
            # Echo the code, as RFC 6455 §5.5.1 asks; the server then closes the TCP connection.
            self._send_close(event.code, "")
        elif self.protocol.close_timer is not None:
            self.protocol.close_timer.cancel()
            self.protocol.close_timer = None
        self.client.close()
        self.end(CLIENT_GONE)

    def pause_client_reading(self, paused: bool) -> None:
        """The VNC server's write buffer is full (True) or has drained (False)."""
        if paused == self._client_paused:
            return
        self._client_paused = paused
        if self.client.is_closing():
            return
        if paused:
            self.client.pause_reading()
        else:
            self.client.resume_reading()

    # VNC server to browser.

    def to_client(self, data: bytes | memoryview) -> None:
        """A chunk from the VNC server: binary frames of at most :data:`MAX_FRAME` bytes, in
        one write, the payload not copied."""
        if self.close_sent:
            return
        length = len(data)
        self.counters.bytes_to_client += length
        if length <= MAX_FRAME:
            self.client.writelines((frame_header(length), data))
            return
        view = memoryview(data)
        pieces: list[bytes | memoryview] = []
        for start in range(0, length, MAX_FRAME):
            piece = view[start : start + MAX_FRAME]
            pieces += (frame_header(len(piece)), piece)
        self.client.writelines(pieces)

    def pause_server_reading(self, paused: bool) -> None:
        """The browser's write buffer is full (True) or has drained (False)."""
        if self.server.is_closing():
            return
        if paused:
            self.server.pause_reading()
        else:
            self.server.resume_reading()

    # Closing.

    def close(self, code: int, reason: str) -> None:
        """Close the WebSocket with ``code`` and ``reason``, then wait for the browser's reply
        (at most uvicorn's close timeout) before the TCP connection is closed."""
        if self.close_sent or self.client.is_closing():
            return
        self._send_close(code, reason)
        protocol = self.protocol
        if self._client_paused:
            # The browser's close reply must be read, and nothing goes to the server now.
            self._client_paused = False
            self.client.resume_reading()
        protocol.close_timer = protocol.loop.call_later(protocol.close_timeout, self.client.close)

    def _send_close(self, code: int, reason: str) -> None:
        self.close_sent = True
        self.protocol.close_sent = True
        self.stop_keepalive()
        self.client.write(close_frame(code, reason))

    # Keepalive.

    def start_keepalive(self) -> None:
        """Ping every ``ws_ping_interval`` seconds, as uvicorn did before the takeover."""
        interval = self.protocol.config.ws_ping_interval
        if interval is not None and interval > 0:
            self._ping_timer = self.protocol.loop.call_later(interval, self._ping)

    def stop_keepalive(self) -> None:
        """No more pings."""
        for timer in (self._ping_timer, self._pong_timer):
            if timer is not None:
                timer.cancel()
        self._ping_timer = self._pong_timer = None
        self._ping_payload = None

    def _ping(self) -> None:
        self._ping_timer = None
        if self.close_sent or self.client.is_closing():
            return
        # A random payload tells this ping's pong from stale or unsolicited ones.
        self._ping_payload = os.urandom(4)
        self.client.writelines((frame_header(4, OP_PING), self._ping_payload))
        timeout = self.protocol.config.ws_ping_timeout
        if timeout is not None and timeout > 0:
            self._pong_timer = self.protocol.loop.call_later(timeout, self._pong_missing)
        else:
            self.start_keepalive()

    def _pong(self, payload: bytes) -> None:
        if self._ping_payload is None or payload != self._ping_payload:
            return
        self._ping_payload = None
        if self._pong_timer is not None:
            self._pong_timer.cancel()
            self._pong_timer = None
            self.start_keepalive()

    def _pong_missing(self) -> None:
        self._pong_timer = None
        if self.close_sent or self.client.is_closing():
            return
        logger.info("closing a viewer's WebSocket: no pong within the keepalive timeout")
        self._send_close(CLOSE_INTERNAL_ERROR, "keepalive ping timeout")
        self.client.close()
        self.end(CLIENT_GONE)
