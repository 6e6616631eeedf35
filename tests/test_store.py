"""The store thread (:class:`vizgate.store.ThreadedStore`) over a store whose database comes and
goes: writes wait in order while it is away and none is lost, a bad write is dropped alone,
and a gateway stopping during an outage says what it could not save."""

from __future__ import annotations

import logging
import threading
from dataclasses import replace

import pytest

from support import scaled, wait_until
from vizgate.store import (
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
