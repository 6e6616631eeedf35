"""The store thread (:class:`vizgate.store.ThreadedStore`) over a store whose database comes and
goes: writes wait in order while it is away and none is lost, a bad write is dropped alone,
and a gateway stopping during an outage says what it could not save."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from gateway import run_python
from support import scaled, wait_until
from vizgate.store import (
    BATCH_LIMIT,
    MemoryStore,
    SessionEventRecord,
    SessionRecord,
    StoreUnavailable,
    ThreadedStore,
)

FAST = (0.01, 0.02)


class FlakyStore(MemoryStore):
    """A memory store whose database is away while :attr:`away` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.away = threading.Event()
        self.attempts = 0
        self.refuse: set[str] = set()

    def save(self, record: SessionRecord) -> None:
        self.attempts += 1
        if self.away.is_set():
            raise StoreUnavailable("connection refused")
        if record.id in self.refuse:
            raise ValueError("a record the database refuses")
        super().save(record)

    def add_event(self, event: SessionEventRecord) -> None:
        if self.away.is_set():
            raise StoreUnavailable("connection refused")
        super().add_event(event)


def record(session_id: str, state: str = "reserved") -> SessionRecord:
    return SessionRecord(
        id=session_id,
        token_hash="0" * 64,
        service="Desktop",
        index=0,
        user="alice",
        bound=True,
        options={},
        state=state,
        host=None,
        port=None,
        created=1_700_000_000.0,
        started=None,
        ended=None,
        last_activity=None,
        end_reason=None,
        message="",
        bytes_to_client=0,
        bytes_to_server=0,
        stop_timed_out=False,
    )


def test_writes_made_while_the_database_is_away_are_saved_in_order_when_it_is_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "vizgate.store")
    flaky = FlakyStore()
    store = ThreadedStore(flaky, retry_delays=FAST)
    try:
        flaky.away.set()
        store.save(record("a"))
        store.save(replace(record("a"), state="ended"))
        store.add_event(SessionEventRecord("a", "released", 1_700_000_001.0))
        store.save(record("b"))
        wait_until(lambda: flaky.attempts >= 5, scaled(10), message="no write was tried again")
        assert flaky.load_live() == []
        assert store.waiting() == 4
        flaky.away.clear()
        assert store.flush(scaled(10))
        # "a" ended after it was reserved: the order held, so it is not live.
        assert [live.id for live in flaky.load_live()] == ["b"]
        assert [event.kind for event in flaky.events] == ["released"]
        assert store.waiting() == 0
    finally:
        store.close()
    messages = [entry.getMessage() for entry in caplog.records]
    assert len([m for m in messages if "cannot reach the database" in m]) == 1, messages
    assert len([m for m in messages if "reaches the database again" in m]) == 1, messages


def test_a_write_the_database_refuses_is_dropped_alone(caplog: pytest.LogCaptureFixture) -> None:
    flaky = FlakyStore()
    flaky.refuse.add("bad")
    store = ThreadedStore(flaky, retry_delays=FAST)
    try:
        store.save(record("bad"))
        store.save(record("good"))
        assert store.flush(scaled(10))
    finally:
        store.close()
    assert [live.id for live in flaky.load_live()] == ["good"]
    assert "the session store failed to save; continuing" in caplog.text


def test_a_store_stopping_during_an_outage_gives_up_and_says_how_much_was_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    flaky = FlakyStore()
    flaky.away.set()
    store = ThreadedStore(flaky, retry_delays=FAST)
    store.save(record("a"))
    store.save(record("b"))
    store.close(timeout=0.2)
    assert not store._thread.is_alive()
    assert "2 session store write(s) were not saved" in caplog.text
    # One outage, one warning, however many writes it held up.
    assert caplog.text.count("cannot reach the database") == 1


class HeldStore(MemoryStore):
    """A memory store that writes each batch all or none, refuses changes of sessions in
    :attr:`refuse`, and holds its first write until :attr:`release` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.holding = threading.Event()
        self.batches: list[list[str]] = []
        self.refuse: set[str] = set()

    def write(self, changes: Sequence[SessionRecord | SessionEventRecord]) -> None:
        if not self.holding.is_set():
            self.holding.set()
            self.release.wait(scaled(10))
        names = [
            change.id if isinstance(change, SessionRecord) else change.session_id
            for change in changes
        ]
        if self.refuse.intersection(names):
            raise ValueError("a record the database refuses")
        self.batches.append(names)
        super().write(changes)


def test_what_queues_up_during_a_write_is_written_together_in_order() -> None:
    held = HeldStore()
    store = ThreadedStore(held)
    try:
        store.save(record("first"))
        wait_until(held.holding.is_set, scaled(10), message="the first write never began")
        for number in range(BATCH_LIMIT + 50):
            store.save(record(f"s{number}"))
        assert store.waiting() == BATCH_LIMIT + 51
        held.release.set()
        assert store.flush(scaled(10))
    finally:
        store.close()
    # One commit for the first, then as few as the limit allows, in the order asked for.
    assert [len(batch) for batch in held.batches] == [1, BATCH_LIMIT, 50]
    activity = store.activity()
    assert (activity.transactions, activity.changes) == (3, BATCH_LIMIT + 51)
    assert activity.seconds > 0
    assert [name for batch in held.batches for name in batch] == [
        "first",
        *(f"s{number}" for number in range(BATCH_LIMIT + 50)),
    ]
    assert store.waiting() == 0


def test_a_change_that_spoils_a_batch_is_dropped_alone(caplog: pytest.LogCaptureFixture) -> None:
    held = HeldStore()
    held.refuse.add("bad")
    store = ThreadedStore(held)
    try:
        store.save(record("first"))
        wait_until(held.holding.is_set, scaled(10), message="the first write never began")
        store.save(record("before"))
        store.save(record("bad"))
        store.add_event(SessionEventRecord("after", "reserved", 1_700_000_001.0))
        held.release.set()
        assert store.flush(scaled(10))
    finally:
        store.close()
    assert held.batches == [["first"], ["before"], ["after"]]
    assert caplog.text.count("the session store failed to save; continuing") == 1


async def test_caught_up_waits_for_the_writes_asked_for_before_it() -> None:
    held = HeldStore()
    store = ThreadedStore(held)
    try:
        store.save(record("first"))
        assert not await store.caught_up(0.05), "caught up while the write was held"
        held.release.set()
        assert await store.caught_up(scaled(10))
        assert [live.id for live in held.load_live()] == ["first"]
    finally:
        store.close()


_DJANGO_BATCH = """
import json, logging, pathlib, sys
from vizgate.web import setup_django
setup_django(pathlib.Path(sys.argv[1]), allowed_hosts=["localhost"])
from vizgate.store import SessionEventRecord, SessionRecord, ThreadedStore
from vizgate.web.portal.models import Session, SessionEvent
from vizgate.web.portal.store import DjangoSessionStore
record = SessionRecord(**json.loads(sys.argv[2]))
orphan = SessionEventRecord("nosuchsession", "connected", 1_700_000_001.0)
django_store = DjangoSessionStore()
try:
    django_store.write([record, orphan])
except Exception as exc:
    refused = type(exc).__name__
written_alone = list(Session.objects.values_list("id", flat=True))
threaded = ThreadedStore(django_store)
threaded.save(record)
threaded.add_event(orphan)
threaded.add_event(SessionEventRecord(record.id, "reserved", 1_700_000_002.0))
threaded.close()
print(json.dumps({
    "refused": refused,
    "written_alone": written_alone,
    "sessions": list(Session.objects.values_list("id", flat=True)),
    "events": list(SessionEvent.objects.values_list("session_id", "kind")),
}))
"""


def test_the_database_store_writes_a_batch_all_or_none(tmp_path: Path) -> None:
    result = run_python(
        "-c", _DJANGO_BATCH, str(tmp_path / "data"), json.dumps(asdict(record("good")))
    )
    outcome = json.loads(result.stdout)
    # The orphan event fails the transaction at its commit: the session row went with it.
    assert outcome["refused"] == "IntegrityError"
    assert outcome["written_alone"] == []
    # The store thread then writes them one by one, losing only the orphan.
    assert outcome["sessions"] == ["good"]
    assert outcome["events"] == [["good", "reserved"]]
    assert "the session store failed to save; continuing" in result.stderr


_DJANGO_CONNECTION = """
import json, pathlib, sys
from dataclasses import replace
from vizgate.web import setup_django
setup_django(pathlib.Path(sys.argv[1]), allowed_hosts=["localhost"])
from django.db import connection
from vizgate.store import SessionRecord
from vizgate.web.portal.store import DjangoSessionStore
store = DjangoSessionStore()
record = SessionRecord(**json.loads(sys.argv[2]))
store.write([record])
first = connection.connection
store.write([replace(record, state="running")])
kept = connection.connection is first
first.close()  # broken under Django's feet
try:
    store.write([replace(record, state="ended")])
except Exception as exc:
    failed = type(exc).__name__
store.write([replace(record, state="ended")])
print(json.dumps({"kept": kept, "failed": failed, "renewed": connection.connection is not first,
                  "ended": store.load_live() == []}))
"""


def test_the_database_store_keeps_its_sqlite_connection_until_it_breaks(tmp_path: Path) -> None:
    result = run_python(
        "-c", _DJANGO_CONNECTION, str(tmp_path / "data"), json.dumps(asdict(record("kept")))
    )
    # Opening SQLite again for each write cost about 1 ms a write; a connection that failed is
    # replaced at the next write.
    assert json.loads(result.stdout) == {
        "kept": True,
        "failed": "ProgrammingError",
        "renewed": True,
        "ended": True,
    }


_DJANGO_REPLACED = """
import json, os, pathlib, sqlite3, sys
from dataclasses import replace
from vizgate.web import setup_django
setup_django(pathlib.Path(sys.argv[1]), allowed_hosts=["localhost"])
from django.db import connection
from vizgate.store import SessionRecord
from vizgate.web.portal.store import DjangoSessionStore
store = DjangoSessionStore()
record = SessionRecord(**json.loads(sys.argv[2]))
store.write([record])
store.write([replace(record, state="running")])
path = pathlib.Path(connection.settings_dict["NAME"])
# A backup restored the documented way (a copy put in place, -wal and -shm removed), but while
# the gateway still runs.
copy = path.with_name("restored.sqlite3")
with sqlite3.connect(path) as source, sqlite3.connect(copy) as target:
    source.backup(target)
os.replace(copy, path)
for suffix in ("-wal", "-shm"):
    pathlib.Path(str(path) + suffix).unlink(missing_ok=True)
store.write([replace(record, id="after", token_hash="1" * 64, index=1, state="running")])
with sqlite3.connect(path) as restored:
    rows = sorted(row[0] for row in restored.execute("SELECT id FROM portal_session"))
print(json.dumps(rows))
"""


def test_the_database_store_writes_to_a_database_file_restored_under_it(tmp_path: Path) -> None:
    result = run_python(
        "-c", _DJANGO_REPLACED, str(tmp_path / "data"), json.dumps(asdict(record("before")))
    )
    # The kept connection would have gone on writing to the replaced file, lost with it.
    assert json.loads(result.stdout) == ["after", "before"]
    assert "was replaced while the gateway ran" in result.stderr


_DJANGO_RETRY = """
import json, pathlib, sys
from vizgate.web import setup_django
setup_django(pathlib.Path(sys.argv[1]), allowed_hosts=["localhost"])
from vizgate.store import SessionEventRecord, SessionRecord, StoreUnavailable, ThreadedStore
from vizgate.web.portal.models import SessionEvent
from vizgate.web.portal.store import DjangoSessionStore

class AnswerLost(DjangoSessionStore):
    # The first write with events commits, then the connection is cut before the answer.
    cut = 0
    def write(self, changes):
        super().write(changes)
        if not self.cut and any(isinstance(c, SessionEventRecord) for c in changes):
            self.cut += 1
            raise StoreUnavailable("connection lost after COMMIT")

record = SessionRecord(**json.loads(sys.argv[2]))
store = AnswerLost()
threaded = ThreadedStore(store, retry_delays=(0.01,))
threaded.save(record)
threaded.add_event(SessionEventRecord(record.id, "reserved", 1_700_000_001.0))
threaded.add_event(SessionEventRecord(record.id, "connected", 1_700_000_002.0))
threaded.close()
print(json.dumps({"cut": store.cut,
                  "events": list(SessionEvent.objects.values_list("kind", flat=True))}))
"""


def test_a_write_tried_again_after_its_commit_adds_no_line_twice(tmp_path: Path) -> None:
    result = run_python(
        "-c", _DJANGO_RETRY, str(tmp_path / "data"), json.dumps(asdict(record("twice")))
    )
    assert json.loads(result.stdout) == {"cut": 1, "events": ["reserved", "connected"]}
