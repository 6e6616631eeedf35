"""The portal's pages: the catalogue, the viewer, a user's sessions, the administrators' status.

Every page but the login page needs a logged-in user; the status page and terminating a
session need an administrator (staff). Pages that change something are POST forms with a CSRF
token. The views are async and reach the broker on the server's event loop; the user is looked
up with Django's async auth API and put on the request, so that templates never query the
database from the event loop.

What a page may show of a session is the same as ``/v1/status`` shows: its public id, never its
token. The viewer's WebSocket names the session by that id (``?session=``); the tunnel's
authorizer (:mod:`vizgate.web.portal.auth`) lets only its owner (or an administrator) in, and
users who opened one of its share links (:mod:`vizgate.web.portal.shares`), to watch only.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import AnonymousUser
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.cache import add_never_cache_headers

from vizgate.accounts import agroup_names, may_use_group
from vizgate.broker import Broker
from vizgate.choices import label
from vizgate.exceptions import ReservationError
from vizgate.sessions import ServiceInfo, SessionInfo
from vizgate.web import runtime
from vizgate.web.portal.assets import find_static
from vizgate.web.portal.context import notice_file
from vizgate.web.portal.forms import CHOICE_FIELD_PREFIX, LaunchForm
from vizgate.web.portal.models import SessionEvent
from vizgate.web.portal.shares import (
    SHARES_KEY,
    ActiveShare,
    active_shares,
    live_share,
)

__all__ = [
    "NOVNC_MODULE",
    "STATE_LABELS",
    "Card",
    "PortalUser",
    "SessionRow",
    "catalogue",
    "end_session",
    "launch",
    "message_page",
    "my_sessions",
    "owned_by",
    "portal_view",
    "session_detail",
    "session_status",
    "status_json",
    "terminate",
    "viewer",
]

#: The noVNC module the viewer imports (fetched by ``scripts/install``).
NOVNC_MODULE = "novnc/core/rfb.js"


#: What a user sees of the lifecycle's states.
STATE_LABELS = {
    "reserved": "reserved (not yet opened)",
    "starting": "starting",
    "waiting_ready": "starting",
    "running": "running",
    "cancelling": "ending",
    "stopping": "ending",
    "ended": "ended",
}

logger = logging.getLogger(__name__)

#: Who a portal view is called for (logged in, except on the login page).
PortalUser = AbstractBaseUser | AnonymousUser
_PageView = Callable[..., Coroutine[Any, Any, HttpResponseBase]]


# --- plumbing -----------------------------------------------------------------------------------


def _is_staff(user: PortalUser) -> bool:
    return bool(user.is_authenticated and getattr(user, "is_staff", False))


def message_page(request: HttpRequest, status: int, title: str, text: str) -> HttpResponse:
    """A page that only says something: a title, a sentence and a way back."""
    return render(request, "portal/message.html", {"title": title, "text": text}, status=status)


def _wants_json(request: HttpRequest) -> bool:
    return "application/json" in request.headers.get("Accept", "")


def portal_view(
    *, staff: bool = False, methods: Sequence[str] = ("GET", "HEAD"), api: bool = False
) -> Callable[[_PageView], _PageView]:
    """Make an async view a portal page.

    The view is called as ``view(request, user, *args)`` with the logged-in user (also put on
    ``request.user``). Anonymous users are sent to the login page (``api``: 401 JSON); users
    who are not staff get 403 from ``staff`` views; other methods than ``methods`` get 405; a
    gateway whose broker is not running answers 503. Answers are never cached; their
    Content-Security-Policy comes from :mod:`vizgate.web.csp`, as every page's does.
    """

    def decorate(view: _PageView) -> _PageView:
        @functools.wraps(view)
        async def page(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            response: HttpResponseBase
            user = await request.auser()
            request.user = user
            if request.method not in methods:
                response = HttpResponse(status=405)
                response["Allow"] = ", ".join(methods)
            elif not user.is_authenticated:
                if api:
                    response = JsonResponse(
                        {"error": "log in first", "reason": "unauthorized"}, status=401
                    )
                else:
                    response = redirect_to_login(
                        request.get_full_path(), reverse(settings.LOGIN_URL)
                    )
            elif staff and not _is_staff(user):
                response = message_page(
                    request, 403, "Administrators only", "This page is for administrators."
                )
            else:
                try:
                    response = await view(request, user, *args, **kwargs)
                except runtime.BrokerUnavailable:
                    response = message_page(
                        request,
                        503,
                        "Not ready",
                        "The gateway is starting or stopping; try again in a moment.",
                    )
            add_never_cache_headers(response)
            return response

        return page

    return decorate


def _when(timestamp: float | None) -> datetime | None:
    return datetime.fromtimestamp(timestamp, UTC) if timestamp is not None else None


@dataclass(frozen=True)
class SessionRow:
    """One session as the portal's tables show it."""

    info: SessionInfo
    state_label: str
    created: datetime | None
    started: datetime | None
    ended: datetime | None
    #: When a limit will end the session (``info.ends_because`` says which), if one will.
    ends: datetime | None = None

    @classmethod
    def of(cls, info: SessionInfo) -> SessionRow:
        return cls(
            info=info,
            state_label=STATE_LABELS.get(info.state, info.state),
            created=_when(info.created),
            started=_when(info.started),
            ended=_when(info.ended),
            ends=_when(info.ends_at),
        )


@dataclass(frozen=True)
class Card:
    """One session type on the catalogue page."""

    info: ServiceInfo
    free: int
    mine: tuple[SessionInfo, ...]

    @property
    def choices(self) -> list[tuple[str, str, tuple[str, ...]]]:
        """The type's launch choices: form field, label and values (the default first)."""
        return [
            (CHOICE_FIELD_PREFIX + name, label(name), values)
            for name, values in self.info.choices.items()
        ]


async def _usable_services(broker: Broker, user: PortalUser) -> list[ServiceInfo]:
    groups = await agroup_names(user)
    staff = _is_staff(user)
    return [
        info
        for info in broker.services()
        if may_use_group(
            info.group, authenticated=user.is_authenticated, staff=staff, groups=groups
        )
    ]


def owned_by(info: SessionInfo, user: PortalUser) -> bool:
    """May ``user`` control ``info``: its owner, or an administrator."""
    return info.user == user.get_username() or _is_staff(user)


async def _watched_share(request: HttpRequest, info: SessionInfo) -> ActiveShare | None:
    """The live share link to ``info`` that the request's user opened, if any."""
    shares = await request.session.aget(SHARES_KEY)
    if not isinstance(shares, dict) or info.id not in shares:
        return None
    return await live_share(shares[info.id], info.id)


def _find_session(broker: Broker, session_id: str) -> SessionInfo | None:
    """A live session by id, else an ended one the broker still remembers."""
    live = broker.session_by_id(session_id)
    if live is not None:
        return live
    return next((ended for ended in broker.history() if ended.id == session_id), None)


def status_json(info: SessionInfo) -> dict[str, Any]:
    """What the viewer page polls: how far the session is, and why it ended."""
    return {
        "id": info.id,
        "service": info.service,
        "size": info.size,
        "state": info.state,
        "state_label": STATE_LABELS.get(info.state, info.state),
        "progress": info.progress,
        "connections": info.connections,
        # How many of them watch through a share link (the owner's page shows it).
        "watchers": info.watchers,
        "end_reason": info.end_reason,
        "message": info.message,
        # Seconds left before the idle timeout or the maximum lifetime ends the session,
        # counted here so that the browser's clock does not matter.
        "ends_in": round(info.ends_at - time.time(), 1) if info.ends_at is not None else None,
        "ends_because": info.ends_because,
    }


def _end(broker: Broker, info: SessionInfo, user: PortalUser) -> None:
    """End a session for its owner or an administrator."""
    if info.user == user.get_username():
        broker.release_session(info.id, "session ended by its user")
    else:
        broker.terminate(info.id, by=user.get_username())


# --- pages ---------------------------------------------------------------------------------------


async def _render_catalogue(
    request: HttpRequest, user: PortalUser, *, error: str = "", status: int = 200
) -> HttpResponse:
    broker = runtime.get_broker()
    mine: dict[str, list[SessionInfo]] = {}
    for info in broker.sessions():
        if info.user == user.get_username():
            mine.setdefault(info.service, []).append(info)
    cards = [
        Card(
            info=info,
            free=info.count - info.in_use - info.free_on_paused_nodes,
            mine=tuple(mine.get(info.name, ())),
        )
        for info in await _usable_services(broker, user)
    ]
    return render(
        request,
        "portal/catalogue.html",
        {"cards": cards, "error": error, "staff": _is_staff(user), "paused": broker.paused()},
        status=status,
    )


@portal_view()
async def catalogue(request: HttpRequest, user: PortalUser) -> HttpResponseBase:
    """``/``: one card per session type the user may use, with sizes and free instances."""
    return await _render_catalogue(request, user)


@portal_view(methods=("POST",))
async def launch(request: HttpRequest, user: PortalUser) -> HttpResponseBase:
    """``POST /launch``: reserve a session bound to the user, then open its viewer."""
    broker = runtime.get_broker()
    form = LaunchForm(request.POST, services=await _usable_services(broker, user))
    if not form.is_valid():
        errors = " ".join(str(error) for error in form.non_field_errors()) or "bad request"
        return await _render_catalogue(request, user, error=errors, status=400)
    name, size = form.cleaned_data["service"], form.cleaned_data["size"]
    try:
        reservation = await broker.reserve(
            name,
            user=user.get_username(),
            options={"size": size, **form.cleaned_data["choices"]},
            bound=True,
            unlimited=_is_staff(user),
        )
    except ReservationError as exc:
        status = 409 if exc.reason in ("no_free_instance", "user_limit") else 400
        return await _render_catalogue(request, user, error=str(exc), status=status)
    return redirect("portal:viewer", session_id=reservation.session_id)


@portal_view()
async def my_sessions(request: HttpRequest, user: PortalUser) -> HttpResponseBase:
    """``/sessions/``: the user's live sessions, to open again or end."""
    broker = runtime.get_broker()
    name = user.get_username()
    rows = [SessionRow.of(info) for info in broker.sessions() if info.user == name]
    ended = [SessionRow.of(info) for info in broker.history() if info.user == name][:10]
    return render(request, "portal/sessions.html", {"rows": rows, "ended": ended})


@portal_view()
async def viewer(request: HttpRequest, user: PortalUser, session_id: str) -> HttpResponseBase:
    """``/sessions/<id>/``: the session in noVNC, filling the window."""
    broker = runtime.get_broker()
    info = _find_session(broker, session_id)
    share = None
    if info is not None and not owned_by(info, user):
        share = await _watched_share(request, info)
    if info is None or (share is None and not owned_by(info, user)):
        return message_page(request, 404, "No such session", "There is no such session.")
    if find_static(NOVNC_MODULE) is None:
        return message_page(
            request,
            503,
            "The viewer is not installed",
            "noVNC is missing from the gateway's static files; run scripts/install.",
        )
    service = broker.catalog.get(info.service)
    linger = broker.timeouts.linger
    if service is not None and service.options.get("linger") is not None:
        linger = float(service.options["linger"])
    config = {
        "sessionId": info.id,
        "service": info.service,
        "size": info.size,
        "wsPath": reverse("portal:catalogue") + f"websockify?session={info.id}",
        "statusUrl": reverse("portal:session_status", args=[info.id]),
        "sessionsUrl": reverse("portal:sessions"),
        "linger": linger,
        "status": status_json(info),
        "viewOnly": share is not None,
        "accessEnds": share.expires.timestamp() if share is not None else None,
    }
    return render(
        request,
        "portal/viewer.html",
        {"info": info, "config": config, "view_only": share is not None, "share": share},
    )


@portal_view(api=True)
async def session_status(
    request: HttpRequest, user: PortalUser, session_id: str
) -> HttpResponseBase:
    """``/sessions/<id>/status``: the session's state and start progress, as JSON."""
    info = _find_session(runtime.get_broker(), session_id)
    if info is None or not (owned_by(info, user) or await _watched_share(request, info)):
        return JsonResponse({"error": "no such session", "reason": "unknown_session"}, status=404)
    return JsonResponse({**status_json(info), "notice": notice_file().text()})


@portal_view(methods=("POST",))
async def end_session(request: HttpRequest, user: PortalUser, session_id: str) -> HttpResponseBase:
    """``POST /sessions/<id>/end``: the owner (or an administrator) ends a session."""
    broker = runtime.get_broker()
    info = _find_session(broker, session_id)
    if info is None or not owned_by(info, user):
        return message_page(request, 404, "No such session", "There is no such session.")
    if info.state != "ended":
        # An ended session needs nothing more: what was asked for has happened.
        with contextlib.suppress(ReservationError):
            _end(broker, info, user)
    if _wants_json(request):
        return JsonResponse({"ended": True})
    return redirect("portal:sessions")


#: The most audit-trail lines the session page shows (the first ones, then the last ones).
AUDIT_LINES_SHOWN = 500


@portal_view(staff=True)
async def session_detail(
    request: HttpRequest, user: PortalUser, session_id: str
) -> HttpResponseBase:
    """``/status/<id>/``: one session for administrators: its state, its share links and its
    audit trail (who reserved it, who connected from where, with what access, how it ended)."""
    broker = runtime.get_broker()
    info = _find_session(broker, session_id)
    events = [
        event
        async for event in SessionEvent.objects.filter(session_id=session_id).order_by("at", "id")[
            :AUDIT_LINES_SHOWN
        ]
    ]
    if info is None and not events:
        return message_page(request, 404, "No such session", "There is no such session.")
    return render(
        request,
        "portal/session.html",
        {
            "session_id": session_id,
            "row": SessionRow.of(info) if info is not None else None,
            "live": info is not None and info.state != "ended",
            "events": events,
            "shares": await active_shares(session_id),
        },
    )


@portal_view(staff=True, methods=("POST",))
async def terminate(request: HttpRequest, user: PortalUser, session_id: str) -> HttpResponseBase:
    """``POST /status/<id>/terminate``: an administrator ends any session."""
    broker = runtime.get_broker()
    # Already over, it needs nothing more: the status page shows how it ended.
    with contextlib.suppress(ReservationError):
        broker.terminate(session_id, by=user.get_username())
    return redirect("portal:status")
