"""The broker's session store in the gateway's database (SQLite by default, PostgreSQL by URL).

Its methods block on the database; the broker calls them from its store thread, never from the
event loop. Django closes a broken or old connection only around requests: each method does it
first, as a request would, so that a restarted database server is reconnected to (SQLite's
connection, which Django would close at every request, is kept until it fails, or until the
file it opened is no longer the one at the database's path: a backup restored while the gateway
runs would otherwise take none of its writes); a database that cannot be reached raises
:class:`~vizgate.store.StoreUnavailable`, and the store thread tries again later. A write is one
transaction of upserts (``INSERT ... ON CONFLICT``) and inserts.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections.abc import Iterator, Sequence

from django.db import DEFAULT_DB_ALIAS, close_old_connections, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.signals import connection_created

from vizgate.store import SessionEventRecord, SessionRecord, StoreUnavailable
from vizgate.web.database_outage import DATABASE_AWAY_ERRORS, outage_reason
from vizgate.web.portal.models import Session, SessionEvent

__all__ = ["DjangoSessionStore"]

logger = logging.getLogger(__name__)


def _moment(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)


def _maybe_moment(seconds: float | None) -> datetime.datetime | None:
    return _moment(seconds) if seconds is not None else None


def _seconds(moment: datetime.datetime | None) -> float | None:
    return moment.timestamp() if moment is not None else None


def _drop_old_connection() -> None:
    connection = connections[DEFAULT_DB_ALIAS]
    per_request = connection.settings_dict.get("CONN_MAX_AGE") == 0
    if per_request and connection.connection is not None and not connection.errors_occurred:
        # SQLite's connections are not kept between requests (CONN_MAX_AGE 0), and Django's rule
        # would close this thread's before every write: opening it again (the file, the
        # pragmas, Django's SQL functions) cost about 1 ms a write. Only a broken one goes, or
        # one whose file was replaced.
        if _file_replaced(connection):
            connection.close()
        return
    close_old_connections()


def _file_identity(name: object) -> tuple[int, int] | None:
    """The device and inode of the SQLite file ``name``; None when there is none."""
    try:
        info = os.stat(str(name))
    except (OSError, ValueError):
        return None
    return info.st_dev, info.st_ino


def _file_replaced(connection: BaseDatabaseWrapper) -> bool:
    """Whether another file now stands at the path of the SQLite file ``connection`` opened
    (a backup restored without stopping the gateway); said once in the log."""
    if connection.vendor != "sqlite":
        return False
    name = connection.settings_dict["NAME"]
    now = _file_identity(name)
    opened = getattr(connection, _OPENED_FILE, None)
    if opened is None:
        setattr(connection, _OPENED_FILE, now)
        return False
    if now is None or now == opened:
        return False
    logger.error(
        "the database file %s was replaced while the gateway ran; the sessions are written to "
        "the new one from now on (restore a backup with the gateway stopped)",
        name,
    )
    setattr(connection, _OPENED_FILE, now)
    return True


#: Where a connection keeps the identity of the SQLite file it opened.
_OPENED_FILE = "vizgate_opened_file"


def _remember_file(sender: object, connection: BaseDatabaseWrapper, **kwargs: object) -> None:
    if connection.vendor == "sqlite":
        setattr(connection, _OPENED_FILE, _file_identity(connection.settings_dict["NAME"]))


connection_created.connect(_remember_file, dispatch_uid="vizgate-sqlite-opened-file")


@contextlib.contextmanager
def _database() -> Iterator[None]:
    _drop_old_connection()
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
            events: list[SessionEvent] = []
            for change in changes:
                if isinstance(change, SessionEventRecord):
                    events.append(_event_row(change))
                    continue
                # In the order asked for: the events queued before this record go in first.
                if events:
                    _insert_events(events)
                    events = []
                self._save(change)
            if events:
                _insert_events(events)

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
        # One INSERT ... ON CONFLICT DO UPDATE: a third of update_or_create's time (its SELECT
        # FOR UPDATE, then an UPDATE or an INSERT), and the store writes several per session.
        Session.objects.bulk_create(
            [_session_row(record)],
            update_conflicts=True,
            unique_fields=["id"],
            update_fields=_UPDATED_FIELDS,
        )


def _session_row(record: SessionRecord) -> Session:
    return Session(
        id=record.id,
        token_hash=record.token_hash,
        service=record.service,
        index=record.index,
        user=record.user,
        bound=record.bound,
        options=dict(record.options),
        state=record.state,
        host=record.host,
        port=record.port,
        created=_moment(record.created),
        started=_maybe_moment(record.started),
        ended=_maybe_moment(record.ended),
        last_activity=_maybe_moment(record.last_activity),
        end_reason=record.end_reason or "",
        message=record.message,
        bytes_to_client=record.bytes_to_client,
        bytes_to_server=record.bytes_to_server,
        stop_timed_out=record.stop_timed_out,
        script_state=dict(record.script_state),
        ends_at=_maybe_moment(record.ends_at),
    )


#: Every column of a session but its id: a saved record replaces the row.
_UPDATED_FIELDS = [field.name for field in Session._meta.concrete_fields if not field.primary_key]


def _insert_events(events: list[SessionEvent]) -> None:
    # A line whose key is there already was written by an earlier try of this write.
    SessionEvent.objects.bulk_create(events, ignore_conflicts=True)


def _event_row(event: SessionEventRecord) -> SessionEvent:
    return SessionEvent(
        session_id=event.session_id,
        kind=event.kind,
        at=_moment(event.at),
        user=event.user,
        client=event.client,
        detail=event.detail,
        key=event.key,
    )
