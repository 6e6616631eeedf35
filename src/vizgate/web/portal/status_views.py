"""The administrators' Status page and its controls: the session types (in use, failed to
start lately, paused alone), the live and the last ended sessions, how the database's writes go;
pausing new sessions (all, or one type's), and the notice to every user."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.http import HttpRequest, HttpResponseBase
from django.shortcuts import redirect, render

from vizgate.broker import Broker
from vizgate.exceptions import ReservationError
from vizgate.pause import PauseFile, TypePauses
from vizgate.sessions import ServiceInfo
from vizgate.web import runtime
from vizgate.web.portal.context import notice_file
from vizgate.web.portal.views import PortalUser, SessionRow, message_page, portal_view

__all__ = [
    "pause",
    "pause_file",
    "post_notice",
    "resume",
    "status",
    "type_pauses",
    "withdraw_notice",
]

logger = logging.getLogger(__name__)


@portal_view(staff=True)
async def status(request: HttpRequest, user: PortalUser) -> HttpResponseBase:
    """``/status/``: every live session and the last ended ones, for administrators."""
    broker = runtime.get_broker()
    return render(
        request,
        "portal/status.html",
        {
            "services": [_TypeRow(info) for info in broker.services()],
            "rows": [SessionRow.of(info) for info in broker.sessions()],
            "ended": [SessionRow.of(info) for info in broker.history()],
            "paused": broker.paused(),
            "database": _database_line(broker),
        },
    )


@dataclass(frozen=True)
class _Failure:
    index: int
    ago: int


@dataclass(frozen=True)
class _TypeRow:
    """A session type on the Status page, with its recent start failures by instance."""

    info: ServiceInfo

    @property
    def failures(self) -> list[_Failure]:
        return [
            _Failure(index, round(ago)) for index, ago in sorted(self.info.failed_recently.items())
        ]


def _database_line(broker: Broker) -> str:
    """How the session store's writes go, for administrators without Prometheus: reservations
    and starts wait for them."""
    if broker.store is None:
        return ""
    activity = broker.store.activity()
    waiting = broker.store.waiting()
    if not activity.transactions:
        line = "Database: nothing written yet since the gateway started"
    else:
        mean_ms = activity.seconds / activity.transactions * 1000
        line = (
            f"Database: writes take {mean_ms:.1f} ms on average "
            f"({activity.transactions} since the gateway started)"
        )
    if waiting:
        line += f"; {waiting} session change{'s' if waiting != 1 else ''} waiting to be written"
    return line + "."


@portal_view(staff=True, methods=("POST",))
async def pause(request: HttpRequest, user: PortalUser) -> HttpResponseBase:
    """``POST /status/pause``: pause new sessions (``reason``), or with ``type`` only those of
    that session type; running ones go on."""
    name = request.POST.get("type")
    if name is None:
        reason = pause_file().pause(str(request.POST.get("reason", "")))
        logger.warning("%s paused new sessions: %s", user.get_username(), reason)
        return redirect("portal:status")
    refusal = _unknown_type(request, name)
    if refusal is not None:
        return refusal
    reason = type_pauses().pause(name, str(request.POST.get("reason", "")))
    logger.warning("%s paused new %s sessions: %s", user.get_username(), name, reason)
    return redirect("portal:status")


@portal_view(staff=True, methods=("POST",))
async def resume(request: HttpRequest, user: PortalUser) -> HttpResponseBase:
    """``POST /status/resume``: accept new sessions again (with ``type``, that type's)."""
    name = request.POST.get("type")
    if name is None:
        if pause_file().resume():
            logger.warning("%s resumed new sessions", user.get_username())
        return redirect("portal:status")
    refusal = _unknown_type(request, name)
    if refusal is not None:
        return refusal
    if type_pauses().resume(name):
        logger.warning("%s resumed new %s sessions", user.get_username(), name)
    return redirect("portal:status")


def _unknown_type(request: HttpRequest, name: str) -> HttpResponseBase | None:
    """The page saying ``name`` is no session type of the catalog, or None when it is one."""
    try:
        runtime.get_broker().service(name)
    except ReservationError:
        return message_page(request, 400, "No such session type", f"There is no type {name!r}.")
    return None


@portal_view(staff=True, methods=("POST",))
async def post_notice(request: HttpRequest, user: PortalUser) -> HttpResponseBase:
    """``POST /status/notice``: show ``notice`` on every page and in every viewer."""
    try:
        shown = notice_file().post(str(request.POST.get("notice", "")))
    except ValueError:
        return message_page(
            request, 400, "No notice", "A notice needs some text; to show none, withdraw it."
        )
    logger.warning("%s posted a notice to users: %s", user.get_username(), shown)
    return redirect("portal:status")


@portal_view(staff=True, methods=("POST",))
async def withdraw_notice(request: HttpRequest, user: PortalUser) -> HttpResponseBase:
    """``POST /status/notice/withdraw``: show no notice any more."""
    if notice_file().withdraw():
        logger.warning("%s withdrew the notice to users", user.get_username())
    return redirect("portal:status")


@functools.cache
def pause_file() -> PauseFile:
    """The pause of new sessions in the gateway's data directory (:mod:`vizgate.pause`)."""
    return PauseFile.in_data_dir(Path(settings.VIZGATE_DATA_DIR))


@functools.cache
def type_pauses() -> TypePauses:
    """The session types paused alone, in the gateway's data directory."""
    return TypePauses.in_data_dir(Path(settings.VIZGATE_DATA_DIR))
