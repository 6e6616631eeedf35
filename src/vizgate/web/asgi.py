"""The one ASGI application of the gateway.

``http`` scopes go to Django, ``websocket`` scopes to the tunnel (any path: the seed's tunnel
ignores it and reads the ``token`` query field), and the ``lifespan`` scope opens the broker
when the server starts and stops every session when it stops.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from vizgate.broker import Broker
from vizgate.tunnel import Tunnel
from vizgate.web import runtime

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
    ) -> None:
        self.broker = broker
        self.stop_sessions_on_exit = stop_sessions_on_exit
        self.http = http
        self.websocket = websocket
        self.startup_error: BaseException | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self.http(scope, receive, send)
        elif kind == "websocket":
            await self.websocket(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        else:
            raise ValueError(f"vizgate serves http, websocket and lifespan scopes, not {kind!r}")

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
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
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
) -> Gateway:
    """The gateway's ASGI application: Django for HTTP, the tunnel for WebSockets.

    Django must be set up first (:func:`vizgate.web.setup_django`).

    Args:
        broker: the session broker (not yet open).
        stop_sessions_on_exit: see :class:`Gateway`.
    """
    # Imported here: Django's handler and the portal's authorizer need configured settings.
    from django.core.handlers.asgi import ASGIHandler

    from vizgate.web.portal.auth import make_authorizer

    return Gateway(
        broker,
        http=ASGIHandler(),
        websocket=Tunnel(broker, authorize=make_authorizer(broker)),
        stop_sessions_on_exit=stop_sessions_on_exit,
    )
