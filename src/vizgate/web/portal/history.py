"""The sessions of a window of time, read from the database for reports (``vizgate usage``,
``vizgate sessions`` and the administrators' Usage page; see :mod:`vizgate.usage`)."""

from __future__ import annotations

import datetime

from django.db.models import Q

from vizgate.usage import SessionUse
from vizgate.web.portal.models import Session

__all__ = ["session_uses"]


def session_uses(
    since: datetime.datetime,
    until: datetime.datetime,
    *,
    user: str | None = None,
    service: str | None = None,
) -> list[SessionUse]:
    """The sessions made before ``until`` that had not ended before ``since`` (blocking), of
    ``user`` and of type ``service`` when given."""
    rows = Session.objects.filter(created__lt=until).filter(
        Q(ended__isnull=True) | Q(ended__gte=since)
    )
    if user:
        rows = rows.filter(user=user)
    if service:
        rows = rows.filter(service=service)
    return [
        SessionUse(
            id=row.id,
            service=row.service,
            user=row.user,
            state=row.state,
            created=row.created,
            started=row.started,
            ended=row.ended,
            end_reason=row.end_reason,
            bytes_to_client=row.bytes_to_client,
            bytes_to_server=row.bytes_to_server,
        )
        for row in rows
    ]
