"""The one ASGI application of the gateway.

``http`` scopes go to Django, ``websocket`` scopes to the tunnel (any path: the seed's tunnel
ignores it and reads the ``token`` query field), and the ``lifespan`` scope opens the broker
when the server starts and stops every session when it stops.

Behind a reverse proxy that serves the gateway under a path (``--url-prefix /vizgate``),
requests get the prefix as their ASGI ``root_path``, from which Django builds every URL. The
proxy may pass paths on unchanged (nginx ``proxy_pass http://host:port;``) or strip the prefix
(nginx ``proxy_pass http://host:port/;``, Apache ``ProxyPass /vizgate/ http://host:port/``): a
path that does not start with the prefix is taken as stripped and given it back. The prefix
alone is redirected to itself with a slash.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from vizgate.broker import Broker
from vizgate.tunnel import Tunnel
from vizgate.web import runtime

if TYPE_CHECKING:
    from vizgate.web.housekeeping import Housekeeper

__all__ = ["ASGIApp", "Gateway", "Receive", "Scope", "Send", "build_application"]

logger = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[Mapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class Gateway:
    """Routes each ASGI scope to its application and runs the broker for the server's life.

    Args:
        broker: the session broker; opened at lifespan start-up, closed at shutdown.
        http: the application for ``http`` scopes (Django).
        websocket: the application for ``websocket`` scopes (the tunnel).
        stop_sessions_on_exit: stop every session when the server stops; by default running
            sessions keep running and the next start of the gateway adopts them.
        housekeeper: sweeps the database while the server runs (started once the broker is
            open).
        on_open: called once the broker is open (the server records what it serves).

    Attributes:
        startup_error: why the lifespan start-up failed, if it did (the server reports it).
    """

    def __init__(
        self,
        broker: Broker,
        *,
        http: ASGIApp,
        websocket: ASGIApp,
        stop_sessions_on_exit: bool = False,
        url_prefix: str = "",
        housekeeper: Housekeeper | None = None,
        on_open: Callable[[], None] | None = None,
    ) -> None:
        self.broker = broker
        self.housekeeper = housekeeper
        self.on_open = on_open
        self.stop_sessions_on_exit = stop_sessions_on_exit
        self.http = http
        self.websocket = websocket
        self.url_prefix = url_prefix
        self.startup_error: BaseException | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            if self.url_prefix:
                await self._under_prefix(scope, receive, send)
            else:
                await self.http(scope, receive, send)
        elif kind == "websocket":
            if self.url_prefix:
                scope = {**scope, "root_path": scope.get("root_path", "") + self.url_prefix}
            await self.websocket(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        else:
            raise ValueError(f"vizgate serves http, websocket and lifespan scopes, not {kind!r}")

    async def _under_prefix(self, scope: Scope, receive: Receive, send: Send) -> None:
        """An HTTP request when the gateway is served under :attr:`url_prefix`."""
        prefix = self.url_prefix
        path: str = scope["path"]
        if path == prefix:
            headers = [(b"location", (prefix + "/").encode())]
            await send({"type": "http.response.start", "status": 308, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        if not path.startswith(prefix + "/"):
            # A proxy that strips the prefix. The path gets it back: in ASGI the path includes
            # the root_path, and Django strips it again.
            raw_path: bytes = scope.get("raw_path") or path.encode()
            scope = {**scope, "path": prefix + path, "raw_path": prefix.encode() + raw_path}
        root_path = scope.get("root_path", "") + prefix
        await self.http({**scope, "root_path": root_path}, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.broker.open()
                except Exception as exc:
                    self.startup_error = exc
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                runtime.set_broker(self.broker)
                logger.info(
                    "broker open: %d session type(s), %d instance(s)",
                    len(self.broker.catalog),
                    self.broker.catalog.instance_count,
                )
                if self.on_open is not None:
                    self.on_open()
                if self.housekeeper is not None:
                    self.housekeeper.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.housekeeper is not None:
                    await self.housekeeper.stop()
                runtime.set_broker(None)
                try:
                    await self.broker.close(stop_sessions=self.stop_sessions_on_exit)
                except Exception as exc:
                    logger.exception("closing the broker failed")
                    await send({"type": "lifespan.shutdown.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.shutdown.complete"})
                return


def build_application(
    broker: Broker,
    *,
    stop_sessions_on_exit: bool = False,
    url_prefix: str = "",
    history_days: int | None = None,
    on_open: Callable[[], None] | None = None,
) -> Gateway:
    """The gateway's ASGI application: Django for HTTP, the tunnel for WebSockets.

    Django must be set up first (:func:`vizgate.web.setup_django`).

    Args:
        broker: the session broker (not yet open).
        stop_sessions_on_exit: see :class:`Gateway`.
        url_prefix: the path the gateway is served under (``/vizgate``), or "" (the module's
            description says how it is served).
        history_days: how long the history of ended sessions is kept; None keeps it all
            (:mod:`vizgate.web.housekeeping`).
        on_open: see :class:`Gateway`.
    """
    # Imported here: Django's handler and the portal's authorizer need configured settings.
    from django.core.handlers.asgi import ASGIHandler

    from vizgate.web.housekeeping import Housekeeper
    from vizgate.web.portal.auth import make_authorizer

    return Gateway(
        broker,
        http=ASGIHandler(),
        websocket=Tunnel(broker, authorize=make_authorizer(broker)),
        stop_sessions_on_exit=stop_sessions_on_exit,
        url_prefix=url_prefix,
        housekeeper=Housekeeper(history_days),
        on_open=on_open,
    )
