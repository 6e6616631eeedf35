"""The broker's session store in the gateway's database (SQLite by default, PostgreSQL by URL).

Its methods block on the database; the broker calls them from its store thread, never from the
event loop. Django closes a broken or old connection only around requests: each method does it
first, as a request would, so that a restarted database server is reconnected to; a database
that cannot be reached raises :class:`~vizgate.store.StoreUnavailable`, and the store thread
tries again later.
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Iterator, Sequence

from django.db import close_old_connections, transaction

from vizgate.store import SessionEventRecord, SessionRecord, StoreUnavailable
from vizgate.web.database_outage import DATABASE_AWAY_ERRORS, outage_reason
from vizgate.web.portal.models import Session, SessionEvent

__all__ = ["DjangoSessionStore"]


def _moment(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)


def _maybe_moment(seconds: float | None) -> datetime.datetime | None:
    return _moment(seconds) if seconds is not None else None


def _seconds(moment: datetime.datetime | None) -> float | None:
    return moment.timestamp() if moment is not None else None


@contextlib.contextmanager
def _database() -> Iterator[None]:
    close_old_connections()
    try:
        yield
    except DATABASE_AWAY_ERRORS as exc:
        raise StoreUnavailable(outage_reason(exc)) from exc


class DjangoSessionStore:
    """A :class:`vizgate.store.SessionStore` over the portal's Session and SessionEvent."""

    def load_live(self) -> list[SessionRecord]:
        with _database():
            return self._load_live()

    def write(self, changes: Sequence[SessionRecord | SessionEventRecord]) -> None:
        with _database(), transaction.atomic():
            for change in changes:
                if isinstance(change, SessionRecord):
                    self._save(change)
                else:
                    self._add_event(change)

    def save(self, record: SessionRecord) -> None:
        self.write([record])

    def add_event(self, event: SessionEventRecord) -> None:
        self.write([event])

    def _load_live(self) -> list[SessionRecord]:
        return [
            SessionRecord(
                id=row.id,
                token_hash=row.token_hash,
                service=row.service,
                index=row.index,
                user=row.user,
                bound=row.bound,
                options=dict(row.options or {}),
                state=row.state,
                host=row.host,
                port=row.port,
                created=row.created.timestamp(),
                started=_seconds(row.started),
                ended=_seconds(row.ended),
                last_activity=_seconds(row.last_activity),
                end_reason=row.end_reason or None,
                message=row.message,
                bytes_to_client=row.bytes_to_client,
                bytes_to_server=row.bytes_to_server,
                stop_timed_out=row.stop_timed_out,
                script_state=dict(row.script_state or {}),
                ends_at=_seconds(row.ends_at),
            )
            for row in Session.objects.exclude(state="ended").order_by("created")
        ]

    def _save(self, record: SessionRecord) -> None:
        Session.objects.update_or_create(
            id=record.id,
            defaults={
                "token_hash": record.token_hash,
                "service": record.service,
                "index": record.index,
                "user": record.user,
                "bound": record.bound,
                "options": dict(record.options),
                "state": record.state,
                "host": record.host,
                "port": record.port,
                "created": _moment(record.created),
                "started": _maybe_moment(record.started),
                "ended": _maybe_moment(record.ended),
                "last_activity": _maybe_moment(record.last_activity),
                "end_reason": record.end_reason or "",
                "message": record.message,
                "bytes_to_client": record.bytes_to_client,
                "bytes_to_server": record.bytes_to_server,
                "stop_timed_out": record.stop_timed_out,
                "script_state": dict(record.script_state),
                "ends_at": _maybe_moment(record.ends_at),
            },
        )

    def _add_event(self, event: SessionEventRecord) -> None:
        SessionEvent.objects.create(
            session_id=event.session_id,
            kind=event.kind,
            at=_moment(event.at),
            user=event.user,
            client=event.client,
            detail=event.detail,
        )
