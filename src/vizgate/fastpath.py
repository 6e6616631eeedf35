"""The tunnel's fast path: after uvicorn's WebSocket upgrade, the tunnel drives the socket.

uvicorn (its ``websockets-sansio`` protocol) answers the HTTP upgrade and carries the first
messages through ASGI, where the tunnel attaches to its session and, when the gateway answers
the VNC server's password, runs both RFB handshakes. Then the tunnel *takes the connection
over*: from that point both directions are relayed in the transports' callbacks, with no task,
queue or message object in the data path.

* Browser to VNC server: :class:`FrameParser` reads the browser's frames as they arrive
  (RFC 6455 §5), unmasks each payload slice as soon as it is there (no wait for the frame's
  end, no reassembly) and the slice is written to the VNC server's transport. Pings are
  answered, the closing handshake is completed, text frames are passed on as their UTF-8 bytes,
  a message larger than uvicorn's ``ws_max_size`` is refused with 1009.
* VNC server to browser: the VNC server's socket is read up to 1 MiB at a time into a buffer
  the connections share (:class:`_VncSide`), and what a read brings is written at once as
  binary frames of at most 256 KiB, ``transport.writelines((header, piece, header, ...))``:
  the payload is not copied in user space before the transport's own buffer.
* Backpressure both ways: a transport whose write buffer is full pauses reading on the other
  side until it has drained.
* Keepalive: uvicorn's pings stop at the takeover; the fast path pings every
  ``ws_ping_interval`` and closes with 1011 when no pong comes within ``ws_ping_timeout``.

:class:`TakeoverProtocol` is the uvicorn WebSocket protocol (``uvicorn.Config(ws=...)``) that
offers the takeover to the application as ``scope["extensions"]["vizgate.takeover"]`` (a
:class:`Takeover`). An application served otherwise finds no such extension and keeps relaying
through ASGI.

**Where the hand-over happens.** websockets' parser consumes a frame's header as soon as it has
arrived, so bytes it holds cannot be taken back out of it. The protocol therefore hands
websockets' parser *whole frames only* while uvicorn drives the connection: it cuts the stream
after the HTTP request and at frame boundaries, and keeps the bytes of a frame that has not
fully arrived. At the takeover, websockets' parser holds nothing; the kept bytes are the first
thing :class:`FrameParser` reads. Messages uvicorn has queued but the application has not
received yet are taken from its queue, in order, and written to the VNC server first, as is an
unfinished fragmented message's beginning.
(Bytes a client sends in the very TCP segment of its upgrade request never reach a WebSocket
protocol: uvicorn's HTTP protocol passes on the request alone. Browsers wait for the 101.)

**uvicorn internals this relies on** (``tests/test_fastpath.py`` checks each, so that an
upgrade which changes one fails loudly): ``WebSocketsSansIOProtocol`` with ``handle_connect``
building ``self.scope`` (whose ``extensions`` dict the app sees), ``data_received``,
``connection_lost``, ``pause_writing``/``resume_writing``, ``shutdown``, ``stop_keepalive``,
and the attributes ``conn`` (websockets' ``ServerProtocol``, with ``reader.buffer``),
``queue``, ``frames``, ``curr_msg_data_type``, ``read_paused``, ``writable``,
``disconnected``, ``close_sent``, ``close_timer``, ``close_timeout``, ``transport``,
``config``, ``loop``; and that ``run_asgi`` leaves the transport open while ``close_timer``
is set (the closing handshake).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import MutableMapping, Sequence
from typing import Any, Final, Protocol, cast

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

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
    frame_end,
    frame_header,
)

__all__ = [
    "CLIENT_GONE",
    "SERVER_CLOSED",
    "TAKEOVER_EXTENSION",
    "Counters",
    "FastLink",
    "Takeover",
    "TakeoverProtocol",
]

logger = logging.getLogger(__name__)

#: The key of the takeover handle in a WebSocket scope's ``extensions``.
TAKEOVER_EXTENSION: Final = "vizgate.takeover"

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


class _VncSide(asyncio.BufferedProtocol):
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


class _BrowserSide(asyncio.BufferedProtocol):
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


Message = MutableMapping[str, Any]


class Takeover:
    """The handle in ``scope["extensions"]["vizgate.takeover"]``: takes a connection over."""

    def __init__(self, protocol: TakeoverProtocol) -> None:
        self._protocol = protocol

    def __call__(
        self,
        *,
        pending: asyncio.Future[Message] | None,
        upstream: Sequence[bytes],
        server: asyncio.Transport,
        downstream: Sequence[bytes],
        server_write_paused: bool,
        counters: Counters,
    ) -> FastLink:
        """Take the connection over from uvicorn and join it to the VNC server's.

        Args:
            pending: a ``receive()`` task the application began and has not consumed
                (cancelled, or its message relayed first); None when there is none.
            upstream: what the browser sent that the application holds, for the VNC server
                before anything else.
            server: the VNC server's transport; its protocol is replaced.
            downstream: what the VNC server sent that the application has not relayed yet.
            server_write_paused: whether the VNC server's transport has asked its protocol
                to stop writing (and not yet to resume).
            counters: where the bytes each way are counted.

        Returns:
            The link; its :attr:`FastLink.ended` may already be done (the browser had left,
            or the VNC server had closed).
        """
        return self._protocol.take_over(
            pending=pending,
            upstream=upstream,
            server=server,
            downstream=downstream,
            server_write_paused=server_write_paused,
            counters=counters,
        )


class TakeoverProtocol(WebSocketsSansIOProtocol):
    """uvicorn's ``websockets-sansio`` protocol, with the takeover of :mod:`vizgate.fastpath`.

    Pass the class as ``uvicorn.Config(ws=TakeoverProtocol)``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._request_seen = False
        self._request_tail = b""
        # Client bytes of a frame that has not fully arrived (see the module's documentation).
        self._partial = bytearray()
        self._whole_frames_only = True
        self.link: FastLink | None = None

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        # Compressed frames (permessage-deflate) are websockets' to read, not the fast path's.
        if scope is not None and not getattr(self.conn, "extensions", None):
            # The application's task is created but has not run yet: it sees the handle.
            scope["extensions"][TAKEOVER_EXTENSION] = Takeover(self)

    def data_received(self, data: bytes) -> None:
        # After the takeover the transport's protocol is a _BrowserSide: only what comes before
        # it passes through here.
        if not self._request_seen:
            probe = self._request_tail + data
            end = probe.find(b"\r\n\r\n")
            if end < 0:
                self._request_tail = probe[-3:]
                super().data_received(data)
                return
            self._request_seen = True
            cut = end + 4 - len(self._request_tail)
            super().data_received(data[:cut])
            data = data[cut:]
            if not data:
                return
        if not self._whole_frames_only:
            super().data_received(data)
            return
        partial = self._partial
        partial += data
        boundary = 0
        while True:
            next_boundary = frame_end(partial, boundary)
            if next_boundary is None or next_boundary > len(partial):
                break
            boundary = next_boundary
        announced = frame_end(partial, boundary)
        limit = self.config.ws_max_size
        if announced is not None and announced - boundary > limit + 14:
            # A frame websockets will refuse (1009): let it see the header now.
            self._whole_frames_only = False
            boundary = len(partial)
        if boundary:
            whole = bytes(partial[:boundary])
            del partial[:boundary]
            super().data_received(whole)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.link is not None:
            self.link.stop_keepalive()
            self.link.end(CLIENT_GONE)
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        super().pause_writing()
        if self.link is not None:
            self.link.pause_server_reading(True)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.link is not None:
            self.link.pause_server_reading(False)

    def shutdown(self) -> None:
        if self.link is not None:
            self.link.stop_keepalive()
        super().shutdown()

    def take_over(
        self,
        *,
        pending: asyncio.Future[Message] | None,
        upstream: Sequence[bytes],
        server: asyncio.Transport,
        downstream: Sequence[bytes],
        server_write_paused: bool,
        counters: Counters,
    ) -> FastLink:
        """See :meth:`Takeover.__call__`."""
        if self.link is not None:
            raise RuntimeError("this WebSocket is already taken over")
        messages: list[Message] = []
        if pending is not None:
            if pending.done():
                if not pending.cancelled():
                    messages.append(pending.result())
            else:
                # A receive() waiting on uvicorn's queue, once cancelled, takes nothing from it
                # (asyncio.Queue.get takes its item after its wait, which now raises). Nothing
                # here awaits: no callback of either transport runs until the link is in place.
                pending.cancel()
        while not self.queue.empty():
            messages.append(cast(Message, self.queue.get_nowait()))
        self.stop_keepalive()
        leftover = bytes(self._partial)
        self._partial.clear()
        message_kind: str | None = None
        prefix = b""
        if self.frames:
            # A fragmented message uvicorn began: its start goes on, its rest comes to us.
            message_kind = self.curr_msg_data_type
            prefix = b"".join(self.frames)
            self.frames = []
        parser = FrameParser(self.config.ws_max_size, message=message_kind, prefix=prefix)
        link = FastLink(self, server, counters, parser)
        server.set_protocol(_VncSide(link))
        self.transport.set_protocol(_BrowserSide(self, link))
        self.link = link

        gone = self.disconnected or self.close_sent or self.transport.is_closing()
        for data in upstream:
            self._to_server(link, data)
        for message in messages:
            if message["type"] == "websocket.disconnect":
                gone = True
                break
            payload = message.get("bytes")
            if payload is None:
                payload = (message.get("text") or "").encode()
            self._to_server(link, bytes(payload))
        self._to_server(link, prefix)
        if gone:
            link.end(CLIENT_GONE)
            return link
        for data in downstream:
            link.to_client(data)
        if server.is_closing():
            link.end(SERVER_CLOSED)
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        if server_write_paused:
            link.pause_client_reading(True)
        if not self.writable.is_set():
            link.pause_server_reading(True)
        else:
            # The VNC side may have paused while its data waited for the application.
            server.resume_reading()
        link.start_keepalive()
        if leftover:
            link.from_client(leftover)
        return link

    @staticmethod
    def _to_server(link: FastLink, data: bytes) -> None:
        if data:
            link.counters.bytes_to_server += len(data)
            link.server.write(data)
