"""Where the broker keeps its sessions so that a restarted gateway finds them again.

The broker hands a :class:`SessionRecord` to a :class:`SessionStore` whenever a session changes
state, and an event whenever something worth auditing happens; at start-up it asks the store
for the sessions that were live. The store never sees a token: a session is known by its public
id and the SHA-256 of its token, which is enough to recognise the token when a viewer presents
it again after a restart.

:class:`MemoryStore` keeps everything in memory (tests, and a gateway run without a database);
the gateway's Django store lives in :mod:`vizgate.web.portal.store`. :class:`ThreadedStore` runs
any store's blocking calls on one writer thread, in order, so the event loop never waits for a
database, and holds them while the database is away (restarted, failing over): a store raises
:class:`StoreUnavailable` for a write that may succeed later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import secrets
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

__all__ = [
    "EVENT_KINDS",
    "MemoryStore",
    "SessionEventRecord",
    "SessionRecord",
    "SessionStore",
    "StoreActivity",
    "StoreUnavailable",
    "ThreadedStore",
]

logger = logging.getLogger(__name__)

#: What the audit trail records.
EVENT_KINDS = frozenset(
    {
        "reserved",
        "starting",
        "started",
        "connected",
        "disconnected",
        "stopping",
        "stopped",
        "failed",
        "released",
        "terminated",
        "adopted",
    }
)


@dataclass(frozen=True)
class SessionRecord:
    """What is saved of one session (wall-clock times in seconds since the epoch).

    Attributes:
        id: the public id (derived from the token; safe to show).
        token_hash: SHA-256 of the token, hex.
        service, index, user, bound, options: what the reservation held; ``options`` never
            holds a secret (the broker leaves out keys that look like one).
        state: the lifecycle state's value; ``"ended"`` once over.
        host, port: where the VNC server listens, once known.
        created, started, ended, last_activity: when things happened.
        end_reason, message: why it ended, and the message people were shown.
        bytes_to_client, bytes_to_server: what the tunnel carried.
        stop_timed_out: ``stop()`` did not return in time; an admin should look.
        script_state: what the script's ``get_state()`` returned, for its ``load_state()``.
        ends_at: when the gateway ends the session because its script reported an end
            (``set_end_time``, e.g. a job's time limit), if it did.
    """

    id: str
    token_hash: str
    service: str
    index: int
    user: str
    bound: bool
    options: Mapping[str, Any]
    state: str
    host: str | None
    port: int | None
    created: float
    started: float | None
    ended: float | None
    last_activity: float | None
    end_reason: str | None
    message: str
    bytes_to_client: int
    bytes_to_server: int
    stop_timed_out: bool
    script_state: Mapping[str, Any] = field(default_factory=dict)
    ends_at: float | None = None


@dataclass(frozen=True)
class SessionEventRecord:
    """One line of the audit trail.

    ``key`` is random and unique: a write tried again after its commit went through but the
    answer was lost (a connection cut at that moment) leaves the line once, not twice.
    """

    session_id: str
    kind: str
    at: float
    user: str = ""
    client: str = ""
    detail: str = ""
    key: str = field(default_factory=lambda: secrets.token_hex(16))


class SessionStore(Protocol):
    """Keeps session records and their audit trail. Calls may block: the broker runs them
    through a :class:`ThreadedStore`."""

    def load_live(self) -> list[SessionRecord]:
        """Every session that had not ended, oldest first."""
        ...

    def write(self, changes: Sequence[SessionRecord | SessionEventRecord]) -> None:
        """Make ``changes`` in order, all or none: insert or update each session record (by
        its ``id``), append each event to the audit trail.

        Raises:
            StoreUnavailable: the database cannot be reached now; nothing was written.
        """
        ...


class MemoryStore:
    """A :class:`SessionStore` in memory; what a broker without a database uses."""

    def __init__(self) -> None:
        self.records: dict[str, SessionRecord] = {}
        self.events: list[SessionEventRecord] = []
        self._lock = threading.Lock()

    def load_live(self) -> list[SessionRecord]:
        with self._lock:
            live = [r for r in self.records.values() if r.state != "ended"]
        return sorted(live, key=lambda r: r.created)

    def save(self, record: SessionRecord) -> None:
        with self._lock:
            self.records[record.id] = replace(record)

    def add_event(self, event: SessionEventRecord) -> None:
        with self._lock:
            self.events.append(event)

    def write(self, changes: Sequence[SessionRecord | SessionEventRecord]) -> None:
        for change in changes:
            if isinstance(change, SessionRecord):
                self.save(change)
            else:
                self.add_event(change)


#: What a store writes: a session's new state, or a line of its audit trail.
Change = SessionRecord | SessionEventRecord

#: The most changes the writer thread makes in one transaction.
BATCH_LIMIT = 200


class StoreUnavailable(Exception):
    """The store cannot reach its database now: the write was not made, and may be tried
    again later. The message says why, without credentials."""


#: How long the writer waits before trying a write again while the database is away: doubling
#: from the first to the last, then the last until it is back.
RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0)


@dataclass(frozen=True)
class StoreActivity:
    """What the store thread has written since it started, for ``/metrics``: transactions
    committed, the session changes in them, and the seconds they took (reservations and
    starts wait for them)."""

    transactions: int = 0
    changes: int = 0
    seconds: float = 0.0


class _Stop:
    """Put on the queue by :meth:`ThreadedStore.close`: the writer thread ends there."""


#: Told when the changes queued before it are written: a thread's event (:meth:`flush`) or an
#: event loop's future (:meth:`ThreadedStore.caught_up`).
_Marker = threading.Event | tuple[asyncio.AbstractEventLoop, "asyncio.Future[None]"]


def _tell(marker: _Marker) -> None:
    if isinstance(marker, threading.Event):
        marker.set()
        return
    loop, future = marker
    # The loop may be gone (the gateway stopped) or the waiter may have timed out.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(_resolve, future)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class ThreadedStore:
    """Runs a store's writes on one thread, in the order they were asked for.

    Writes never block the caller. The thread writes what has queued up since its last write in
    one transaction (up to :data:`BATCH_LIMIT` changes), so a burst of session changes costs
    one commit, not one each. :meth:`flush` and :meth:`caught_up` wait until every write asked
    for so far is done. While the store is unavailable (:class:`StoreUnavailable`) the writes
    are tried again after :data:`RETRY_DELAYS` and the ones behind them wait, so the database
    ends up as it would have without the outage; the outage and its end are logged once each.
    A change that fails otherwise is logged and dropped alone: a bad record must not hold up
    the others, and a database hiccup must not take sessions down.
    """

    def __init__(self, store: SessionStore, retry_delays: tuple[float, ...] = RETRY_DELAYS) -> None:
        self.store = store
        self.retry_delays = retry_delays
        self._queue: queue.SimpleQueue[Change | _Marker | _Stop] = queue.SimpleQueue()
        #: Set when :meth:`close` gives up on an unavailable store: what is left is dropped.
        self._giving_up = threading.Event()
        self._dropped = 0
        #: When the store became unavailable (monotonic), while it is.
        self._away_since: float | None = None
        self._waiting = 0
        self._lock = threading.Lock()
        self._activity = StoreActivity()
        self._thread = threading.Thread(target=self._run, name="vizgate-store", daemon=True)
        self._thread.start()

    def load_live(self) -> list[SessionRecord]:
        """Read the live sessions (blocking; call it from a worker thread)."""
        self.flush()
        return self.store.load_live()

    def save(self, record: SessionRecord) -> None:
        self._put(record)

    def add_event(self, event: SessionEventRecord) -> None:
        self._put(event)

    @property
    def away(self) -> bool:
        """Whether the database is away now (its outage was logged once, as it began)."""
        return self._away_since is not None

    def waiting(self) -> int:
        """How many writes are not done yet (they pile up while the store is unavailable)."""
        with self._lock:
            return self._waiting

    def activity(self) -> StoreActivity:
        """What has been written so far."""
        with self._lock:
            return self._activity

    def _put(self, change: Change) -> None:
        with self._lock:
            self._waiting += 1
        self._queue.put(change)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until the writes asked for so far are done; False on timeout."""
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    async def caught_up(self, timeout: float) -> bool:
        """Wait, without holding a thread, until the writes asked for so far are done; False if
        ``timeout`` seconds pass first (the database is away: the writes still wait)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._queue.put((loop, future))
        try:
            async with asyncio.timeout(timeout):
                await future
        except TimeoutError:
            return False
        return True

    def close(self, timeout: float | None = 10.0) -> None:
        """Finish the pending writes and stop the thread; after ``timeout`` seconds of an
        unavailable store, drop what is left (and say how much)."""
        self._queue.put(_Stop())
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._giving_up.set()
            self._thread.join(timeout)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            changes: list[Change] = []
            markers: list[_Marker] = []
            item = self._queue.get()
            while True:
                if isinstance(item, _Stop):
                    stopping = True
                    break
                if isinstance(item, SessionRecord | SessionEventRecord):
                    changes.append(item)
                else:
                    markers.append(item)
                if len(changes) >= BATCH_LIMIT:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if changes:
                self._write(changes)
                with self._lock:
                    self._waiting -= len(changes)
            for marker in markers:
                _tell(marker)
        if self._dropped:
            logger.error(
                "%d session store write(s) were not saved: the database did not come back "
                "before the gateway stopped",
                self._dropped,
            )

    def _write(self, changes: list[Change]) -> None:
        try:
            self._write_while_away(changes)
        except Exception:
            if len(changes) == 1:
                logger.exception("the session store failed to save; continuing")
                return
            # One bad change spoiled the transaction: write them one by one, to lose only it.
            for change in changes:
                self._write([change])

    def _write_while_away(self, changes: list[Change]) -> None:
        """Write ``changes`` together, trying again while the store is unavailable."""
        attempt = 0
        while True:
            began = time.monotonic()
            try:
                self.store.write(changes)
            except StoreUnavailable as exc:
                if self._away_since is None:
                    self._away_since = time.monotonic()
                    logger.warning(
                        "the session store cannot reach the database (%s); its writes wait and "
                        "are tried again",
                        exc,
                    )
                delay = self.retry_delays[min(attempt, len(self.retry_delays) - 1)]
                attempt += 1
                if self._giving_up.is_set() or self._giving_up.wait(delay):
                    self._dropped += len(changes)
                    return
                continue
            took = time.monotonic() - began
            with self._lock:
                done = self._activity
                self._activity = StoreActivity(
                    done.transactions + 1, done.changes + len(changes), done.seconds + took
                )
            if self._away_since is not None:
                logger.warning(
                    "the session store reaches the database again after %.0f s",
                    time.monotonic() - self._away_since,
                )
                self._away_since = None
            return
