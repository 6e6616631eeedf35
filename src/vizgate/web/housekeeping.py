"""Keeping the gateway's database from growing without end.

A gateway runs for years. Every login leaves a portal session row behind, which Django never
removes by itself once it has expired, and every session leaves its history (the session, its
audit events, its share links). :class:`Housekeeper` sweeps once when the gateway starts and
then every :data:`SWEEP_INTERVAL` seconds:

* expired portal sessions (logins) are always removed: nobody can use them any more;
* with ``vizgate serve --history-days N``, sessions that ended more than ``N`` days ago are
  removed with their events and share links. Without it the history is kept: how long an
  audit trail must be kept is the site's decision, not the gateway's.

Each sweep that removed something says so in one log line. The sweep runs in a thread (the
database calls block); a failed sweep is logged and the next one tries again.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from dataclasses import dataclass
from typing import Final

from asgiref.sync import sync_to_async
from django.contrib.sessions.models import Session as PortalSession
from django.db import connection, transaction

from vizgate.web.portal.models import Session, SessionEvent, ShareLink

__all__ = ["SWEEP_INTERVAL", "Housekeeper", "Sweep", "sweep"]

logger = logging.getLogger(__name__)

#: Seconds between two sweeps.
SWEEP_INTERVAL: Final = 3600.0


@dataclass(frozen=True)
class Sweep:
    """What one sweep removed."""

    logins: int
    sessions: int
    events: int
    share_links: int

    def __str__(self) -> str:
        parts = [f"{self.logins} expired login(s)"]
        if self.sessions:
            parts.append(
                f"{self.sessions} ended session(s) with {self.events} event(s) and "
                f"{self.share_links} share link(s)"
            )
        return "; ".join(parts)


def sweep(now: datetime.datetime, history_days: int | None) -> Sweep:
    """Remove expired logins and, with ``history_days``, the history older than that.

    Blocks on the database: call it from a thread.
    """
    logins, _ = PortalSession.objects.filter(expire_date__lt=now).delete()
    if not history_days:
        return Sweep(logins, 0, 0, 0)
    before = now - datetime.timedelta(days=history_days)
    with transaction.atomic():
        old = Session.objects.filter(state="ended", ended__lt=before)
        ids = list(old.values_list("id", flat=True))
        events = SessionEvent.objects.filter(session_id__in=ids).count()
        share_links, _ = ShareLink.objects.filter(session_id__in=ids).delete()
        # The events go with their session (on_delete=CASCADE).
        old.delete()
    return Sweep(logins, len(ids), events, share_links)


def _sweep_in_thread(now: datetime.datetime, history_days: int | None) -> Sweep:
    try:
        return sweep(now, history_days)
    finally:
        # An hour passes before this thread needs the database again.
        connection.close()


class Housekeeper:
    """Sweeps the database while the gateway runs (see the module's documentation).

    Args:
        history_days: keep the history of ended sessions this many days; None keeps it all.
        interval: seconds between sweeps.
    """

    def __init__(self, history_days: int | None, interval: float = SWEEP_INTERVAL) -> None:
        self.history_days = history_days
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Sweep now, then every :attr:`interval` seconds, until :meth:`stop`."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="housekeeping")

    async def stop(self) -> None:
        """Stop sweeping (a sweep under way is left to finish in its thread)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            now = datetime.datetime.now(tz=datetime.UTC)
            try:
                swept = await sync_to_async(_sweep_in_thread, thread_sensitive=False)(
                    now, self.history_days
                )
            except Exception:
                logger.exception("housekeeping failed; trying again in %g s", self.interval)
            else:
                if swept.logins or swept.sessions:
                    logger.info("housekeeping removed %s", swept)
            await asyncio.sleep(self.interval)
