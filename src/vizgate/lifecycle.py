"""The session lifecycle: a sans-I/O state machine, one per reserved session.

Inputs are method calls that carry the current time (``connected``, ``disconnected``,
``start_succeeded``, ``start_failed``, ``ready``, ``stop_returned``, ``release``, ``crashed``,
``activity``, ``tick``); outputs are :class:`Action` objects the driver drains with
:meth:`SessionLifecycle.actions_to_run` and carries out (call the script in a thread, probe a
port, close WebSockets, persist). Nothing here touches a clock, a socket or an event loop, so the
rules are tested by feeding inputs (see ``tests/test_lifecycle.py``).

Rules this machine keeps:

* ``stop()`` follows every ``start()`` that was called, exactly once, including a start that
  returned False, raised or overran its timeout; and never while that ``start()`` still runs
  (a start that overran waits in CANCELLING for the script to return).
* A session that never started is never stopped.
* The instance index is held until :class:`Ended` is emitted, so no two live sessions share it.
* Every session ends with exactly one :class:`EndReason`.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

__all__ = [
    "Action",
    "CallStart",
    "CallStop",
    "CloseConnections",
    "EndReason",
    "Ended",
    "IllegalTransition",
    "Persist",
    "ProbeReady",
    "SessionFailed",
    "SessionLifecycle",
    "SessionReady",
    "State",
    "Timeouts",
]

logger = logging.getLogger(__name__)


class State(enum.Enum):
    """Where a session is; the value is what status pages show."""

    RESERVED = "reserved"
    """An index is held for a token; no connection has come yet."""
    STARTING = "starting"
    """``start()`` runs in a worker thread."""
    WAITING_READY = "waiting_ready"
    """``start()`` returned True; waiting until host:port accepts TCP connections."""
    RUNNING = "running"
    """Viewers may connect and bytes flow."""
    CANCELLING = "cancelling"
    """The session ended while ``start()`` still runs; ``stop()`` follows when it returns."""
    STOPPING = "stopping"
    """``stop()`` runs in a worker thread."""
    ENDED = "ended"
    """Over; the index is free."""


LIVE_STATES = frozenset(State) - {State.ENDED}


class EndReason(enum.Enum):
    """Why a session ended; the value is what logs, status pages and history show."""

    RELEASED = "released"
    DISCONNECTED = "disconnected"
    RESERVATION_TIMEOUT = "reservation_timeout"
    START_FAILED = "start_failed"
    START_TIMEOUT = "start_timeout"
    IDLE_TIMEOUT = "idle_timeout"
    MAX_LIFETIME = "max_lifetime"
    TIME_LIMIT = "time_limit"
    TERMINATED = "terminated"
    CRASHED = "crashed"
    SHUTDOWN = "shutdown"


# End reasons a caller may give to release(); the others are decided by the machine itself.
RELEASE_REASONS = frozenset({EndReason.RELEASED, EndReason.TERMINATED, EndReason.SHUTDOWN})


@dataclass(frozen=True)
class Timeouts:
    """Every timeout of a session, in seconds; None switches one off.

    Attributes:
        reservation: a reservation nobody connects to is reclaimed after this (the seed's 300 s).
        start: ``start()`` must return within this.
        ready: after ``start()`` returned, host:port must accept TCP connections within this.
        linger: after the last connection closes, wait this long before calling ``stop()``.
        idle: end a running session when no viewer sent input for this long.
        max_lifetime: end a running session this long after it became ready.
        stop: give up waiting for ``stop()`` after this; the index is freed and the session
            flagged for the admin.
    """

    reservation: float = 300.0
    start: float = 120.0
    ready: float = 30.0
    linger: float = 10.0
    idle: float | None = None
    max_lifetime: float | None = None
    stop: float = 60.0

    def with_options(self, options: Mapping[str, Any]) -> Timeouts:
        """These timeouts with a session type's options on top: ``start_timeout``,
        ``ready_timeout``, ``linger``, ``idle_timeout`` and ``max_lifetime``."""

        def seconds(key: str, fallback: float) -> float:
            value = options.get(key)
            return float(value) if value is not None else fallback

        def limit(key: str, fallback: float | None) -> float | None:
            # For the limits an admin switches on, 0 means off, not "end at once".
            value = options.get(key)
            if value is None:
                return fallback
            return float(value) or None

        return replace(
            self,
            start=seconds("start_timeout", self.start),
            ready=seconds("ready_timeout", self.ready),
            linger=seconds("linger", self.linger),
            idle=limit("idle_timeout", self.idle),
            max_lifetime=limit("max_lifetime", self.max_lifetime),
        )


class Action:
    """Something the driver must do; drained with :meth:`SessionLifecycle.actions_to_run`."""

    __slots__ = ()


@dataclass(frozen=True)
class CallStart(Action):
    """Run the script's ``start()`` in a worker thread."""


@dataclass(frozen=True)
class ProbeReady(Action):
    """Try TCP connections to host:port until one succeeds; then call ``ready()``."""

    host: str
    port: int


@dataclass(frozen=True)
class SessionReady(Action):
    """Wake everyone waiting for this session: it runs at host:port."""

    host: str
    port: int


@dataclass(frozen=True)
class SessionFailed(Action):
    """Wake everyone waiting for this session: it will not run."""

    reason: EndReason
    message: str


@dataclass(frozen=True)
class CloseConnections(Action):
    """Close every viewer connection of this session with this reason."""

    reason: EndReason
    message: str


@dataclass(frozen=True)
class CallStop(Action):
    """Run the script's ``stop()`` in a worker thread (after any running ``start()``)."""


@dataclass(frozen=True)
class Ended(Action):
    """The session is over and its index is free."""

    reason: EndReason


@dataclass(frozen=True)
class Persist(Action):
    """The session changed in a way worth saving."""


class IllegalTransition(RuntimeError):
    """An input arrived that the current state does not allow."""


def _seconds(value: float) -> str:
    return f"{value:g} s"


@dataclass(eq=False)
class SessionLifecycle:
    """The state machine of one session, from reservation to end.

    Args:
        now: the time of the reservation (monotonic seconds, as every ``now`` after it).
        timeouts: the session's timeouts.
        label: how log lines name the session (never the token).
    """

    now: float
    timeouts: Timeouts = field(default_factory=Timeouts)
    label: str = "session"

    def __post_init__(self) -> None:
        self._state = State.RESERVED
        self.reserved_at = self.now
        self.started_at: float | None = None
        self.ready_at: float | None = None
        #: When the session's VNC server stops by itself (a batch job's time limit), if known.
        self.ends_at: float | None = None
        self.ended_at: float | None = None
        self.last_activity = self.now
        self.connections: set[int] = set()
        self.end_reason: EndReason | None = None
        self.message = ""
        self.host_port: tuple[str, int] | None = None
        self.stop_timed_out = False
        self._deadline_of_phase: float | None = self.now + self.timeouts.reservation
        self._last_disconnect: float | None = None
        self._actions: list[Action] = []

    # -- a restarted gateway's sessions -------------------------------------------------------

    @classmethod
    def adopt_reserved(
        cls, *, now: float, timeouts: Timeouts, label: str, deadline: float
    ) -> SessionLifecycle:
        """A reservation made before a restart; it keeps its original deadline."""
        lifecycle = cls(now=now, timeouts=timeouts, label=label)
        lifecycle._deadline_of_phase = deadline
        return lifecycle

    @classmethod
    def adopt_running(
        cls,
        *,
        now: float,
        timeouts: Timeouts,
        label: str,
        host: str,
        port: int,
        ready_at: float,
        last_activity: float,
    ) -> SessionLifecycle:
        """A session that ran before a restart and still answers at host:port.

        Nobody is connected yet, so the linger starts now: if no viewer comes back within it,
        the session is stopped as after any last disconnect.
        """
        lifecycle = cls(now=now, timeouts=timeouts, label=label)
        lifecycle._state = State.RUNNING
        lifecycle.host_port = (host, port)
        lifecycle.started_at = lifecycle.ready_at = ready_at
        lifecycle.last_activity = max(last_activity, ready_at)
        lifecycle._deadline_of_phase = None
        lifecycle._last_disconnect = now
        return lifecycle

    @classmethod
    def adopt_interrupted(
        cls, *, now: float, timeouts: Timeouts, label: str, reason: EndReason, message: str
    ) -> SessionLifecycle:
        """A session whose ``start()`` or ``stop()`` the restart cut short, or that no longer
        answers: ``stop()`` runs now (again, for an interrupted stop) and it ends with
        ``reason``."""
        lifecycle = cls(now=now, timeouts=timeouts, label=label)
        # start() was called before the restart, so stop() is owed; nobody is attached yet.
        lifecycle.end_reason, lifecycle.message = reason, message
        lifecycle._state = State.STOPPING
        lifecycle._deadline_of_phase = now + timeouts.stop
        lifecycle._actions.append(CallStop())
        return lifecycle

    # -- state ----------------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    def _set_state(self, state: State, now: float) -> None:
        logger.debug("%s: %s -> %s", self.label, self._state.value, state.value)
        self._state = state
        self._actions.append(Persist())
        if state is State.ENDED:
            self.ended_at = now

    @property
    def is_live(self) -> bool:
        """True until the session has ended and freed its index."""
        return self._state is not State.ENDED

    @property
    def accepts_connections(self) -> bool:
        """Can a new viewer attach now?"""
        return self._state in (
            State.RESERVED,
            State.STARTING,
            State.WAITING_READY,
            State.RUNNING,
        )

    @property
    def is_ending(self) -> bool:
        """The session has an end reason and is only winding down."""
        return self.end_reason is not None

    def actions_to_run(self) -> list[Action]:
        """Drain the actions produced by the inputs so far, in order."""
        actions, self._actions = self._actions, []
        return actions

    def _illegal(self, what: str) -> IllegalTransition:
        return IllegalTransition(
            f"{self.label}: {what} is not allowed in state {self._state.value}"
        )

    def _end_with(self, reason: EndReason, message: str, now: float) -> None:
        """Fix the end reason and close viewers; the caller chooses the next state."""
        self.end_reason = reason
        self.message = message
        self._deadline_of_phase = None
        if self._state in (State.STARTING, State.WAITING_READY):
            self._actions.append(SessionFailed(reason, message))
        self._actions.append(CloseConnections(reason, message))

    def _begin_stop(self, now: float) -> None:
        self._set_state(State.STOPPING, now)
        self._deadline_of_phase = now + self.timeouts.stop
        self._actions.append(CallStop())

    def _finish(self, now: float) -> None:
        assert self.end_reason is not None
        self._deadline_of_phase = None
        self._set_state(State.ENDED, now)
        self._actions.append(Ended(self.end_reason))

    # -- inputs -----------------------------------------------------------------------------

    def connected(self, connection: int, now: float) -> None:
        """A viewer attached; the first one starts the session."""
        if not self.accepts_connections:
            raise self._illegal("connected")
        if connection in self.connections:
            raise self._illegal(f"connected twice ({connection})")
        self.connections.add(connection)
        self.last_activity = now
        self._last_disconnect = None
        if self._state is State.RESERVED:
            self._set_state(State.STARTING, now)
            self.started_at = now
            self._deadline_of_phase = now + self.timeouts.start
            self._actions.append(CallStart())

    def disconnected(self, connection: int, now: float) -> None:
        """A viewer went away (in any state: closing viewers may report late)."""
        if connection not in self.connections:
            raise self._illegal(f"disconnected without connecting ({connection})")
        self.connections.discard(connection)
        if not self.connections:
            self._last_disconnect = now

    def activity(self, now: float) -> None:
        """A viewer sent input; postpones the idle timeout."""
        self.last_activity = max(self.last_activity, now)

    def start_succeeded(self, host: str, port: int, now: float) -> None:
        """``start()`` returned True and reported host:port."""
        if self._state is State.CANCELLING:
            self._begin_stop(now)
            return
        if self._state is not State.STARTING:
            raise self._illegal("start_succeeded")
        self.host_port = (host, port)
        self._set_state(State.WAITING_READY, now)
        self._deadline_of_phase = now + self.timeouts.ready
        self._actions.append(ProbeReady(host, port))

    def start_failed(self, message: str, now: float) -> None:
        """``start()`` returned False, raised, or reported no host:port."""
        if self._state is State.CANCELLING:
            self._begin_stop(now)
            return
        if self._state is not State.STARTING:
            raise self._illegal("start_failed")
        self._end_with(EndReason.START_FAILED, message, now)
        self._begin_stop(now)

    def end_by(self, at: float) -> None:
        """The session's VNC server stops by itself at ``at`` (a batch job's time limit, as
        its script reported it): the session ends then with :attr:`EndReason.TIME_LIMIT`, and
        viewers are warned before, as for the maximum lifetime."""
        self.ends_at = at if self.ends_at is None else min(self.ends_at, at)

    def ready(self, now: float) -> None:
        """host:port accepted a TCP connection: the session runs."""
        if self._state is not State.WAITING_READY:
            raise self._illegal("ready")
        assert self.host_port is not None
        self._set_state(State.RUNNING, now)
        self.ready_at = now
        self.last_activity = now
        self._deadline_of_phase = None
        if not self.connections:
            self._last_disconnect = now
        self._actions.append(SessionReady(*self.host_port))

    def stop_returned(self, now: float) -> None:
        """``stop()`` returned (or raised: the driver logs it; the session ends either way)."""
        if self._state is not State.STOPPING:
            raise self._illegal("stop_returned")
        self._finish(now)

    def release(self, reason: EndReason, now: float, message: str = "") -> bool:
        """End the session on request: a user released it, an admin terminated it, or the
        gateway shuts down.

        Returns:
            False when the session was already ending (the request has no effect).
        """
        if reason not in RELEASE_REASONS:
            raise ValueError(f"release() takes one of {sorted(r.value for r in RELEASE_REASONS)}")
        if self.is_ending:
            return False
        message = message or _RELEASE_MESSAGES[reason]
        state = self._state
        self._end_with(reason, message, now)
        if state is State.RESERVED:
            self._finish(now)
        elif state is State.STARTING:
            self._set_state(State.CANCELLING, now)
        else:
            self._begin_stop(now)
        return True

    def crashed(self, message: str, now: float) -> None:
        """The VNC server went away while the session ran."""
        if self._state is not State.RUNNING or self.is_ending:
            raise self._illegal("crashed")
        self._end_with(EndReason.CRASHED, message, now)
        self._begin_stop(now)

    def timeout_deadline(self) -> tuple[float, EndReason] | None:
        """When the idle timeout or the maximum lifetime will end this running session, and
        which; what a viewer warns its user about. None when neither applies."""
        if self._state is not State.RUNNING or self.is_ending:
            return None
        candidates: list[tuple[float, EndReason]] = []
        if self.timeouts.idle is not None:
            candidates.append((self.last_activity + self.timeouts.idle, EndReason.IDLE_TIMEOUT))
        if self.timeouts.max_lifetime is not None and self.ready_at is not None:
            candidates.append((self.ready_at + self.timeouts.max_lifetime, EndReason.MAX_LIFETIME))
        if self.ends_at is not None:
            candidates.append((self.ends_at, EndReason.TIME_LIMIT))
        return min(candidates, key=lambda c: c[0]) if candidates else None

    def next_deadline(self) -> float | None:
        """When :meth:`tick` next has something to do, or None."""
        candidates: list[float] = []
        if self._deadline_of_phase is not None:
            candidates.append(self._deadline_of_phase)
        if self._state is State.RUNNING:
            if not self.connections and self._last_disconnect is not None:
                candidates.append(self._last_disconnect + self.timeouts.linger)
            if self.timeouts.idle is not None:
                candidates.append(self.last_activity + self.timeouts.idle)
            if self.timeouts.max_lifetime is not None and self.ready_at is not None:
                candidates.append(self.ready_at + self.timeouts.max_lifetime)
            if self.ends_at is not None:
                candidates.append(self.ends_at)
        return min(candidates) if candidates else None

    def tick(self, now: float) -> None:
        """Let time pass: fire whichever timeout is due."""
        state = self._state
        due = self._deadline_of_phase is not None and now >= self._deadline_of_phase
        if state is State.RESERVED and due:
            self._end_with(
                EndReason.RESERVATION_TIMEOUT,
                f"nobody connected within {_seconds(self.timeouts.reservation)}",
                now,
            )
            self._finish(now)
        elif state is State.STARTING and due:
            self._end_with(
                EndReason.START_TIMEOUT,
                f"start() did not finish within {_seconds(self.timeouts.start)}",
                now,
            )
            self._set_state(State.CANCELLING, now)
        elif state is State.WAITING_READY and due:
            assert self.host_port is not None
            self._end_with(
                EndReason.START_FAILED,
                f"VNC server did not accept connections within {_seconds(self.timeouts.ready)}",
                now,
            )
            self._begin_stop(now)
        elif state is State.STOPPING and due:
            logger.warning(
                "%s: stop() did not return within %s; the index is freed anyway",
                self.label,
                _seconds(self.timeouts.stop),
            )
            self.stop_timed_out = True
            self._finish(now)
        elif state is State.RUNNING:
            self._tick_running(now)

    def _tick_running(self, now: float) -> None:
        timeouts = self.timeouts
        if (
            not self.connections
            and self._last_disconnect is not None
            and now >= self._last_disconnect + timeouts.linger
        ):
            self._end_with(EndReason.DISCONNECTED, "the last viewer disconnected", now)
        elif timeouts.idle is not None and now >= self.last_activity + timeouts.idle:
            self._end_with(EndReason.IDLE_TIMEOUT, f"no input for {_seconds(timeouts.idle)}", now)
        elif (
            timeouts.max_lifetime is not None
            and self.ready_at is not None
            and now >= self.ready_at + timeouts.max_lifetime
        ):
            self._end_with(
                EndReason.MAX_LIFETIME,
                f"the session reached its maximum lifetime of {_seconds(timeouts.max_lifetime)}",
                now,
            )
        elif self.ends_at is not None and now >= self.ends_at:
            self._end_with(EndReason.TIME_LIMIT, "the session's time limit was reached", now)
        else:
            return
        self._begin_stop(now)


_RELEASE_MESSAGES = {
    EndReason.RELEASED: "the session was released",
    EndReason.TERMINATED: "session ended by administrator",
    EndReason.SHUTDOWN: "the gateway is shutting down",
}
