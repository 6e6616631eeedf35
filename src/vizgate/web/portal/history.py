"""The sessions of a window of time, read from the database for reports (``vizgate usage``,
``vizgate sessions`` and the administrators' Usage page; see :mod:`vizgate.usage`)."""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterator

from django.db.models import Q

from vizgate.usage import SessionUse
from vizgate.web.portal.models import Session

__all__ = ["CHUNK", "session_uses"]


#: The columns a :class:`SessionUse` is made of (each field is the Session column of its name),
#: in its fields' order.
_COLUMNS = tuple(field.name for field in dataclasses.fields(SessionUse))
#: Rows fetched from the database at a time.
CHUNK = 2000


def session_uses(
    since: datetime.datetime,
    until: datetime.datetime,
    *,
    user: str | None = None,
    service: str | None = None,
) -> Iterator[SessionUse]:
    """The sessions made before ``until`` that had not ended before ``since`` (blocking), of
    ``user`` and of type ``service`` when given, in the order they were made.

    Read :data:`CHUNK` rows at a time, only the columns a report uses, so a year of a busy site
    is never in memory at once.
    """
    rows = Session.objects.filter(created__lt=until).filter(
        Q(ended__isnull=True) | Q(ended__gte=since)
    )
    if user:
        rows = rows.filter(user=user)
    if service:
        rows = rows.filter(service=service)
    for values in rows.order_by("created", "id").values_list(*_COLUMNS).iterator(CHUNK):
        yield SessionUse(*values)
