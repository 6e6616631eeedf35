"""What the broker writes down: each session's record and its audit trail.

:class:`BrokerRecords` is a part of :class:`vizgate.broker.Broker`: it hands session records and
audit events to the broker's :class:`~vizgate.store.ThreadedStore`, and lets a session's viewers
in only once its "running" record is saved, so that a gateway killed at any moment leaves the
next one a record of every desktop a user is looking at (:mod:`vizgate.readoption`).
"""

from __future__ import annotations

import logging
import time

from vizgate.broker_views import BrokerViews
from vizgate.live import LiveSession
from vizgate.store import SessionEventRecord, ThreadedStore

__all__ = ["SAVE_WAIT_TIMEOUT", "BrokerRecords", "set_ready"]

logger = logging.getLogger("vizgate.broker")

#: The longest a token waits for its reservation to be saved, and a viewer for its session's
#: "running"; past it (the database is away) they go on anyway: a desktop now matters more
#: than surviving a crash.
SAVE_WAIT_TIMEOUT = 2.0


def set_ready(session: LiveSession, host: str, port: int) -> None:
    """Let the session's waiting viewers in, to ``host:port`` (once)."""
    if not session.ready.done():
        session.ready.set_result((host, port))


class BrokerRecords(BrokerViews):
    """The broker's writing of records and events (a base of :class:`vizgate.broker.Broker`;
    the views' wall clock converts the lifecycle's times)."""

    store: ThreadedStore | None

    def _save(self, session: LiveSession) -> None:
        if self.store is not None:
            self.store.save(session.record(self._wall))

    def record_event(self, session_id: str, kind: str, *, user: str, detail: str = "") -> None:
        """Add a line to a live session's audit trail (what the portal did to it, e.g. a share
        link made or withdrawn); nothing happens when no live session has that id."""
        session = self._live.by_id(session_id)
        if session is not None:
            self._event(session, kind, user=user, detail=detail)

    def _event(
        self,
        session: LiveSession,
        kind: str,
        *,
        user: str | None = None,
        client: str = "",
        detail: str = "",
    ) -> None:
        """``user``: who did it; None for the session's own user, "" when nobody knows."""
        if self.store is not None:
            self.store.add_event(
                SessionEventRecord(
                    session_id=session.id,
                    kind=kind,
                    at=time.time(),
                    user=session.user if user is None else user,
                    client=client,
                    detail=detail[:500],
                )
            )

    async def _ready_once_saved(self, session: LiveSession, host: str, port: int) -> None:
        # Viewers see the desktop only once a gateway killed now would find it running and
        # keep it: before the write, the next gateway would stop the desktop they already see.
        await self._until_saved(session, "viewers are let in")
        set_ready(session, host, port)

    async def _until_saved(self, session: LiveSession, what_goes_on: str) -> None:
        """Wait until what was written of ``session`` so far is saved, or
        :data:`SAVE_WAIT_TIMEOUT` (the database is away: ``what_goes_on`` anyway).
        During an outage the store already knows of, nothing is waited for."""
        store = self.store
        if store is None:
            return
        if store.away:
            # The store logged the outage as it began: a line per session would repeat it.
            logger.debug("%s: the database is away; %s unsaved", session.label, what_goes_on)
            return
        if not await store.caught_up(SAVE_WAIT_TIMEOUT):
            logger.log(
                logging.DEBUG if store.away else logging.WARNING,
                "%s: the session store is behind; %s before the session is saved",
                session.label,
                what_goes_on,
            )
