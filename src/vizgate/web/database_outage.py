"""What the web side does while the gateway's database is away (a PostgreSQL server restarting
or failing over, a SQLite file on a full disk).

Running sessions go on, and their changes wait in the store thread (:mod:`vizgate.store`). A
request that needs the database (a portal page, a login, a viewer's cookie) cannot be served:
it gets a 503 that says so and asks to try again (:func:`server_error`, Django's ``handler500``),
not a bare "Server Error", and the log gets one line per request instead of a traceback
(:class:`OutageLogFilter`). The tunnel's authorizer refuses such a viewer with
:data:`DATABASE_AWAY_MESSAGE`.
"""

from __future__ import annotations

import logging
import sys

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views import defaults

__all__ = [
    "DATABASE_AWAY_ERRORS",
    "DATABASE_AWAY_MESSAGE",
    "OutageLogFilter",
    "is_database_outage",
    "outage_reason",
    "server_error",
]

#: What a user is told while the database is away.
DATABASE_AWAY_MESSAGE = (
    "The gateway's database is not answering; running sessions go on. Try again in a minute."
)

#: Seconds a client is asked to wait before trying again.
RETRY_AFTER = 30


#: What Django raises when the database cannot be reached (rather than for a bad query).
DATABASE_AWAY_ERRORS = (OperationalError, InterfaceError)


def is_database_outage(exc: BaseException | None) -> bool:
    """Is ``exc`` the database being unreachable (rather than a bad query)?"""
    return isinstance(exc, DATABASE_AWAY_ERRORS)


def outage_reason(exc: BaseException) -> str:
    """The driver's reason for a database error, for a log line: its first line (refused, shut
    down, authentication failed), which never holds the password."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def server_error(request: HttpRequest) -> HttpResponse:
    """Django's ``handler500``: a 503 while the database is away, Django's own 500 otherwise.

    Django calls it inside the ``except`` block of the failed request, so the exception is the
    one being handled.
    """
    if not is_database_outage(sys.exc_info()[1]):
        return defaults.server_error(request)
    response: HttpResponse
    if request.path_info.startswith("/v1/"):
        response = JsonResponse(
            {"error": "database_unavailable", "message": DATABASE_AWAY_MESSAGE}, status=503
        )
    else:
        # Imported here: this module is imported before Django is set up (by the tunnel's
        # authorizer), and the auth models cannot be.
        from django.contrib.auth.models import AnonymousUser

        # The portal's own page, for an anonymous user: finding out who is signed in would ask
        # the database again.
        response = render(
            request,
            "portal/message.html",
            {
                "title": "Try again in a minute",
                "text": DATABASE_AWAY_MESSAGE,
                "user": AnonymousUser(),
            },
            status=503,
        )
    response["Retry-After"] = str(RETRY_AFTER)
    return response


class OutageLogFilter(logging.Filter):
    """On ``django.request``: a request that failed because the database is away is one warning
    line with the driver's reason, not an error with a traceback; and the 503s vizgate answers
    on purpose (``/healthz`` while something is down, ``/v1/reserve`` while paused), each
    explained by a line of its own, are warnings too, not errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and is_database_outage(exc):
            said = record.getMessage()
            record.msg, record.args = (
                "%s: the database is not answering (%s)",
                (
                    said,
                    outage_reason(exc),
                ),
            )
            record.exc_info = record.exc_text = None
            _lower_to_warning(record)
        elif exc is None and getattr(record, "status_code", None) == 503:
            _lower_to_warning(record)
        return True


def _lower_to_warning(record: logging.LogRecord) -> None:
    if record.levelno > logging.WARNING:
        record.levelno, record.levelname = logging.WARNING, "WARNING"
