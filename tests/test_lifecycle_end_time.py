"""A session whose script reported when it will end (:meth:`SessionLifecycle.end_by`, a batch
job's time limit): the lifecycle warns about it like a maximum lifetime and ends the session
then, with the reason ``time_limit``."""

from __future__ import annotations

from test_lifecycle import T_READY, drain, running, waiting_ready
from vizgate.lifecycle import CallStop, CloseConnections, EndReason, State


def test_the_end_is_the_deadline_viewers_are_warned_about() -> None:
    lifecycle = running(idle=600.0, max_lifetime=300.0)
    lifecycle.end_by(T_READY + 100)
    assert lifecycle.timeout_deadline() == (T_READY + 100, EndReason.TIME_LIMIT)
    assert lifecycle.next_deadline() == T_READY + 100
    # A sooner limit of the gateway's own comes first.
    lifecycle = running(max_lifetime=50.0)
    lifecycle.end_by(T_READY + 100)
    assert lifecycle.timeout_deadline() == (T_READY + 50, EndReason.MAX_LIFETIME)


def test_the_sooner_of_two_ends_counts() -> None:
    lifecycle = running()
    lifecycle.end_by(T_READY + 100)
    lifecycle.end_by(T_READY + 80)
    lifecycle.end_by(T_READY + 90)
    assert lifecycle.timeout_deadline() == (T_READY + 80, EndReason.TIME_LIMIT)


def test_the_session_ends_at_its_end_with_the_time_limit_reason() -> None:
    lifecycle = running()
    lifecycle.connected(7, T_READY + 1)
    lifecycle.end_by(T_READY + 100)
    lifecycle.tick(T_READY + 99.9)
    assert lifecycle.state is State.RUNNING
    assert drain(lifecycle) == []
    lifecycle.tick(T_READY + 100)
    assert lifecycle.state is State.STOPPING
    assert lifecycle.end_reason is EndReason.TIME_LIMIT
    assert lifecycle.message == "the session's time limit was reached"
    assert drain(lifecycle) == [
        CloseConnections(EndReason.TIME_LIMIT, "the session's time limit was reached"),
        CallStop(),
    ]


def test_an_end_reported_before_the_session_runs_applies_once_it_runs() -> None:
    lifecycle = waiting_ready()
    lifecycle.end_by(T_READY + 100)
    # Not running yet: nothing to warn about.
    assert lifecycle.timeout_deadline() is None
    lifecycle.ready(T_READY)
    assert lifecycle.timeout_deadline() == (T_READY + 100, EndReason.TIME_LIMIT)
