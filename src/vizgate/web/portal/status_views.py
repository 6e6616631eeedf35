"""The administrators' Status page and its controls: the session types (in use, failed to
start lately, paused alone), the nodes they run on, the live and the last ended sessions, how
the database's writes go; pausing new sessions (all, one type's, or those on one node), and the
notice to every user."""

from __future__ import annotations

import contextlib
import functools
import logging
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.http import HttpRequest, HttpResponseBase
from django.shortcuts import redirect, render

from vizgate.broker import Broker
from vizgate.exceptions import ReservationError
from vizgate.pause import NodePauses, PauseFile, TypePauses
from vizgate.sessions import NodeInfo, ServiceInfo
from vizgate.web import runtime
from vizgate.web.portal.context import notice_file
from vizgate.web.portal.views import PortalUser, SessionRow, message_page, portal_view

__all__ = [
    "end_node_sessions",
    "node_pauses",
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
            "nodes": [_NodeRow(info) for info in broker.nodes()],
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


@dataclass(frozen=True)
class _NodeRow:
    """A node on the Status page, with its instances grouped by type."""

    info: NodeInfo

    @property
    def instances(self) -> str:
        by_type: dict[str, list[str]] = {}
        for name, index in self.info.instances:
            by_type.setdefault(name, []).append(f"#{index}")
        return "; ".join(f"{name} {', '.join(indexes)}" for name, indexes in by_type.items())


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
    that session type, or with ``node`` only those on that node; running ones go on."""
    reason = str(request.POST.get("reason", ""))
    if (node := request.POST.get("node")) is not None:
        if node not in {info.name for info in runtime.get_broker().nodes()}:
            return message_page(
                request, 400, "No such node", f"No session type's instances run on {node!r}."
            )
        shown = node_pauses().pause(node, reason)
        logger.warning("%s paused new sessions on %s: %s", user.get_username(), node, shown)
    elif (name := request.POST.get("type")) is not None:
        if (refusal := _unknown_type(request, name)) is not None:
            return refusal
        shown = type_pauses().pause(name, reason)
        logger.warning("%s paused new %s sessions: %s", user.get_username(), name, shown)
    else:
        shown = pause_file().pause(reason)
        logger.warning("%s paused new sessions: %s", user.get_username(), shown)
    return redirect("portal:status")


@portal_view(staff=True, methods=("POST",))
async def resume(request: HttpRequest, user: PortalUser) -> HttpResponseBase:
    """``POST /status/resume``: accept new sessions again (with ``type``, that type's; with
    ``node``, those on that node, known to the catalog or not)."""
    if (node := request.POST.get("node")) is not None:
        if node_pauses().resume(node):
            logger.warning("%s resumed new sessions on %s", user.get_username(), node)
    elif (name := request.POST.get("type")) is not None:
        if (refusal := _unknown_type(request, name)) is not None:
            return refusal
        if type_pauses().resume(name):
            logger.warning("%s resumed new %s sessions", user.get_username(), name)
    elif pause_file().resume():
        logger.warning("%s resumed new sessions", user.get_username())
    return redirect("portal:status")


@portal_view(staff=True, methods=("POST",))
async def end_node_sessions(request: HttpRequest, user: PortalUser) -> HttpResponseBase:
    """``POST /status/node/end``: end every session on the paused ``node`` (its maintenance
    begins); each user is told why."""
    node = str(request.POST.get("node", ""))
    reason = node_pauses().reason(node)
    if reason is None:
        return message_page(
            request,
            400,
            "The node is not paused",
            f"Pause {node!r} first, so that no new session starts on it while its sessions end.",
        )
    broker = runtime.get_broker()
    message = f"session ended by administrator: {node} is down for maintenance ({reason})"
    ended = 0
    for info in broker.sessions_on(node):
        # One may end on its own meanwhile: then there is nothing more to do for it.
        with contextlib.suppress(ReservationError):
            ended += broker.terminate(info.id, message, by=user.get_username())
    logger.warning("%s ended %d session(s) on %s: %s", user.get_username(), ended, node, reason)
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


@functools.cache
def node_pauses() -> NodePauses:
    """The nodes paused alone, in the gateway's data directory."""
    return NodePauses.in_data_dir(Path(settings.VIZGATE_DATA_DIR))
