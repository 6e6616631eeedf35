"""The tunnel's fast path: after uvicorn's WebSocket upgrade, the tunnel drives the socket.

uvicorn (its ``websockets-sansio`` protocol) answers the HTTP upgrade and carries the first
messages through ASGI, where the tunnel attaches to its session and, when the gateway answers
the VNC server's password, runs both RFB handshakes. Then the tunnel *takes the connection
over*: from that point both directions are relayed in the transports' callbacks, with no task,
queue or message object in the data path.

The relaying itself, both directions, backpressure and keepalive, is :mod:`vizgate.fastlink`'s.

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
from collections.abc import MutableMapping, Sequence
from typing import Any, Final, cast

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from vizgate.fastlink import (
    CLIENT_GONE,
    SERVER_CLOSED,
    BrowserSide,
    Counters,
    FastLink,
    VncSide,
)
from vizgate.wsframes import FrameParser, frame_end

__all__ = [
    "TAKEOVER_EXTENSION",
    "Takeover",
    "TakeoverProtocol",
]

#: The key of the takeover handle in a WebSocket scope's ``extensions``.
TAKEOVER_EXTENSION: Final = "vizgate.takeover"

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
        # After the takeover the transport's protocol is a BrowserSide: only what comes before
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
        server.set_protocol(VncSide(link))
        self.transport.set_protocol(BrowserSide(self, link))
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
