"""``/status/usage``: the administrators' Usage page, what ``vizgate usage`` reports, for the
last 7, 30, 90 or 365 days: hours and the most sessions at once, by session type and by user;
and ``/status/usage.csv``, the same as a spreadsheet's file."""

from __future__ import annotations

import csv
import datetime
import io

from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import render

from vizgate.usage import GROUPINGS, UsageTally
from vizgate.web.portal.history import session_uses
from vizgate.web.portal.views import PortalUser, message_page, portal_view

__all__ = ["WINDOWS", "usage", "usage_csv"]

#: The windows the page offers, in days; the first is the default.
WINDOWS = (30, 7, 90, 365)


def _tally(since: datetime.datetime, now: datetime.datetime) -> UsageTally:
    """The window's sessions summed by type and by user (blocking: reads the database)."""
    return UsageTally(since, now, now).add_all(session_uses(since, now))


async def _window(
    request: HttpRequest,
) -> tuple[int, datetime.datetime, datetime.datetime, UsageTally] | HttpResponse:
    """The days asked for, the window and its sessions summed; or the page saying the window
    is not one the page offers.

    The sessions are read and summed in the request's worker thread (Django gives each request
    its own, and closes its database connection when the request ends), never on the event loop
    that serves every page and relays the desktops: a year of a busy site takes seconds."""
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
    return days, since, now, await sync_to_async(_tally)(since, now)


@portal_view(staff=True)
async def usage(request: HttpRequest, user: PortalUser) -> HttpResponseBase:
    """``/status/usage?days=N``: usage by session type and by user over the last N days."""
    window = await _window(request)
    if isinstance(window, HttpResponse):
        return window
    days, since, now, tally = window
    return render(
        request,
        "portal/usage.html",
        {
            "days": days,
            "windows": sorted(WINDOWS),
            "since": since,
            "until": now,
            "tables": [
                {
                    "title": title,
                    "key": key,
                    "class": f"usage-{by}s",
                    "totals": tally.totals(by),
                }
                for title, key, by in (
                    ("By session type", "Type", "type"),
                    ("By user", "User", "user"),
                )
            ],
        },
    )


@portal_view(staff=True)
async def usage_csv(request: HttpRequest, user: PortalUser) -> HttpResponseBase:
    """``/status/usage.csv?days=N&by=user|type``: the page's table as CSV, to download."""
    by = request.GET.get("by", "user")
    if by not in GROUPINGS:
        return message_page(request, 400, "No such grouping", "Group by user or by type.")
    window = await _window(request)
    if isinstance(window, HttpResponse):
        return window
    _, since, now, tally = window
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([by, "sessions", "hours", "most_at_once"])
    for total in tally.totals(by):
        writer.writerow([total.key, total.sessions, f"{total.hours:.2f}", total.peak])
    response = HttpResponse(out.getvalue(), content_type="text/csv; charset=utf-8")
    name = f"vizgate-usage-by-{by}-{since:%Y%m%d}-{now:%Y%m%d}.csv"
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    return response
