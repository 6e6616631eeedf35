"""Who may open a session's WebSocket: the tunnel's authorizer.

The tunnel asks before it accepts a WebSocket (:data:`vizgate.tunnel.Authorizer`). The answer
depends on who is asking, which the gateway learns from the portal's session cookie, and on
the session:

* an administrator (staff) may open every session;
* a session reserved by the portal for a user (``bound``) is for that user only, and for
  logged-in users who opened one of its share links, who may watch but not control it
  (:mod:`vizgate.web.portal.shares`);
* a session type whose ``options.group`` names a group refuses logged-in users outside it;
* otherwise a token from ``/v1/reserve`` is a bearer token, as the seed defines: whoever
  presents it may connect.

With single sign-on (:mod:`vizgate.web.single_sign_on`), a cookie whose user is not the one the
trusted proxy names is not believed either.

The cookie is believed only when the WebSocket's ``Origin`` is the gateway's own origin (or one
of ``CSRF_TRUSTED_ORIGINS``) on an allowed host name. Browsers send cookies with WebSocket
requests from any page, and cookies are not bound to a port; without this check another page
could open a logged-in user's desktop in the user's own browser (cross-site WebSocket
hijacking).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import import_module
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.auth import aget_user
from django.http import HttpRequest
from django.http.cookie import parse_cookie
from django.http.request import split_domain_port, validate_host

from vizgate.accounts import agroup_names, forbidden_message
from vizgate.broker import Broker
from vizgate.sessions import SessionInfo
from vizgate.tunnel import FULL_ACCESS, Access, Authorizer
from vizgate.web.database_outage import (
    DATABASE_AWAY_ERRORS,
    DATABASE_AWAY_MESSAGE,
    outage_reason,
)
from vizgate.web.portal.shares import SHARES_KEY, live_share
from vizgate.web.proxy_trust import account_name

__all__ = [
    "Viewer",
    "make_authorizer",
    "origin_allowed",
    "refusal",
    "viewer_of_scope",
]

logger = logging.getLogger(__name__)

CROSS_ORIGIN_REFUSAL = "refused: the page is not from this gateway (cross-origin WebSocket)"
LOGIN_REFUSAL = "log in to the portal to open this session"
OWNER_REFUSAL = "this session belongs to another user"
SIGNED_IN_ELSEWHERE_REFUSAL = (
    "another user has signed in at the site's login in this browser: reload the page"
)
SHARE_ENDED_REFUSAL = "the share link to this session has expired or was withdrawn"


@dataclass(frozen=True)
class Viewer:
    """Who opens a WebSocket, as far as the gateway knows.

    Attributes:
        username: the logged-in user, "" when nobody is (or the cookie was not believed).
        staff: an administrator.
        groups: the user's groups.
        cookie_refused: why a session cookie that came with the request was not believed.
        shares: the share links the user opened, by session id (link ids, not yet checked).
    """

    username: str = ""
    staff: bool = False
    groups: frozenset[str] = frozenset()
    cookie_refused: str | None = None
    shares: Mapping[str, object] = field(default_factory=dict)


def refusal(viewer: Viewer, session: SessionInfo, group: str | None) -> str | None:
    """Why ``viewer`` may not open ``session`` of a type for ``group``; None if it may."""
    if viewer.staff:
        return None
    if session.bound:
        if not viewer.username:
            return viewer.cookie_refused or LOGIN_REFUSAL
        if viewer.username != session.user:
            return OWNER_REFUSAL
    return _group_refusal(viewer, session, group)


def _group_refusal(viewer: Viewer, session: SessionInfo, group: str | None) -> str | None:
    """Why a logged-in ``viewer`` outside ``group`` may not open ``session``; None if it may."""
    if group is not None and viewer.username and group not in viewer.groups:
        return forbidden_message(session.service, group)
    return None


def _headers(scope: Mapping[str, Any]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in scope.get("headers") or ():
        key = bytes(name).decode("latin-1").lower()
        text = bytes(value).decode("latin-1")
        # RFC 6265 §5.4: a client sends one Cookie header, but joining is harmless.
        headers[key] = f"{headers[key]}; {text}" if key in headers and key == "cookie" else text
    return headers


def origin_allowed(
    origin: str,
    *,
    host: str,
    secure: bool,
    allowed_hosts: Iterable[str],
    trusted_origins: Iterable[str] = (),
) -> bool:
    """Is a WebSocket request from ``origin`` one of the gateway's own pages?

    Args:
        origin: the request's ``Origin`` header ("" when missing).
        host: its ``Host`` header.
        secure: it came over TLS (``wss``).
        allowed_hosts: Django's ``ALLOWED_HOSTS``.
        trusted_origins: further origins to accept (``CSRF_TRUSTED_ORIGINS``).
    """
    if not origin or origin == "null":
        return False
    if origin in set(trusted_origins):
        return True
    domain, _ = split_domain_port(host)
    if not domain or not validate_host(domain, list(allowed_hosts)):
        return False
    parts = urlsplit(origin)
    expected_scheme = "https" if secure else "http"
    # The same origin as the page the portal served: scheme, host and port (RFC 6454 §5).
    return parts.scheme == expected_scheme and parts.netloc.lower() == host.lower()


async def viewer_of_scope(scope: Mapping[str, Any]) -> Viewer:
    """Who a WebSocket request comes from, from the portal's session cookie.

    The session is read with Django's async session and auth APIs, so the event loop never
    waits on the database itself.
    """
    headers = _headers(scope)
    cookies = parse_cookie(headers.get("cookie", ""))
    session_key = cookies.get(settings.SESSION_COOKIE_NAME)
    if not session_key:
        return Viewer()
    allowed = origin_allowed(
        headers.get("origin", ""),
        host=headers.get("host", ""),
        secure=scope.get("scheme") in ("wss", "https"),
        allowed_hosts=settings.ALLOWED_HOSTS,
        trusted_origins=settings.CSRF_TRUSTED_ORIGINS,
    )
    if not allowed:
        return Viewer(cookie_refused=CROSS_ORIGIN_REFUSAL)
    engine = import_module(settings.SESSION_ENGINE)
    request = HttpRequest()
    request.session = engine.SessionStore(session_key)
    user = await aget_user(request)
    if not user.is_authenticated:
        return Viewer()
    if settings.VIZGATE_REMOTE_USER_HEADER:
        # The guard has removed the header unless a trusted proxy sent it.
        named = headers.get(settings.VIZGATE_REMOTE_USER_HEADER.lower())
        if named is not None and user.get_username() != account_name(
            named,
            settings.VIZGATE_REMOTE_USER_PATTERN,
            lowercase=settings.VIZGATE_REMOTE_USER_LOWERCASE,
        ):
            return Viewer(cookie_refused=SIGNED_IN_ELSEWHERE_REFUSAL)
    shares = await request.session.aget(SHARES_KEY)
    return Viewer(
        username=user.get_username(),
        staff=bool(getattr(user, "is_staff", False)),
        groups=await agroup_names(user),
        shares=shares if isinstance(shares, dict) else {},
    )


def make_authorizer(broker: Broker) -> Authorizer:
    """The tunnel's authorizer for the sessions of ``broker`` (see the module's documentation)."""

    async def authorize(scope: Any, session: SessionInfo) -> Access:
        service = broker.catalog.get(session.service)
        group = service.group if service is not None else None
        if not session.bound and group is None:
            # A bearer token for everyone: no need to look at cookies at all.
            return FULL_ACCESS
        try:
            return await _decide(scope, session, group)
        except DATABASE_AWAY_ERRORS as exc:
            logger.warning(
                "refused a viewer of session %s: the database is not answering (%s)",
                session.id,
                outage_reason(exc),
            )
            return Access(refusal=DATABASE_AWAY_MESSAGE)

    return authorize


async def _decide(scope: Any, session: SessionInfo, group: str | None) -> Access:
    """Whether the viewer of ``scope`` may use ``session`` (of a type gated by ``group``)."""
    viewer = await viewer_of_scope(scope)
    reason = refusal(viewer, session, group)
    if reason is None:
        return Access(user=viewer.username)
    if reason == OWNER_REFUSAL and session.id in viewer.shares:
        share = await live_share(viewer.shares[session.id], session.id)
        if share is not None:
            # Watching does not lift the type's group gate.
            reason = _group_refusal(viewer, session, group)
            if reason is None:
                return Access(
                    view_only=True,
                    until=share.expires.timestamp(),
                    grant=share.grant,
                    user=viewer.username,
                )
        else:
            reason = SHARE_ENDED_REFUSAL
    logger.info(
        "refused %s a viewer of session %s: %s",
        viewer.username or "an anonymous user",
        session.id,
        reason,
    )
    return Access(refusal=reason)
