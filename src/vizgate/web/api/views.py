"""The seed's ``/v1`` REST API, served as the ADR websocket server documents it.

``GET /v1/reserve/{servicename}?option=value...``
    Reserve an instance of a session type; answers the token a viewer's WebSocket carries.
``GET /v1/release/{token}``
    End the session of a token: stop it if it started, free it if it did not.
``GET /v1/status`` and ``GET /v1/status_view``
    Every session type and live session, as JSON and as an HTML page (never a full token).
``GET /v1/stop``
    Stop the server gracefully; only when a security token is configured.

When the server has a security token, every call must carry it in the ``security_token``
query field, as the seed's clients do, or as ``Authorization: Bearer TOKEN``, which keeps it out
of URLs and access logs (401 otherwise). Failures answer JSON with an ``error`` message for a
person and a short ``reason`` label. The views are async and await the broker on the server's
event loop.
"""

from __future__ import annotations

import functools
import hmac
import logging
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils.cache import add_never_cache_headers
from django.views.decorators.csrf import csrf_exempt

from vizgate.accounts import amay_use, forbidden_message
from vizgate.exceptions import ReservationError
from vizgate.sessions import NodeInfo, ServiceInfo, SessionInfo, session_id_of
from vizgate.web import runtime
from vizgate.web.portal.context import notice_file

__all__ = [
    "SECURITY_TOKEN_FIELD",
    "USERNAME_FIELD",
    "authorized",
    "ended_session_json",
    "read_only_endpoint",
    "release",
    "reserve",
    "service_json",
    "session_json",
    "status",
    "status_view",
    "stop",
    "v1_endpoint",
]

logger = logging.getLogger(__name__)

#: The query field that carries the server's security token.
SECURITY_TOKEN_FIELD = "security_token"  # noqa: S105 -- a field name, not a secret
#: The query field that names the user a reservation is for ("" for anonymous API use).
USERNAME_FIELD = "username"

# ReservationError.reason -> HTTP status.
_STATUS_OF_REASON = {
    "unknown_type": 404,
    "unknown_token": 404,
    "unknown_session": 404,
    "bad_option": 400,
    "forbidden": 403,
    "no_free_instance": 409,
    "user_limit": 409,
    "paused": 503,
}

_View = Callable[..., Coroutine[Any, Any, HttpResponse]]


def _error(status: int, reason: str, message: str, **extra: Any) -> JsonResponse:
    return JsonResponse({"error": message, "reason": reason, **extra}, status=status)


def authorized(request: HttpRequest) -> bool:
    """Whether ``request`` carries the server's security token (or the server has none): in
    the ``security_token`` query field or as ``Authorization: Bearer TOKEN``."""
    expected = runtime.get_security_token()
    if expected is None:
        return True
    given = request.GET.get(SECURITY_TOKEN_FIELD, "")
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    if not given and scheme.lower() == "bearer":
        given = credentials.strip()
    # Constant time, so the response time does not tell how much of a guess was right.
    return hmac.compare_digest(given.encode(), expected.encode())


def v1_endpoint(view: _View) -> _View:
    """Make an async view a ``/v1`` endpoint: GET only, security token checked, never cached.

    Exempt from CSRF: the endpoints are GET requests guarded by the security token, and a
    POST must get 405 rather than a CSRF failure.
    """

    @functools.wraps(view)
    async def endpoint(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        response: HttpResponse
        if request.method != "GET":
            response = _error(
                405, "method_not_allowed", f"{request.method} is not allowed here; use GET"
            )
            response["Allow"] = "GET"
        elif not authorized(request):
            response = _error(
                401,
                "unauthorized",
                f"this server requires its security token in the {SECURITY_TOKEN_FIELD!r} "
                "query field or as an Authorization: Bearer header",
            )
        else:
            try:
                response = await view(request, *args, **kwargs)
            except runtime.BrokerUnavailable as exc:
                response = _error(503, "unavailable", str(exc))
        # Answers carry tokens and live state: no cache may keep them.
        add_never_cache_headers(response)
        return response

    return csrf_exempt(endpoint)


def read_only_endpoint(view: _View) -> _View:
    """Make an async view a plain read-only endpoint (``/metrics``, ``/healthz``): GET and HEAD
    only (else 405, in plain text), never cached, exempt from CSRF."""

    @functools.wraps(view)
    async def endpoint(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        response: HttpResponse
        if request.method not in ("GET", "HEAD"):
            response = HttpResponse(
                "use GET\n", status=405, content_type="text/plain; charset=utf-8"
            )
            response["Allow"] = "GET, HEAD"
        else:
            response = await view(request, *args, **kwargs)
        add_never_cache_headers(response)
        return response

    return csrf_exempt(endpoint)


def _reservation_error(exc: ReservationError, **extra: Any) -> JsonResponse:
    return _error(_STATUS_OF_REASON.get(exc.reason, 400), exc.reason, str(exc), **extra)


def _iso_utc(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def service_json(info: ServiceInfo) -> dict[str, Any]:
    """One session type as ``/v1/status`` shows it."""
    return {
        "name": info.name,
        "count": info.count,
        "in_use": info.in_use,
        "sizes": list(info.sizes),
        "group": info.group,
        "choices": {name: list(values) for name, values in info.choices.items()},
        "failed_recently": sorted(info.failed_recently),
        "paused": info.paused,
        "free_on_paused_nodes": info.free_on_paused_nodes,
    }


def node_json(info: NodeInfo) -> dict[str, Any]:
    """One node as ``/v1/status`` shows it."""
    return {
        "name": info.name,
        "instances": [{"service": name, "index": index} for name, index in info.instances],
        "in_use": info.in_use,
        "paused": info.paused,
    }


def session_json(info: SessionInfo) -> dict[str, Any]:
    """One live session as ``/v1/status`` shows it: its public id and a token prefix only."""
    return {
        "id": info.id,
        "token_prefix": info.token_prefix,
        "service": info.service,
        "index": info.index,
        "state": info.state,
        "connections": info.connections,
        "user": info.user,
        "size": info.size,
        "choices": dict(info.choices),
        "since": _iso_utc(info.created),
        "host": info.host,
        "port": info.port,
        "progress": info.progress,
        "bytes_to_client": info.bytes_to_client,
        "bytes_to_server": info.bytes_to_server,
        # When a limit will end it (idle_timeout, max_lifetime, time_limit), if one will.
        "ends_at": _iso_utc(info.ends_at),
        "ends_because": info.ends_because,
    }


def ended_session_json(info: SessionInfo) -> dict[str, Any]:
    """One ended session: what :func:`session_json` shows, when it ended and why."""
    return {
        **session_json(info),
        "ended": _iso_utc(info.ended),
        "end_reason": info.end_reason or "",
        "message": info.message,
    }


@v1_endpoint
async def reserve(request: HttpRequest, servicename: str) -> HttpResponse:
    """Reserve the lowest free instance of ``servicename``.

    Every query field but ``security_token`` and ``username`` goes to the script's
    ``start()`` as a reservation option; ``size`` must be one the type offers.

    A request from a browser logged in to the portal reserves for that user (``username`` is
    then ignored). A type whose ``options.group`` names a group is refused (403) to a logged-in
    user outside the group (administrators may use every type), and to anonymous callers of a
    server without a security token; the holder of the security token may reserve every type.
    """
    broker = runtime.get_broker()
    query = request.GET
    viewer = await request.auser()
    user = viewer.get_username() if viewer.is_authenticated else query.get(USERNAME_FIELD, "")
    options = {
        key: query[key] for key in query if key not in (SECURITY_TOKEN_FIELD, USERNAME_FIELD)
    }
    service = broker.catalog.get(servicename)
    if service is not None and service.group is not None:
        if viewer.is_authenticated:
            allowed = await amay_use(viewer, service.group)
        else:
            allowed = runtime.get_security_token() is not None
        if not allowed:
            return _error(
                403,
                "forbidden",
                forbidden_message(service.name, service.group)
                + ("" if viewer.is_authenticated else "; log in to the portal first"),
                group=service.group,
            )
    try:
        reservation = await broker.reserve(
            servicename,
            user=user,
            options=options,
            # Administrators are not held to the per-user limits.
            unlimited=bool(viewer.is_authenticated and getattr(viewer, "is_staff", False)),
        )
    except ReservationError as exc:
        extra: dict[str, Any] = {}
        if exc.reason == "unknown_type":
            extra["services"] = [info.name for info in broker.services()]
        elif exc.reason == "bad_option":
            extra["allowed_sizes"] = list(broker.service(servicename).sizes)
        return _reservation_error(exc, **extra)
    return JsonResponse(
        {
            "token": reservation.token,
            "session_id": reservation.session_id,
            "service": reservation.service,
            "index": reservation.index,
        }
    )


@v1_endpoint
async def release(request: HttpRequest, token: str) -> HttpResponse:
    """End the session of ``token``: stop it if it started, free its instance if it did not."""
    broker = runtime.get_broker()
    try:
        changed = broker.release(token)
    except ReservationError as exc:
        return _reservation_error(exc)
    # A reservation that never started ends at once; then only the history knows it.
    session_id = session_id_of(token)
    info = broker.session_of_token(token) or next(
        (ended for ended in broker.history() if ended.id == session_id), None
    )
    return JsonResponse(
        {
            "session_id": session_id,
            "service": info.service if info else None,
            "index": info.index if info else None,
            "state": info.state if info else "ended",
            "already_ending": not changed,
        }
    )


@v1_endpoint
async def status(request: HttpRequest) -> HttpResponse:
    """Every session type with its use, and every live session."""
    broker = runtime.get_broker()
    return JsonResponse(
        {
            "paused": broker.paused(),
            "notice": notice_file().text(),
            "services": [service_json(info) for info in broker.services()],
            "nodes": [node_json(info) for info in broker.nodes()],
            "sessions": [session_json(info) for info in broker.sessions()],
            "ended": [ended_session_json(info) for info in broker.history()],
        }
    )


@v1_endpoint
async def status_view(request: HttpRequest) -> HttpResponse:
    """``/v1/status`` as a page a person reads, with the sessions that ended lately."""
    broker = runtime.get_broker()
    ended = [ended_session_json(info) for info in broker.history()]
    return render(
        request,
        "api/status_view.html",
        {
            "services": [service_json(info) for info in broker.services()],
            "nodes": [node_json(info) for info in broker.nodes()],
            "sessions": [session_json(info) for info in broker.sessions()],
            "ended": ended,
        },
    )


@v1_endpoint
async def stop(request: HttpRequest) -> HttpResponse:
    """Stop the server gracefully: every session is stopped, then the process exits 0.

    Only a server with a security token may be stopped this way; otherwise anyone who can
    reach it could.
    """
    if runtime.get_security_token() is None:
        return _error(
            403,
            "forbidden",
            "/v1/stop is only allowed when the server has a security token "
            "(--security-token or VIZGATE_SECURITY_TOKEN)",
        )
    if not runtime.request_stop():
        return _error(503, "unavailable", "this process has no server to stop")
    logger.info("stop requested through /v1/stop")
    return JsonResponse({"stopping": True})
