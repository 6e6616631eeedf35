"""The WebSocket tunnel: relays a browser's WebSocket to the VNC server of its session.

An ASGI application for ``websocket`` scopes. The path is ignored, as the seed's websocket
server does (its pages use ``path=websockify``); the reservation travels in the ``token`` query
field. The first connection of a reserved token makes the broker start the session; every
connection gets its own TCP connection to the script's ``host:port`` and bytes are relayed both
ways with backpressure: the tunnel reads from one side only when the other side has taken what
it was given, so a slow browser cannot grow the gateway's memory.

Close codes (RFC 6455 §7.4.1), with reasons a person can read and that never hold a secret:

* 1008 (policy violation): unknown, expired or released token; a viewer the authorizer refused,
  whose view-only access ended, or who sent what a view-only viewer may not;
* 1011 (internal error): the session failed to start, or the VNC server went away;
* 1001 (going away): the session ended by a release, an administrator, a timeout or shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from vizgate.broker import Attachment, Broker
from vizgate.exceptions import ReservationError, StartError
from vizgate.fastlink import CLIENT_GONE, FastLink
from vizgate.fastpath import TAKEOVER_EXTENSION, Takeover
from vizgate.lifecycle import EndReason
from vizgate.rfb import RfbBridge
from vizgate.sessions import CloseRequest, SessionInfo
from vizgate.view_only import ViewOnlyFilter
from vizgate.view_only_server import ViewOnlyServerFilter
from vizgate.vnc_connection import VncConnection
from vizgate.vnc_password import VncPasswordFileError

__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_INTERNAL_ERROR",
    "CLOSE_POLICY_VIOLATION",
    "FULL_ACCESS",
    "Access",
    "Authorizer",
    "Tunnel",
    "close_code_for",
]

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


@dataclass(frozen=True)
class Access:
    """What an authorizer decided for one WebSocket request.

    Attributes:
        refusal: why the request may not use the session (a close reason a person reads, never
            a secret); None when it may.
        view_only: the viewer may watch but not control: the gateway withholds its keyboard,
            pointer, clipboard and resize messages (:mod:`vizgate.view_only`) and the session's
            clipboard from it (:mod:`vizgate.view_only_server`), asks the VNC server to share
            the desktop, and its messages do not keep the session from idling.
        until: when the access ends (seconds since the epoch); the connection closes then.
        grant: what let the viewer in when it is not the session's owner, e.g. ``share 12``;
            :meth:`Broker.revoke_grant` closes such connections.
        user: the viewer's account when the authorizer knows it, for the audit trail.
    """

    refusal: str | None = None
    view_only: bool = False
    until: float | None = None
    grant: str = ""
    user: str = ""


FULL_ACCESS = Access()

#: Decides whether the WebSocket request ``scope`` may use ``session``, and how.
Authorizer = Callable[[Scope, SessionInfo], Awaitable[Access]]

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY_VIOLATION = 1008
CLOSE_INTERNAL_ERROR = 1011

# RFC 6455 §5.5: a control frame's payload is at most 125 bytes, 2 of them the close code.
MAX_CLOSE_REASON_BYTES = 123

# Both RFB handshakes, when the gateway answers the VNC server's authentication, end within this.
HANDSHAKE_TIMEOUT = 15.0

# What a browser may send before its session runs or the handshake is done; more is refused.
MAX_HELD_BYTES = 64 * 1024

_FAILURE_REASONS = frozenset({EndReason.START_FAILED, EndReason.START_TIMEOUT, EndReason.CRASHED})


def close_code_for(reason: EndReason) -> int:
    """The WebSocket close code for a session that ended for ``reason``."""
    return CLOSE_INTERNAL_ERROR if reason in _FAILURE_REASONS else CLOSE_GOING_AWAY


def _close_reason(text: str) -> str:
    encoded = text.encode()
    if len(encoded) <= MAX_CLOSE_REASON_BYTES:
        return text
    return encoded[: MAX_CLOSE_REASON_BYTES - 3].decode(errors="ignore") + "..."


def _message_bytes(message: Message) -> bytes:
    """The payload of a ``websocket.receive`` message; text frames as UTF-8."""
    data = message.get("bytes")
    if data is None:
        data = (message.get("text") or "").encode()
    return bytes(data)


class _ViewOnlyRefused(Exception):
    """A view-only viewer sent, or its VNC server sent it, what the gateway cannot let through
    or cannot measure; the reason is for people."""


class _ClientGone(Exception):
    """The browser closed its WebSocket."""


class Tunnel:
    """The ASGI application that carries VNC over WebSockets.

    Args:
        broker: the session broker the tokens belong to.
        authorize: asked before the WebSocket is accepted whether the request may use the
            token's session (its logged-in user owns it, belongs to the type's group, ...);
            None lets every holder of a valid token in, as the seed's bearer tokens do.
    """

    def __init__(
        self,
        broker: Broker,
        *,
        authorize: Authorizer | None = None,
    ) -> None:
        self.broker = broker
        self.authorize = authorize

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            raise ValueError(f"the tunnel serves websocket scopes, not {scope['type']!r}")
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        await _Connection(self.broker, scope, receive, send, self.authorize).run()


class _Connection:
    """One browser WebSocket and its TCP connection to the VNC server."""

    def __init__(
        self,
        broker: Broker,
        scope: Scope,
        receive: Receive,
        send: Send,
        authorize: Authorizer | None,
    ) -> None:
        self.broker = broker
        self.authorize = authorize
        self.scope = scope
        self.receive = receive
        self.send = send
        self.client_gone = False
        self.closed = False
        # The receive() begun while the session started, and what the browser sent meanwhile;
        # the relay takes both over.
        self._early_message: asyncio.Future[Message] | None = None
        self._held: list[bytes] = []
        # Once the connection is taken over (see vizgate.fastpath), it closes through this.
        self._link: FastLink | None = None
        # What a view-only viewer sends passes through this (None: everything passes).
        self._input_filter: ViewOnlyFilter | None = None
        # ... and what its VNC server sends it, through this.
        self._output_filter: ViewOnlyServerFilter | None = None
        self._until_timer: asyncio.TimerHandle | None = None

    async def run(self) -> None:
        subprotocols = self.scope.get("subprotocols") or []
        accept: Message = {"type": "websocket.accept"}
        if "binary" in subprotocols:
            accept["subprotocol"] = "binary"
        token, session = self.find_session()
        if session is None:
            await self.send(accept)
            await self.close(CLOSE_POLICY_VIOLATION, "unknown, expired or released token")
            return
        access = await self.authorize(self.scope, session) if self.authorize else FULL_ACCESS
        await self.send(accept)
        if access.refusal is not None:
            logger.warning("refused a viewer of session %s: %s", session.id, access.refusal)
            await self.close(CLOSE_POLICY_VIOLATION, access.refusal)
            return
        if access.view_only:
            self._output_filter = ViewOnlyServerFilter()
            self._input_filter = ViewOnlyFilter(
                on_pixel_format=self._output_filter.set_pixel_format
            )
        client = self.scope.get("client")
        address = f"{client[0]}:{client[1]}" if client else ""
        if token:
            attachment = await self.attach(
                lambda: self.broker.attach(token, client=address, user=access.user)
            )
        else:
            attachment = await self.attach(
                lambda: self.broker.attach_session(
                    session.id, client=address, user=access.user, grant=access.grant
                )
            )
        if attachment is None:
            return
        if access.until is not None:
            self._until_timer = asyncio.get_running_loop().call_later(
                max(0.0, access.until - time.time()), attachment.revoke, "the access has expired"
            )
        try:
            await self.relay(attachment)
        finally:
            if self._until_timer is not None:
                self._until_timer.cancel()
            self.broker.detach(attachment)

    def find_session(self) -> tuple[str, SessionInfo | None]:
        """The token a request holds ("" if none), and the session it names.

        A ``token`` query field is the seed's bearer token. A ``session`` field names a session
        by its public id instead, so a logged-in portal user's page never holds the token; it is
        only honoured for sessions bound to a user, and the authorizer must then approve.
        """
        query = parse_qs(bytes(self.scope.get("query_string", b"")).decode("latin-1"))
        token = (query.get("token") or [""])[0]
        if token:
            return token, self.broker.session_of_token(token)
        session_id = (query.get("session") or [""])[0]
        session = self.broker.session_by_id(session_id) if session_id else None
        if session is None or not session.bound or self.authorize is None:
            return "", None
        return "", session

    async def close(self, code: int, reason: str) -> None:
        if self.closed or self.client_gone:
            return
        self.closed = True
        if self._link is not None:
            self._link.close(code, _close_reason(reason))
            return
        with contextlib.suppress(OSError, RuntimeError):
            await self.send(
                {"type": "websocket.close", "code": code, "reason": _close_reason(reason)}
            )

    async def attach(self, attach: Callable[[], Awaitable[Attachment]]) -> Attachment | None:
        """Attach to the session, starting it if needed; watch the browser meanwhile.

        A browser speaks second in RFB, but a client of another protocol may not: what it
        sends while the session starts is held (up to :data:`MAX_HELD_BYTES`) and delivered
        first once the relay runs. A close ends the wait.
        """
        attaching = asyncio.ensure_future(attach())
        listening = asyncio.ensure_future(self.receive())
        held = 0
        try:
            while True:
                await asyncio.wait({attaching, listening}, return_when=asyncio.FIRST_COMPLETED)
                if not listening.done():
                    break
                message = listening.result()
                if message["type"] == "websocket.disconnect":
                    self.client_gone = True
                    attaching.cancel()
                    with contextlib.suppress(asyncio.CancelledError, ReservationError, StartError):
                        await attaching
                    return None
                data = _message_bytes(message)
                held += len(data)
                if held > MAX_HELD_BYTES:
                    attaching.cancel()
                    with contextlib.suppress(asyncio.CancelledError, ReservationError, StartError):
                        await attaching
                    await self.close(CLOSE_POLICY_VIOLATION, "too much data before the session ran")
                    return None
                if data:
                    self._held.append(data)
                listening = asyncio.ensure_future(self.receive())
                if attaching.done():
                    break
        except asyncio.CancelledError:
            attaching.cancel()
            listening.cancel()
            raise
        leaving = listening
        try:
            attachment = attaching.result()
        except ReservationError:
            leaving.cancel()
            await self.close(CLOSE_POLICY_VIOLATION, "unknown, expired or released token")
            return None
        except StartError as error:
            leaving.cancel()
            await self.close(CLOSE_INTERNAL_ERROR, f"session failed to start: {error.user_message}")
            return None
        self._early_message = leaving
        return attachment

    async def relay(self, attachment: Attachment) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, server = await loop.create_connection(
                VncConnection, attachment.host, attachment.port
            )
        except OSError as error:
            if self._early_message is not None:
                self._early_message.cancel()
            logger.warning(
                "viewer %d: cannot connect to %s:%d: %s",
                attachment.connection_id,
                attachment.host,
                attachment.port,
                error.strerror or error,
            )
            await self.close(CLOSE_INTERNAL_ERROR, "cannot connect to the VNC server")
            return
        try:
            password = attachment.password
        except VncPasswordFileError as error:
            logger.error("viewer %d: %s", attachment.connection_id, error)
            password = None
            failure: str | None = "the gateway cannot read its VNC password file (see its log)"
        else:
            failure = None
            view_only = self._input_filter is not None
            if password is not None or view_only:
                # A view-only viewer always goes through the bridge: its ClientInit must ask
                # to share the desktop and its first messages must be filtered too.
                failure = await self._answer_authentication(server, password or b"")
        if failure is not None:
            if self._early_message is not None:
                self._early_message.cancel()
            server.close()
            if not self.client_gone:
                logger.warning("viewer %d: %s", attachment.connection_id, failure)
            await self.close(CLOSE_INTERNAL_ERROR, failure)
            return
        takeover = self.scope.get("extensions", {}).get(TAKEOVER_EXTENSION)
        # The fast path relays what the browser sends unread: view-only viewers take this one.
        if isinstance(takeover, Takeover) and self._input_filter is None:
            await self._relay_taken_over(takeover, attachment, server)
            return
        to_server = asyncio.ensure_future(self._browser_to_server(attachment, server))
        to_client = asyncio.ensure_future(self._server_to_browser(attachment, server))
        pumps: set[asyncio.Future[Any]] = {
            to_server,
            to_client,
            attachment.close_requested,
            attachment.revoked,
        }
        try:
            done, _ = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            to_server.cancel()
            to_client.cancel()
            for task in (to_server, to_client):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            server.close()
        if attachment.close_requested in done:
            request: CloseRequest = attachment.close_requested.result()
            await self.close(close_code_for(request.reason), request.message)
        elif attachment.revoked in done:
            await self.close(CLOSE_POLICY_VIOLATION, attachment.revoked.result())
        elif refused := next(
            (
                task.exception()
                for task in (to_server, to_client)
                if task in done and isinstance(task.exception(), _ViewOnlyRefused)
            ),
            None,
        ):
            logger.warning("viewer %d: %s", attachment.connection_id, refused)
            await self.close(CLOSE_POLICY_VIOLATION, str(refused))
        elif to_client in done and to_client.exception() is None:
            attachment.server_closed()
            await self.close(CLOSE_INTERNAL_ERROR, "VNC server closed the connection")
        elif to_server in done and isinstance(to_server.exception(), _ClientGone):
            self.client_gone = True
        else:
            await self.close(CLOSE_INTERNAL_ERROR, "connection to the VNC server failed")

    async def _relay_taken_over(
        self, takeover: Takeover, attachment: Attachment, server: VncConnection
    ) -> None:
        """Relay with the connection taken over from the ASGI server (vizgate.fastpath)."""
        transport, downstream, write_paused = server.hand_over()
        pending, self._early_message = self._early_message, None
        held, self._held = self._held, []
        try:
            link = takeover(
                pending=pending,
                upstream=held,
                server=transport,
                downstream=downstream,
                server_write_paused=write_paused,
                counters=attachment,
            )
            self._link = link
            waited: set[asyncio.Future[Any]] = {
                link.ended,
                attachment.close_requested,
                attachment.revoked,
            }
            done, _ = await asyncio.wait(waited, return_when=asyncio.FIRST_COMPLETED)
        finally:
            transport.close()
        if attachment.close_requested in done:
            request: CloseRequest = attachment.close_requested.result()
            await self.close(close_code_for(request.reason), request.message)
        elif attachment.revoked in done:
            await self.close(CLOSE_POLICY_VIOLATION, attachment.revoked.result())
        elif link.ended.result() == CLIENT_GONE:
            self.client_gone = True
        else:
            attachment.server_closed()
            await self.close(CLOSE_INTERNAL_ERROR, "VNC server closed the connection")

    async def _answer_authentication(self, server: VncConnection, password: bytes) -> str | None:
        """Run both RFB handshakes, answering the VNC server's challenge with ``password``.

        The browser is offered security type None and never sees the password (RFC 6143 §7.2).
        Returns None when the relay may start, else why it may not.
        """
        view_only = self._input_filter
        shown = self._output_filter
        bridge = RfbBridge(
            password,
            force_shared=view_only is not None,
            client_filter=view_only.feed if view_only is not None else None,
            server_filter=shown.feed if shown is not None else None,
        )
        for data in self._held:
            bridge.receive_from_client(data)
        received = sum(len(data) for data in self._held)
        self._held = []
        assert self._early_message is not None
        from_client: asyncio.Future[Message] = self._early_message
        from_server: asyncio.Future[bytes] = asyncio.ensure_future(server.read())
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                while True:
                    to_client = bridge.data_to_client()
                    if to_client:
                        await self.send({"type": "websocket.send", "bytes": to_client})
                    to_server = bridge.data_to_server()
                    if to_server:
                        await server.write(to_server)
                    if bridge.established or bridge.failure is not None:
                        break
                    pending: set[asyncio.Future[Any]] = {from_client, from_server}
                    await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    if from_server.done():
                        data = from_server.result()
                        if data:
                            bridge.receive_from_server(data)
                            from_server = asyncio.ensure_future(server.read())
                        else:
                            bridge.receive_eof_from_server()
                    if from_client.done():
                        message = from_client.result()
                        if message["type"] == "websocket.disconnect":
                            self.client_gone = True
                            return "the browser left during the VNC handshake"
                        data = _message_bytes(message)
                        received += len(data)
                        if received > MAX_HELD_BYTES:
                            return "the browser sent too much during the VNC handshake"
                        bridge.receive_from_client(data)
                        from_client = asyncio.ensure_future(self.receive())
        except TimeoutError:
            return f"the VNC handshake did not finish within {HANDSHAKE_TIMEOUT:g} s"
        except OSError:
            return "connection to the VNC server failed during the handshake"
        finally:
            # A pending read takes nothing from the server connection when cancelled.
            from_server.cancel()
            self._early_message = from_client
        if view_only is not None and view_only.refusal is not None:
            return view_only.refusal
        if shown is not None and shown.refusal is not None:
            return shown.refusal
        return bridge.failure

    async def _browser_to_server(self, attachment: Attachment, server: VncConnection) -> None:
        view_only = self._input_filter
        for data in self._held:
            await self._to_server(attachment, server, data)
        self._held = []
        assert self._early_message is not None
        message = await self._early_message
        while True:
            kind = message["type"]
            if kind == "websocket.disconnect":
                raise _ClientGone
            if kind == "websocket.receive":
                data = _message_bytes(message)
                if view_only is None:
                    if data:
                        attachment.note_input()
                        await self._to_server(attachment, server, data)
                else:
                    # A viewer who only watches does not keep the session from idling.
                    data = view_only.feed(data)
                    if view_only.refusal is not None:
                        raise _ViewOnlyRefused(view_only.refusal)
                    await self._to_server(attachment, server, data)
            message = await self.receive()

    @staticmethod
    async def _to_server(attachment: Attachment, server: VncConnection, data: bytes) -> None:
        if data:
            attachment.bytes_to_server += len(data)
            await server.write(data)

    async def _server_to_browser(self, attachment: Attachment, server: VncConnection) -> None:
        send = self.send
        shown = self._output_filter
        while True:
            data = await server.read()
            if not data:
                return
            if shown is not None:
                # A watcher is not sent what the session puts on its clipboard.
                data = shown.feed(data)
                if shown.refusal is not None:
                    raise _ViewOnlyRefused(shown.refusal)
                if not data:
                    continue
            attachment.bytes_to_client += len(data)
            await send({"type": "websocket.send", "bytes": data})
