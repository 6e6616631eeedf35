"""The portal's share pages: making and withdrawing view-only links, and opening one.

See :mod:`vizgate.web.portal.shares` for what a link is and how the gateway enforces it.
"""

from __future__ import annotations

import logging
import secrets
from datetime import UTC, datetime

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.cache import add_never_cache_headers

from vizgate.broker import Broker
from vizgate.sessions import SessionInfo
from vizgate.web import runtime
from vizgate.web.portal.shares import (
    LIFETIMES,
    SHARES_KEY,
    ActiveShare,
    active_shares,
    create_share,
    live_share,
    revoke_share,
    share_of_secret,
)
from vizgate.web.portal.views import PortalUser, message_page, owned_by, portal_view

__all__ = ["open_pending_share", "open_share", "revoke_share_link", "share"]

logger = logging.getLogger(__name__)

#: Where a visitor who opened a share link before logging in is sent once logged in; the
#: portal session holds which link it was (never its secret).
_PENDING_SHARE_KEY = "vizgate.pending_share"
#: The share forms a portal session was given and has not sent yet: a form makes one link, so
#: that reloading the page that answered it (which sends it again) does not make a second.
_SHARE_FORMS_KEY = "vizgate.share_forms"
#: How many unsent share forms a portal session keeps (one per share page opened).
_MAX_SHARE_FORMS = 20
_ALREADY_SENT = (
    "This form was sent before, and made its link then; that link is in the list below (its "
    "address was shown once). Make a new link if you need one."
)
_SHARE_ENDED = (
    "This share link has expired or was withdrawn, or its session has ended. "
    "Ask the session's owner for a new one."
)


def _shareable(broker: Broker, session_id: str, user: PortalUser) -> SessionInfo | None:
    """The live session the user may share: their own (or any, for an administrator),
    launched from the portal (only such sessions let users in by their login)."""
    info = broker.session_by_id(session_id)
    if info is None or not info.bound or not owned_by(info, user):
        return None
    return info


async def _new_share_form(request: HttpRequest, session_id: str) -> str:
    """A token for one share form of ``session_id``; sending the form spends it."""
    token = secrets.token_urlsafe(16)
    forms: dict[str, str] = await request.session.aget(_SHARE_FORMS_KEY, {})
    forms[token] = session_id
    # Dicts keep their order: the oldest forms go first.
    await request.session.aset(_SHARE_FORMS_KEY, dict(list(forms.items())[-_MAX_SHARE_FORMS:]))
    return token


async def _spend_share_form(request: HttpRequest, session_id: str) -> bool:
    """Whether the sent form is one this portal session was given for ``session_id`` and has
    not sent before; it cannot be sent again."""
    token = request.POST.get("form", "")
    forms: dict[str, str] = await request.session.aget(_SHARE_FORMS_KEY, {})
    if forms.pop(token, None) != session_id:
        return False
    await request.session.aset(_SHARE_FORMS_KEY, forms)
    return True


async def _render_share(
    request: HttpRequest,
    info: SessionInfo,
    *,
    link: str = "",
    problem: str = "",
    status: int = 200,
) -> HttpResponse:
    return render(
        request,
        "portal/share.html",
        {
            "info": info,
            "form": await _new_share_form(request, info.id),
            "problem": problem,
            "shares": await active_shares(info.id),
            "watching": [
                (viewer, datetime.fromtimestamp(viewer.since, UTC))
                for viewer in runtime.get_broker().viewers(info.id)
                if viewer.access
            ],
            "lifetimes": LIFETIMES.items(),
            "link": link,
        },
        status=status,
    )


@portal_view(methods=("GET", "HEAD", "POST"))
async def share(request: HttpRequest, user: PortalUser, session_id: str) -> HttpResponseBase:
    """``/sessions/<id>/share``: the session's share links; POST makes a new one.

    The new link is shown once, on the page that answers the POST: only its hash is kept.
    """
    broker = runtime.get_broker()
    info = _shareable(broker, session_id, user)
    if info is None:
        return message_page(
            request, 404, "No such session", "There is no live session of yours by that id."
        )
    if request.method != "POST":
        return await _render_share(request, info)
    if not await _spend_share_form(request, info.id):
        return await _render_share(request, info, problem=_ALREADY_SENT, status=409)
    try:
        minutes = int(request.POST.get("minutes", ""))
        created, secret = await create_share(info.id, user.get_username(), minutes)
    except ValueError:
        return await _render_share(request, info, status=400)
    until = f"{created.expires:%Y-%m-%d %H:%M:%S} UTC"
    logger.info(
        "%s made share %d of session %s, until %s", user.get_username(), created.id, info.id, until
    )
    broker.record_event(
        info.id, "shared", user=user.get_username(), detail=f"{created.grant} until {until}"
    )
    link = request.build_absolute_uri(reverse("portal:open_share", args=[secret]))
    return await _render_share(request, info, link=link)


@portal_view(methods=("POST",))
async def revoke_share_link(
    request: HttpRequest, user: PortalUser, session_id: str, link_id: int
) -> HttpResponseBase:
    """``POST /sessions/<id>/share/<link>/withdraw``: the link opens nothing any more, and
    whoever watches through it is disconnected."""
    broker = runtime.get_broker()
    info = _shareable(broker, session_id, user)
    if info is None:
        return message_page(
            request, 404, "No such session", "There is no live session of yours by that id."
        )
    withdrawn = await revoke_share(link_id, info.id)
    if withdrawn is not None:
        closed = broker.revoke_grant(info.id, withdrawn.grant, "the share link was withdrawn")
        broker.record_event(
            info.id, "share withdrawn", user=user.get_username(), detail=withdrawn.grant
        )
        logger.info(
            "%s withdrew share %d of session %s (%d viewer(s) disconnected)",
            user.get_username(),
            withdrawn.id,
            info.id,
            closed,
        )
    if request.POST.get("back") == "status":
        return redirect("portal:session_detail", session_id=info.id)
    return redirect("portal:share", session_id=info.id)


async def _grant(request: HttpRequest, granted: ActiveShare) -> HttpResponseBase:
    """Remember in the portal session that its user opened ``granted``; open the viewer."""
    shares = await request.session.aget(SHARES_KEY)
    shares = dict(shares) if isinstance(shares, dict) else {}
    shares[granted.session_id] = granted.id
    await request.session.aset(SHARES_KEY, shares)
    return redirect("portal:viewer", session_id=granted.session_id)


def _no_store(response: HttpResponseBase) -> HttpResponseBase:
    add_never_cache_headers(response)
    # The page's address holds the secret: no other site learns it from a Referer header.
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


async def open_share(request: HttpRequest, secret: str) -> HttpResponseBase:
    """``/share/<secret>/``: open a share link (after logging in, if need be)."""
    if request.method not in ("GET", "HEAD"):
        response = HttpResponse(status=405)
        response["Allow"] = "GET, HEAD"
        return _no_store(response)
    user = await request.auser()
    request.user = user
    granted = await share_of_secret(secret)
    if granted is not None and runtime.get_broker().session_by_id(granted.session_id) is None:
        granted = None
    if granted is None:
        return _no_store(message_page(request, 404, "This link opens nothing", _SHARE_ENDED))
    if not user.is_authenticated:
        # The login page's "next" must not carry the secret: the session remembers the link.
        await request.session.aset(_PENDING_SHARE_KEY, [granted.session_id, granted.id])
        return _no_store(
            redirect_to_login(reverse("portal:open_pending_share"), reverse(settings.LOGIN_URL))
        )
    return _no_store(await _grant(request, granted))


@portal_view()
async def open_pending_share(request: HttpRequest, user: PortalUser) -> HttpResponseBase:
    """``/share/``: the share link opened before logging in."""
    pending = await request.session.apop(_PENDING_SHARE_KEY, None)
    granted = None
    if isinstance(pending, list) and len(pending) == 2:
        granted = await live_share(pending[1], str(pending[0]))
    if granted is None:
        return message_page(request, 404, "This link opens nothing", _SHARE_ENDED)
    return await _grant(request, granted)
