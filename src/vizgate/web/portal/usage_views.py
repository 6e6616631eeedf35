"""``/status/usage``: the administrators' Usage page, what ``vizgate usage`` reports, for the
last 7, 30, 90 or 365 days: hours and the most sessions at once, by session type and by user."""

from __future__ import annotations

import datetime

from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponseBase
from django.shortcuts import render

from vizgate.usage import usage_by
from vizgate.web.portal.history import session_uses
from vizgate.web.portal.views import PortalUser, message_page, portal_view

__all__ = ["WINDOWS", "usage"]

#: The windows the page offers, in days; the first is the default.
WINDOWS = (30, 7, 90, 365)


@portal_view(staff=True)
async def usage(request: HttpRequest, user: PortalUser) -> HttpResponseBase:
    """``/status/usage?days=N``: usage by session type and by user over the last N days."""
    asked = request.GET.get("days", str(WINDOWS[0]))
    if not asked.isdigit() or int(asked) not in WINDOWS:
        return message_page(
            request,
            400,
            "No such window",
            "The usage page covers the last " + ", ".join(map(str, sorted(WINDOWS))) + " days.",
        )
    days = int(asked)
    now = datetime.datetime.now(datetime.UTC)
    since = now - datetime.timedelta(days=days)
    uses = await sync_to_async(session_uses)(since, now)
    return render(
        request,
        "portal/usage.html",
        {
            "days": days,
            "windows": sorted(WINDOWS),
            "since": since,
            "until": now,
            "by_type": usage_by(uses, "type", since, now, now),
            "by_user": usage_by(uses, "user", since, now, now),
        },
    )
