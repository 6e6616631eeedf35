"""Tests of vizgate.lifecycle: the sans-I/O session state machine, fed inputs, no event loop."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from vizgate.lifecycle import (
    Action,
    CallStart,
    CallStop,
    CloseConnections,
    Ended,
    EndReason,
    IllegalTransition,
    Persist,
    ProbeReady,
    SessionFailed,
    SessionLifecycle,
    SessionReady,
    State,
    Timeouts,
)

HOST, PORT = "127.0.0.1", 5901

# Timeouts with distinct values, so a test can tell which one fired.
TIMEOUTS = Timeouts(reservation=300, start=120, ready=30, linger=10, stop=60)

# The end reasons a caller may give to release(); the machine decides the others.
_RELEASE_REASONS = (EndReason.RELEASED, EndReason.TERMINATED, EndReason.SHUTDOWN)

# Where a session stands after the helpers below brought it there.
T_CONNECT = 1.0
T_STARTED = 2.0
T_READY = 3.0


def make(**timeouts: Any) -> SessionLifecycle:
    """A fresh session reserved at time 0."""
    return SessionLifecycle(now=0.0, timeouts=Timeouts(**timeouts), label="Test#0")


def drain(lifecycle: SessionLifecycle) -> list[Action]:
    """The actions produced since the last drain, without the Persist noise."""
    return [a for a in lifecycle.actions_to_run() if not isinstance(a, Persist)]


def starting(**timeouts: Any) -> SessionLifecycle:
    lifecycle = make(**timeouts)
    lifecycle.connected(1, T_CONNECT)
    drain(lifecycle)
    return lifecycle


def waiting_ready(**timeouts: Any) -> SessionLifecycle:
    lifecycle = starting(**timeouts)
    lifecycle.start_succeeded(HOST, PORT, T_STARTED)
    drain(lifecycle)
    return lifecycle


def running(**timeouts: Any) -> SessionLifecycle:
    lifecycle = waiting_ready(**timeouts)
    lifecycle.ready(T_READY)
    drain(lifecycle)
    return lifecycle


def cancelling(**timeouts: Any) -> SessionLifecycle:
    lifecycle = starting(**timeouts)
    lifecycle.release(EndReason.RELEASED, 5.0)
    drain(lifecycle)
    return lifecycle


def stopping(**timeouts: Any) -> SessionLifecycle:
    lifecycle = running(**timeouts)
    lifecycle.release(EndReason.RELEASED, 5.0)
    drain(lifecycle)
    return lifecycle


def ended(**timeouts: Any) -> SessionLifecycle:
    lifecycle = stopping(**timeouts)
    lifecycle.stop_returned(6.0)
    drain(lifecycle)
    return lifecycle


def reserved(**timeouts: Any) -> SessionLifecycle:
    return make(**timeouts)


BUILDERS: dict[State, Callable[..., SessionLifecycle]] = {
    State.RESERVED: reserved,
    State.STARTING: starting,
    State.WAITING_READY: waiting_ready,
    State.RUNNING: running,
    State.CANCELLING: cancelling,
    State.STOPPING: stopping,
    State.ENDED: ended,
}


# -- the builders themselves ---------------------------------------------------------------------


@pytest.mark.parametrize("state", list(State))
def test_builders_reach_their_state(state: State) -> None:
    assert BUILDERS[state](**TIMEOUTS.__dict__).state is state


# -- each transition -----------------------------------------------------------------------------


def test_first_connection_calls_start() -> None:
    lifecycle = make()
    lifecycle.connected(1, 1.0)
    assert lifecycle.state is State.STARTING
    assert drain(lifecycle) == [CallStart()]
    assert lifecycle.started_at == 1.0


def test_second_connection_while_starting_does_not_start_again() -> None:
    lifecycle = starting()
    lifecycle.connected(2, 1.5)
    assert drain(lifecycle) == []
    assert lifecycle.connections == {1, 2}


def test_start_succeeded_probes_readiness() -> None:
    lifecycle = starting()
    lifecycle.start_succeeded(HOST, PORT, 2.0)
    assert lifecycle.state is State.WAITING_READY
    assert drain(lifecycle) == [ProbeReady(HOST, PORT)]
    assert lifecycle.host_port == (HOST, PORT)


def test_ready_wakes_waiters() -> None:
    lifecycle = waiting_ready()
    lifecycle.ready(3.0)
    assert lifecycle.state is State.RUNNING
    assert drain(lifecycle) == [SessionReady(HOST, PORT)]
    assert lifecycle.ready_at == 3.0


def test_connection_to_a_running_session_calls_nothing() -> None:
    lifecycle = running()
    lifecycle.connected(2, 4.0)
    lifecycle.disconnected(1, 4.5)
    assert drain(lifecycle) == []
    assert lifecycle.state is State.RUNNING


def test_every_state_change_is_persisted() -> None:
    lifecycle = make()
    lifecycle.connected(1, 1.0)
    assert Persist() in lifecycle.actions_to_run()
    lifecycle.connected(2, 1.5)
    assert lifecycle.actions_to_run() == []


def test_actions_are_drained_once() -> None:
    lifecycle = make()
    lifecycle.connected(1, 1.0)
    assert lifecycle.actions_to_run()
    assert lifecycle.actions_to_run() == []


@pytest.mark.parametrize(
    ("state", "accepts", "live"),
    [
        (State.RESERVED, True, True),
        (State.STARTING, True, True),
        (State.WAITING_READY, True, True),
        (State.RUNNING, True, True),
        (State.CANCELLING, False, True),
        (State.STOPPING, False, True),
        (State.ENDED, False, False),
    ],
)
def test_state_properties(state: State, accepts: bool, live: bool) -> None:
    lifecycle = BUILDERS[state]()
    assert lifecycle.accepts_connections is accepts
    assert lifecycle.is_live is live
    assert lifecycle.is_ending is (state in (State.CANCELLING, State.STOPPING, State.ENDED))


# -- each end reason -----------------------------------------------------------------------------


def test_released_before_anyone_connected_ends_without_stop() -> None:
    lifecycle = make()
    assert lifecycle.release(EndReason.RELEASED, 5.0) is True
    assert lifecycle.state is State.ENDED
    assert drain(lifecycle) == [
        CloseConnections(EndReason.RELEASED, "the session was released"),
        Ended(EndReason.RELEASED),
    ]
    assert lifecycle.ended_at == 5.0


def test_released_while_running_stops_then_ends() -> None:
    lifecycle = running()
    assert lifecycle.release(EndReason.RELEASED, 5.0) is True
    assert lifecycle.state is State.STOPPING
    assert drain(lifecycle) == [
        CloseConnections(EndReason.RELEASED, "the session was released"),
        CallStop(),
    ]
    lifecycle.stop_returned(6.0)
    assert lifecycle.state is State.ENDED
    assert drain(lifecycle) == [Ended(EndReason.RELEASED)]
    assert (lifecycle.end_reason, lifecycle.message) == (
        EndReason.RELEASED,
        "the session was released",
    )
    assert lifecycle.stop_timed_out is False


def test_release_message_can_be_given() -> None:
    lifecycle = running()
    lifecycle.release(EndReason.RELEASED, 5.0, "user clicked End")
    assert drain(lifecycle)[0] == CloseConnections(EndReason.RELEASED, "user clicked End")
    assert lifecycle.message == "user clicked End"


def test_released_while_waiting_ready_fails_waiters_and_stops() -> None:
    lifecycle = waiting_ready()
    lifecycle.release(EndReason.RELEASED, 5.0)
    assert lifecycle.state is State.STOPPING
    assert drain(lifecycle) == [
        SessionFailed(EndReason.RELEASED, "the session was released"),
        CloseConnections(EndReason.RELEASED, "the session was released"),
        CallStop(),
    ]


def test_released_while_starting_waits_for_start_then_stops() -> None:
    lifecycle = starting()
    lifecycle.release(EndReason.RELEASED, 5.0)
    assert lifecycle.state is State.CANCELLING
    assert drain(lifecycle) == [
        SessionFailed(EndReason.RELEASED, "the session was released"),
        CloseConnections(EndReason.RELEASED, "the session was released"),
    ]
    lifecycle.start_succeeded(HOST, PORT, 7.0)
    assert lifecycle.state is State.STOPPING
    assert drain(lifecycle) == [CallStop()]
    assert lifecycle.host_port is None


def test_disconnected_after_linger() -> None:
    lifecycle = running()
    lifecycle.disconnected(1, 20.0)
    assert drain(lifecycle) == []
    assert lifecycle.next_deadline() == 30.0
    lifecycle.tick(29.999)
    assert lifecycle.state is State.RUNNING
    lifecycle.tick(30.0)
    assert lifecycle.state is State.STOPPING
    assert drain(lifecycle) == [
        CloseConnections(EndReason.DISCONNECTED, "the last viewer disconnected"),
        CallStop(),
    ]
    lifecycle.stop_returned(31.0)
    assert drain(lifecycle) == [Ended(EndReason.DISCONNECTED)]


def test_reconnecting_within_linger_keeps_the_session() -> None:
    lifecycle = running()
    lifecycle.disconnected(1, 20.0)
    lifecycle.connected(2, 25.0)
    assert lifecycle.next_deadline() is None
    lifecycle.tick(1000.0)
    assert lifecycle.state is State.RUNNING
    assert drain(lifecycle) == []


def test_linger_counts_from_ready_when_every_viewer_left_while_starting() -> None:
    lifecycle = starting()
    lifecycle.disconnected(1, 1.5)
    lifecycle.start_succeeded(HOST, PORT, 2.0)
    lifecycle.ready(50.0)
    drain(lifecycle)
    assert lifecycle.next_deadline() == 60.0
    lifecycle.tick(59.0)
    assert lifecycle.state is State.RUNNING
    lifecycle.tick(60.0)
    assert lifecycle.end_reason is EndReason.DISCONNECTED


def test_reservation_timeout() -> None:
    lifecycle = make()
    assert lifecycle.next_deadline() == 300.0
    lifecycle.tick(299.0)
    assert lifecycle.state is State.RESERVED
    lifecycle.tick(300.0)
    assert lifecycle.state is State.ENDED
    message = "nobody connected within 300 s"
    assert drain(lifecycle) == [
        CloseConnections(EndReason.RESERVATION_TIMEOUT, message),
        Ended(EndReason.RESERVATION_TIMEOUT),
    ]
    assert lifecycle.message == message
    assert lifecycle.next_deadline() is None


@pytest.mark.parametrize(
    "message",
    [
        "start() returned False",
        "start() raised RuntimeError: boom",
        "start() returned True but did not call set_host_port()",
    ],
)
def test_start_failed_stops(message: str) -> None:
    lifecycle = starting()
    lifecycle.start_failed(message, 2.0)
    assert lifecycle.state is State.STOPPING
    assert drain(lifecycle) == [
        SessionFailed(EndReason.START_FAILED, message),
        CloseConnections(EndReason.START_FAILED, message),
        CallStop(),
    ]
    lifecycle.stop_returned(3.0)
    assert drain(lifecycle) == [Ended(EndReason.START_FAILED)]
    assert lifecycle.message == message


def test_start_timeout_waits_for_start_to_return() -> None:
    lifecycle = starting()
    assert lifecycle.next_deadline() == T_CONNECT + 120
    lifecycle.tick(T_CONNECT + 119)
    assert lifecycle.state is State.STARTING
    lifecycle.tick(T_CONNECT + 120)
    assert lifecycle.state is State.CANCELLING
    message = "start() did not finish within 120 s"
    assert drain(lifecycle) == [
        SessionFailed(EndReason.START_TIMEOUT, message),
        CloseConnections(EndReason.START_TIMEOUT, message),
    ]
    # No deadline: stop() must not run while start() still does, however long it takes.
    assert lifecycle.next_deadline() is None
    lifecycle.tick(10_000.0)
    assert drain(lifecycle) == []
    lifecycle.start_failed("start() returned False", 10_001.0)
    assert lifecycle.state is State.STOPPING
    assert drain(lifecycle) == [CallStop()]
    # The first reason stays.
    assert (lifecycle.end_reason, lifecycle.message) == (EndReason.START_TIMEOUT, message)
    lifecycle.stop_returned(10_002.0)
    assert drain(lifecycle) == [Ended(EndReason.START_TIMEOUT)]


def test_readiness_timeout_is_a_start_failure() -> None:
    lifecycle = waiting_ready()
    assert lifecycle.next_deadline() == T_STARTED + 30
    lifecycle.tick(T_STARTED + 29.5)
    assert lifecycle.state is State.WAITING_READY
    lifecycle.tick(T_STARTED + 30)
    message = "VNC server did not accept connections within 30 s"
    assert lifecycle.state is State.STOPPING
    assert drain(lifecycle) == [
        SessionFailed(EndReason.START_FAILED, message),
        CloseConnections(EndReason.START_FAILED, message),
        CallStop(),
    ]
    assert (lifecycle.end_reason, lifecycle.message) == (EndReason.START_FAILED, message)


def test_idle_timeout() -> None:
    lifecycle = running(idle=50)
    assert lifecycle.next_deadline() == T_READY + 50
    lifecycle.activity(40.0)
    assert lifecycle.next_deadline() == 90.0
    lifecycle.tick(T_READY + 50)
    assert lifecycle.state is State.RUNNING
    lifecycle.tick(90.0)
    message = "no input for 50 s"
    assert drain(lifecycle) == [CloseConnections(EndReason.IDLE_TIMEOUT, message), CallStop()]
    assert lifecycle.end_reason is EndReason.IDLE_TIMEOUT


def test_activity_never_moves_back() -> None:
    lifecycle = running(idle=50)
    lifecycle.activity(40.0)
    lifecycle.activity(20.0)
    assert lifecycle.last_activity == 40.0


def test_max_lifetime_ignores_activity() -> None:
    lifecycle = running(max_lifetime=100)
    assert lifecycle.next_deadline() == T_READY + 100
    lifecycle.activity(T_READY + 99)
    lifecycle.tick(T_READY + 100)
    message = "the session reached its maximum lifetime of 100 s"
    assert drain(lifecycle) == [CloseConnections(EndReason.MAX_LIFETIME, message), CallStop()]


def test_earliest_of_idle_and_max_lifetime_fires() -> None:
    lifecycle = running(idle=50, max_lifetime=30)
    assert lifecycle.next_deadline() == T_READY + 30
    lifecycle.tick(T_READY + 30)
    assert lifecycle.end_reason is EndReason.MAX_LIFETIME


@pytest.mark.parametrize(
    ("reason", "message"),
    [
        (EndReason.TERMINATED, "session ended by administrator"),
        (EndReason.SHUTDOWN, "the gateway is shutting down"),
    ],
)
def test_terminated_and_shutdown(reason: EndReason, message: str) -> None:
    lifecycle = running()
    assert lifecycle.release(reason, 5.0)
    assert drain(lifecycle) == [CloseConnections(reason, message), CallStop()]
    lifecycle.stop_returned(6.0)
    assert drain(lifecycle) == [Ended(reason)]
    assert (lifecycle.end_reason, lifecycle.message) == (reason, message)


def test_crashed() -> None:
    lifecycle = running()
    lifecycle.crashed("Xvnc exited with status 1", 5.0)
    assert lifecycle.state is State.STOPPING
    assert drain(lifecycle) == [
        CloseConnections(EndReason.CRASHED, "Xvnc exited with status 1"),
        CallStop(),
    ]
    lifecycle.stop_returned(6.0)
    assert drain(lifecycle) == [Ended(EndReason.CRASHED)]


def test_stop_timeout_frees_the_index_and_flags_the_session() -> None:
    lifecycle = stopping()
    assert lifecycle.next_deadline() == 5.0 + 60
    lifecycle.tick(64.0)
    assert lifecycle.state is State.STOPPING
    lifecycle.tick(65.0)
    assert lifecycle.state is State.ENDED
    assert lifecycle.stop_timed_out is True
    assert drain(lifecycle) == [Ended(EndReason.RELEASED)]
    assert lifecycle.end_reason is EndReason.RELEASED
    # stop() returning late is no input the machine takes any more.
    with pytest.raises(IllegalTransition):
        lifecycle.stop_returned(70.0)


def test_release_while_ending_has_no_effect() -> None:
    lifecycle = stopping()
    assert lifecycle.release(EndReason.TERMINATED, 5.5) is False
    assert drain(lifecycle) == []
    assert lifecycle.end_reason is EndReason.RELEASED
    lifecycle = ended()
    assert lifecycle.release(EndReason.SHUTDOWN, 7.0) is False
    assert drain(lifecycle) == []


def test_late_disconnect_after_end_is_accepted() -> None:
    lifecycle = stopping()
    lifecycle.stop_returned(6.0)
    drain(lifecycle)
    lifecycle.disconnected(1, 7.0)
    assert drain(lifecycle) == []
    assert lifecycle.connections == set()


# -- sessions adopted after a restart ------------------------------------------------------------


def test_adopted_reservation_keeps_its_deadline() -> None:
    lifecycle = SessionLifecycle.adopt_reserved(
        now=100.0, timeouts=TIMEOUTS, label="Test#0", deadline=150.0
    )
    assert (lifecycle.state, lifecycle.next_deadline()) == (State.RESERVED, 150.0)
    assert drain(lifecycle) == []
    lifecycle.tick(149.0)
    assert lifecycle.state is State.RESERVED
    lifecycle.tick(150.0)
    assert lifecycle.end_reason is EndReason.RESERVATION_TIMEOUT
    assert drain(lifecycle)[-1] == Ended(EndReason.RESERVATION_TIMEOUT)


def test_adopted_reservation_past_its_deadline_ends_at_the_first_tick() -> None:
    lifecycle = SessionLifecycle.adopt_reserved(
        now=100.0, timeouts=TIMEOUTS, label="Test#0", deadline=90.0
    )
    lifecycle.tick(100.0)
    assert lifecycle.state is State.ENDED


def test_adopted_reservation_starts_on_connect() -> None:
    lifecycle = SessionLifecycle.adopt_reserved(
        now=100.0, timeouts=TIMEOUTS, label="Test#0", deadline=150.0
    )
    lifecycle.connected(1, 101.0)
    assert drain(lifecycle) == [CallStart()]
    assert lifecycle.next_deadline() == 101.0 + 120


def test_adopted_running_session_lingers_until_a_viewer_returns() -> None:
    lifecycle = SessionLifecycle.adopt_running(
        now=100.0,
        timeouts=TIMEOUTS,
        label="Test#0",
        host=HOST,
        port=PORT,
        ready_at=40.0,
        last_activity=60.0,
    )
    assert lifecycle.state is State.RUNNING
    assert (lifecycle.host_port, lifecycle.ready_at, lifecycle.last_activity) == (
        (HOST, PORT),
        40.0,
        60.0,
    )
    assert drain(lifecycle) == []
    assert lifecycle.next_deadline() == 110.0
    lifecycle.connected(1, 105.0)
    lifecycle.tick(110.0)
    assert lifecycle.state is State.RUNNING
    lifecycle.disconnected(1, 120.0)
    lifecycle.tick(130.0)
    assert lifecycle.end_reason is EndReason.DISCONNECTED
    assert drain(lifecycle)[-1] == CallStop()


def test_adopted_running_session_keeps_its_lifetime_and_idle_clocks() -> None:
    timeouts = Timeouts(linger=1000, idle=50, max_lifetime=100)
    lifecycle = SessionLifecycle.adopt_running(
        now=100.0,
        timeouts=timeouts,
        label="Test#0",
        host=HOST,
        port=PORT,
        ready_at=40.0,
        last_activity=20.0,  # before ready_at: counts from ready_at
    )
    assert lifecycle.last_activity == 40.0
    # Both limits passed during the restart: the idle timeout is checked first.
    assert lifecycle.next_deadline() == 90.0
    lifecycle.tick(100.0)
    assert lifecycle.end_reason is EndReason.IDLE_TIMEOUT


def test_adopted_interrupted_session_is_stopped() -> None:
    lifecycle = SessionLifecycle.adopt_interrupted(
        now=100.0,
        timeouts=TIMEOUTS,
        label="Test#0",
        reason=EndReason.CRASHED,
        message="the gateway restarted while start() ran",
    )
    assert lifecycle.state is State.STOPPING
    assert lifecycle.actions_to_run() == [CallStop()]
    assert (lifecycle.end_reason, lifecycle.message) == (
        EndReason.CRASHED,
        "the gateway restarted while start() ran",
    )
    assert lifecycle.next_deadline() == 160.0
    lifecycle.stop_returned(101.0)
    assert drain(lifecycle) == [Ended(EndReason.CRASHED)]


# -- what a viewer is warned about ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("timeouts", "expected"),
    [
        ({}, None),
        ({"idle": 50}, (T_READY + 50, EndReason.IDLE_TIMEOUT)),
        ({"max_lifetime": 100}, (T_READY + 100, EndReason.MAX_LIFETIME)),
        ({"idle": 50, "max_lifetime": 30}, (T_READY + 30, EndReason.MAX_LIFETIME)),
        ({"idle": 30, "max_lifetime": 50}, (T_READY + 30, EndReason.IDLE_TIMEOUT)),
    ],
)
def test_timeout_deadline_of_a_running_session(
    timeouts: dict[str, float], expected: tuple[float, EndReason] | None
) -> None:
    assert running(**timeouts).timeout_deadline() == expected


def test_timeout_deadline_follows_activity() -> None:
    lifecycle = running(idle=50)
    lifecycle.activity(20.0)
    assert lifecycle.timeout_deadline() == (70.0, EndReason.IDLE_TIMEOUT)


@pytest.mark.parametrize("state", [s for s in State if s is not State.RUNNING])
def test_timeout_deadline_only_while_running(state: State) -> None:
    assert BUILDERS[state](idle=50, max_lifetime=100).timeout_deadline() is None


# -- illegal inputs ------------------------------------------------------------------------------


def _connect_new(lifecycle: SessionLifecycle, now: float) -> None:
    lifecycle.connected(99, now)


ILLEGAL: list[tuple[str, State, Callable[[SessionLifecycle, float], object]]] = [
    ("ready", State.RESERVED, lambda lc, t: lc.ready(t)),
    ("ready", State.STARTING, lambda lc, t: lc.ready(t)),
    ("ready", State.RUNNING, lambda lc, t: lc.ready(t)),
    ("ready", State.STOPPING, lambda lc, t: lc.ready(t)),
    ("start_succeeded", State.RESERVED, lambda lc, t: lc.start_succeeded(HOST, PORT, t)),
    ("start_succeeded", State.WAITING_READY, lambda lc, t: lc.start_succeeded(HOST, PORT, t)),
    ("start_succeeded", State.RUNNING, lambda lc, t: lc.start_succeeded(HOST, PORT, t)),
    ("start_succeeded", State.STOPPING, lambda lc, t: lc.start_succeeded(HOST, PORT, t)),
    ("start_succeeded", State.ENDED, lambda lc, t: lc.start_succeeded(HOST, PORT, t)),
    ("start_failed", State.RESERVED, lambda lc, t: lc.start_failed("x", t)),
    ("start_failed", State.RUNNING, lambda lc, t: lc.start_failed("x", t)),
    ("start_failed", State.ENDED, lambda lc, t: lc.start_failed("x", t)),
    ("stop_returned", State.RESERVED, lambda lc, t: lc.stop_returned(t)),
    ("stop_returned", State.RUNNING, lambda lc, t: lc.stop_returned(t)),
    ("stop_returned", State.CANCELLING, lambda lc, t: lc.stop_returned(t)),
    ("stop_returned", State.ENDED, lambda lc, t: lc.stop_returned(t)),
    ("crashed", State.STARTING, lambda lc, t: lc.crashed("x", t)),
    ("crashed", State.WAITING_READY, lambda lc, t: lc.crashed("x", t)),
    ("crashed", State.STOPPING, lambda lc, t: lc.crashed("x", t)),
    ("crashed", State.ENDED, lambda lc, t: lc.crashed("x", t)),
    ("connected", State.CANCELLING, _connect_new),
    ("connected", State.STOPPING, _connect_new),
    ("connected", State.ENDED, _connect_new),
    ("connected twice", State.RUNNING, lambda lc, t: lc.connected(1, t)),
    ("disconnected unknown", State.RUNNING, lambda lc, t: lc.disconnected(42, t)),
    ("disconnected unknown", State.RESERVED, lambda lc, t: lc.disconnected(42, t)),
]


@pytest.mark.parametrize(
    ("state", "feed"),
    [(state, feed) for _, state, feed in ILLEGAL],
    ids=[f"{name}-in-{state.value}" for name, state, _ in ILLEGAL],
)
def test_illegal_input_raises_and_changes_nothing(
    state: State, feed: Callable[[SessionLifecycle, float], object]
) -> None:
    lifecycle = BUILDERS[state]()
    before = (lifecycle.state, set(lifecycle.connections), lifecycle.end_reason)
    with pytest.raises(IllegalTransition, match=f"Test#0: .* in state {state.value}"):
        feed(lifecycle, 8.0)
    assert (lifecycle.state, lifecycle.connections, lifecycle.end_reason) == before
    assert lifecycle.actions_to_run() == []


@pytest.mark.parametrize(
    "reason",
    [r for r in EndReason if r not in _RELEASE_REASONS],
)
def test_release_rejects_reasons_the_machine_decides(reason: EndReason) -> None:
    lifecycle = running()
    with pytest.raises(ValueError, match="release"):
        lifecycle.release(reason, 5.0)
    assert lifecycle.state is State.RUNNING
    assert drain(lifecycle) == []


def test_transitions_are_logged_with_the_label(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG", logger="vizgate.lifecycle")
    lifecycle = make()
    lifecycle.connected(1, 1.0)
    assert "Test#0: reserved -> starting" in caplog.messages


# -- next_deadline per state ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "deadline"),
    [
        (State.RESERVED, 300.0),
        (State.STARTING, T_CONNECT + 120),
        (State.WAITING_READY, T_STARTED + 30),
        (State.RUNNING, None),
        (State.CANCELLING, None),
        (State.STOPPING, 5.0 + 60),
        (State.ENDED, None),
    ],
)
def test_next_deadline(state: State, deadline: float | None) -> None:
    assert BUILDERS[state](**TIMEOUTS.__dict__).next_deadline() == deadline


# -- random sequences against a simulated driver -----------------------------------------------

# Round values make coincident deadlines likely; random ones find the rest.
_seconds = st.sampled_from([0.0, 1.0, 5.0, 30.0, 120.0]) | st.floats(
    min_value=0.0, max_value=200.0, allow_nan=False, allow_infinity=False
)
_timeouts = st.builds(
    Timeouts,
    reservation=_seconds,
    start=_seconds,
    ready=_seconds,
    linger=_seconds,
    idle=st.none() | _seconds,
    max_lifetime=st.none() | _seconds,
    # A stop timeout of 0 would leave a deadline equal to "now" after a tick; the broker's
    # catalog offers no way to configure one.
    stop=st.sampled_from([1.0, 30.0])
    | st.floats(min_value=0.001, max_value=200.0, allow_nan=False, allow_infinity=False),
)


def adopt(
    origin: str, timeouts: Timeouts, now: float, earlier: float, later: float
) -> SessionLifecycle:
    """A session as a restarted gateway adopts it at ``now``; times before it come from
    ``earlier`` and a reservation's deadline may lie before or after it."""
    if origin == "adopt_reserved":
        return SessionLifecycle.adopt_reserved(
            now=now, timeouts=timeouts, label="Prop#0", deadline=now - earlier + later
        )
    if origin == "adopt_running":
        ready_at = now - earlier
        return SessionLifecycle.adopt_running(
            now=now,
            timeouts=timeouts,
            label="Prop#0",
            host=HOST,
            port=PORT,
            ready_at=ready_at,
            last_activity=ready_at + min(later, earlier),
        )
    return SessionLifecycle.adopt_interrupted(
        now=now,
        timeouts=timeouts,
        label="Prop#0",
        reason=EndReason.CRASHED,
        message="the gateway restarted while start() ran",
    )


class LifecycleWithDriver(RuleBasedStateMachine):
    """Feeds one session random inputs as the broker would, and checks the promises.

    The simulated driver keeps what the broker keeps: the outstanding ``start()``, readiness
    probe and ``stop()`` the machine asked for, delivered at any later step, possibly after a
    timeout has fired meanwhile.
    """

    lifecycle: SessionLifecycle

    # Starting some runs further on spends the steps on what follows the happy path; the
    # adopt_* origins are sessions a restarted gateway took back from its store.
    @initialize(
        timeouts=_timeouts,
        origin=st.sampled_from(
            [
                State.RESERVED,
                State.STARTING,
                State.WAITING_READY,
                State.RUNNING,
                "adopt_reserved",
                "adopt_running",
                "adopt_interrupted",
            ]
        ),
        restart_at=st.floats(min_value=0.0, max_value=500.0),
        earlier=st.floats(min_value=0.0, max_value=500.0),
        later=st.floats(min_value=0.0, max_value=500.0),
    )
    def reserve(
        self,
        timeouts: Timeouts,
        origin: State | str,
        restart_at: float,
        earlier: float,
        later: float,
    ) -> None:
        self.now = 0.0
        # No tick yet: an adopted session's deadline may already lie in the past.
        self.last_tick = -math.inf
        self.viewers: set[int] = set()
        self.next_viewer = 1
        self.start_outstanding = False
        self.probe_outstanding = False
        self.stop_outstanding = False
        self.count: dict[type[Action], int] = {}
        # A session adopted after start() ran had its waiters in the previous process.
        self.adopted_after_start = origin in ("adopt_running", "adopt_interrupted")
        if isinstance(origin, State):
            self.lifecycle = SessionLifecycle(now=0.0, timeouts=timeouts, label="Prop#0")
        else:
            self.now = restart_at
            self.lifecycle = adopt(origin, timeouts, restart_at, earlier, later)
        if self.adopted_after_start:
            self.count[CallStart] = 1
            if origin == "adopt_interrupted":
                self.count[CloseConnections] = 1
        self.absorb()
        if origin in (State.STARTING, State.WAITING_READY, State.RUNNING):
            self.connect()
        if origin in (State.WAITING_READY, State.RUNNING):
            self.start_returns(ok=True, port=PORT)
        if origin is State.RUNNING:
            self.probe_succeeds()
        if isinstance(origin, State):
            assert self.lifecycle.state is origin

    # -- the driver --------------------------------------------------------------------------

    def emitted(self, kind: type[Action]) -> int:
        return self.count.get(kind, 0)

    def absorb(self) -> None:
        """Drain the actions and check each against what came before."""
        lifecycle = self.lifecycle
        actions = lifecycle.actions_to_run()
        for position, action in enumerate(actions):
            assert self.emitted(Ended) == 0, f"{action} after Ended"
            kind = type(action)
            if isinstance(action, CallStart):
                assert self.emitted(CallStart) == 0, "start() called twice"
                self.start_outstanding = True
            elif isinstance(action, ProbeReady):
                assert self.emitted(ProbeReady) == 0
                assert (action.host, action.port) == lifecycle.host_port
                self.probe_outstanding = True
            elif isinstance(action, CallStop):
                assert self.emitted(CallStart) == 1, "stop() of a session that never started"
                assert not self.start_outstanding, "stop() while start() still runs"
                assert self.emitted(CallStop) == 0, "stop() called twice"
                self.stop_outstanding = True
            elif isinstance(action, SessionReady | SessionFailed):
                assert self.emitted(SessionReady) + self.emitted(SessionFailed) == 0
                if isinstance(action, SessionFailed):
                    assert action.reason is lifecycle.end_reason
            elif isinstance(action, CloseConnections):
                assert self.emitted(CloseConnections) == 0
                assert action.reason is lifecycle.end_reason
                assert action.message == lifecycle.message
            elif isinstance(action, Ended):
                assert position == len(actions) - 1, "Ended is not the last action"
                assert lifecycle.state is State.ENDED
                assert action.reason is lifecycle.end_reason
            self.count[kind] = self.emitted(kind) + 1

    def pass_time(self, now: float) -> None:
        self.now = now
        self.lifecycle.tick(now)
        self.last_tick = now
        deadline = self.lifecycle.next_deadline()
        # A driver sleeps until the next deadline; one not after "now" would make it spin.
        assert deadline is None or deadline > now, (deadline, now, self.lifecycle.state)
        self.absorb()

    # -- inputs ------------------------------------------------------------------------------

    @precondition(lambda self: self.lifecycle.accepts_connections)
    @rule()
    def connect(self) -> None:
        viewer, self.next_viewer = self.next_viewer, self.next_viewer + 1
        self.lifecycle.connected(viewer, self.now)
        self.viewers.add(viewer)
        self.absorb()

    @precondition(lambda self: not self.lifecycle.accepts_connections)
    @rule()
    def connect_refused(self) -> None:
        state = self.lifecycle.state
        try:
            self.lifecycle.connected(self.next_viewer, self.now)
        except IllegalTransition:
            pass
        else:
            raise AssertionError(f"connected accepted in state {state.value}")
        assert self.lifecycle.state is state
        assert self.next_viewer not in self.lifecycle.connections
        self.absorb()

    @precondition(lambda self: bool(self.viewers))
    @rule(data=st.data())
    def disconnect(self, data: st.DataObject) -> None:
        viewer = data.draw(st.sampled_from(sorted(self.viewers)))
        self.viewers.discard(viewer)
        self.lifecycle.disconnected(viewer, self.now)
        self.absorb()

    @rule()
    def disconnect_unknown(self) -> None:
        try:
            self.lifecycle.disconnected(-1, self.now)
        except IllegalTransition:
            pass
        else:
            raise AssertionError("disconnected accepted an unknown connection")
        self.absorb()

    @rule()
    def activity(self) -> None:
        self.lifecycle.activity(self.now)
        self.absorb()

    @precondition(lambda self: self.start_outstanding)
    @rule(ok=st.booleans(), port=st.integers(min_value=1, max_value=65535))
    def start_returns(self, ok: bool, port: int) -> None:
        self.start_outstanding = False
        if ok:
            self.lifecycle.start_succeeded(HOST, port, self.now)
        else:
            self.lifecycle.start_failed("start() returned False", self.now)
        self.absorb()

    @precondition(lambda self: self.probe_outstanding)
    @rule()
    def probe_succeeds(self) -> None:
        # As the broker: a probe whose session moved on gives up instead of reporting.
        self.probe_outstanding = False
        if self.lifecycle.state is State.WAITING_READY:
            self.lifecycle.ready(self.now)
        self.absorb()

    @precondition(lambda self: self.stop_outstanding)
    @rule()
    def stop_returns(self) -> None:
        # As the broker: a stop() that overran its timeout is only logged.
        self.stop_outstanding = False
        if self.lifecycle.state is State.STOPPING:
            self.lifecycle.stop_returned(self.now)
        self.absorb()

    @rule(reason=st.sampled_from(_RELEASE_REASONS))
    def release(self, reason: EndReason) -> None:
        was_ending = self.lifecycle.is_ending
        before = self.lifecycle.end_reason
        changed = self.lifecycle.release(reason, self.now)
        assert changed is not was_ending
        assert self.lifecycle.end_reason is (reason if changed else before)
        self.absorb()

    @rule(reason=st.sampled_from([r for r in EndReason if r not in _RELEASE_REASONS]))
    def release_with_a_machine_reason(self, reason: EndReason) -> None:
        state = self.lifecycle.state
        try:
            self.lifecycle.release(reason, self.now)
        except ValueError:
            pass
        else:
            raise AssertionError(f"release accepted {reason}")
        assert self.lifecycle.state is state
        self.absorb()

    @precondition(lambda self: self.lifecycle.state is State.RUNNING)
    @rule()
    def crash(self) -> None:
        self.lifecycle.crashed("the VNC server exited", self.now)
        self.absorb()

    @rule(
        which=st.sampled_from(["ready", "start_succeeded", "start_failed", "stop", "crashed"]),
    )
    def illegal_input(self, which: str) -> None:
        lifecycle = self.lifecycle
        state = lifecycle.state
        feeds: dict[str, tuple[bool, Callable[[], object]]] = {
            "ready": (
                state is not State.WAITING_READY,
                lambda: lifecycle.ready(self.now),
            ),
            "start_succeeded": (
                state not in (State.STARTING, State.CANCELLING),
                lambda: lifecycle.start_succeeded(HOST, PORT, self.now),
            ),
            "start_failed": (
                state not in (State.STARTING, State.CANCELLING),
                lambda: lifecycle.start_failed("x", self.now),
            ),
            "stop": (state is not State.STOPPING, lambda: lifecycle.stop_returned(self.now)),
            "crashed": (state is not State.RUNNING, lambda: lifecycle.crashed("x", self.now)),
        }
        illegal, feed = feeds[which]
        if not illegal:
            return
        try:
            feed()
        except IllegalTransition:
            pass
        else:
            raise AssertionError(f"{which} accepted in state {state.value}")
        assert lifecycle.state is state
        assert lifecycle.actions_to_run() == []

    # Short steps, so that things happen between timeouts; tick_to_deadline makes the jumps.
    @rule(seconds=st.floats(min_value=0.0, max_value=10.0, allow_nan=False))
    def tick(self, seconds: float) -> None:
        self.pass_time(self.now + seconds)

    @precondition(lambda self: self.lifecycle.next_deadline() is not None)
    @rule(early=st.booleans())
    def tick_to_deadline(self, early: bool) -> None:
        deadline = self.lifecycle.next_deadline()
        assert deadline is not None
        target = max(self.now, deadline)
        # Just before the deadline nothing fires (when floats leave room for "just before").
        before = max(self.now, target - min(1e-3, (target - self.now) / 2))
        if early and before < target:
            state = self.lifecycle.state
            self.pass_time(before)
            assert self.lifecycle.state is state
        self.pass_time(target)

    # -- invariants --------------------------------------------------------------------------

    @invariant()
    def ended_exactly_when_ended_state(self) -> None:
        lifecycle = self.lifecycle
        assert (lifecycle.state is State.ENDED) == (self.emitted(Ended) == 1)
        if lifecycle.state is State.ENDED:
            assert lifecycle.end_reason is not None
            assert lifecycle.ended_at is not None
            assert lifecycle.next_deadline() is None

    @invariant()
    def end_reason_iff_ending(self) -> None:
        lifecycle = self.lifecycle
        assert lifecycle.is_ending == (lifecycle.end_reason is not None)
        if lifecycle.end_reason is None:
            assert lifecycle.accepts_connections
        else:
            assert not lifecycle.accepts_connections
            assert self.emitted(CloseConnections) == 1

    @invariant()
    def stop_follows_start_only(self) -> None:
        assert self.emitted(CallStop) <= self.emitted(CallStart) <= 1

    @invariant()
    def outstanding_work_matches_state(self) -> None:
        state = self.lifecycle.state
        if self.start_outstanding:
            assert state in (State.STARTING, State.CANCELLING)
        if state in (State.STARTING, State.CANCELLING):
            # Nothing else would ever move a cancelled session on.
            assert self.start_outstanding
        if state is State.STOPPING:
            assert self.stop_outstanding or self.lifecycle.next_deadline() is not None
        if state is State.WAITING_READY:
            assert self.probe_outstanding

    @invariant()
    def deadlines_never_lie_behind_the_last_tick(self) -> None:
        deadline = self.lifecycle.next_deadline()
        assert deadline is None or deadline >= self.last_tick

    @invariant()
    def the_machine_sees_the_driver_connections(self) -> None:
        assert self.lifecycle.connections == self.viewers

    def teardown(self) -> None:
        if not hasattr(self, "lifecycle"):
            return
        lifecycle = self.lifecycle
        for _ in range(20):
            if lifecycle.state is State.ENDED:
                break
            for viewer in sorted(self.viewers):
                self.viewers.discard(viewer)
                lifecycle.disconnected(viewer, self.now)
            if self.start_outstanding:
                self.start_returns(ok=True, port=PORT)
            if self.probe_outstanding:
                self.probe_succeeds()
            if self.stop_outstanding:
                self.stop_returns()
            deadline = lifecycle.next_deadline()
            if deadline is not None:
                self.pass_time(max(self.now, deadline))
            self.absorb()
        assert lifecycle.state is State.ENDED, lifecycle.state
        assert lifecycle.end_reason is not None
        event(f"ended: {lifecycle.end_reason.value}")
        if lifecycle.stop_timed_out:
            event("stop timed out")
        assert self.emitted(Ended) == 1
        assert self.emitted(CallStop) == self.emitted(CallStart)
        # Every attach that waited was woken exactly once, with success or failure.
        if self.emitted(CallStart) and not self.adopted_after_start:
            assert self.emitted(SessionReady) + self.emitted(SessionFailed) == 1
        assert lifecycle.actions_to_run() == []


LifecycleWithDriver.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_lifecycle_with_a_driver = LifecycleWithDriver.TestCase


def test_a_types_options_override_the_servers_timeouts() -> None:
    server = Timeouts(reservation=300, start=120, ready=30, linger=10, idle=600, stop=60)
    assert server.with_options({}) == server
    typed = server.with_options(
        {"start_timeout": 5, "ready_timeout": "7.5", "linger": 0, "max_lifetime": 3600}
    )
    assert typed == Timeouts(
        reservation=300, start=5, ready=7.5, linger=0, idle=600, max_lifetime=3600, stop=60
    )
    # For the limits an admin switches on, 0 switches the server's limit off for the type.
    assert server.with_options({"idle_timeout": 0}).idle is None
    assert server.with_options({"idle_timeout": 90}).idle == 90
