"""Restart re-adoption: what becomes of a session a previous gateway process left live.

A reservation keeps its deadline. A running session whose script's ``poll()`` does not say it is
dead and whose VNC server still answers runs on, with the linger starting now: its users
reconnect with the same token, or it is stopped when nobody does. Anything else (a ``start()`` or
``stop()`` the restart cut short, a server that no longer answers) is stopped.
"""

from __future__ import annotations

import asyncio

from vizgate.lifecycle import EndReason, SessionLifecycle, State, Timeouts
from vizgate.net import port_answers
from vizgate.script_hooks import load_script_state, poll_script
from vizgate.scripts import RemoteServiceScript
from vizgate.store import SessionRecord

__all__ = ["restored_lifecycle"]


async def restored_lifecycle(
    record: SessionRecord,
    script: RemoteServiceScript,
    timeouts: Timeouts,
    label: str,
    *,
    now: float,
    wall: float,
) -> SessionLifecycle:
    """The lifecycle a saved session resumes with; ``script`` gets its saved state back.

    Args:
        record: the saved session.
        script: the instance of the session's index.
        timeouts: the session type's timeouts.
        label: how logs name the session.
        now: the broker's monotonic clock now; ``wall`` the wall clock at the same moment.
    """

    def monotonic(moment: float | None) -> float:
        return now - (wall - moment) if moment is not None else now

    if record.script_state:
        await asyncio.to_thread(load_script_state, script, record.script_state)
    if record.host is not None and record.port is not None:
        script.set_host_port(record.host, record.port)

    lifecycle: SessionLifecycle
    if record.state == State.RESERVED.value:
        lifecycle = SessionLifecycle.adopt_reserved(
            now=now,
            timeouts=timeouts,
            label=label,
            deadline=monotonic(record.created) + timeouts.reservation,
        )
    elif record.state == State.RUNNING.value and record.host and record.port:
        alive = await asyncio.to_thread(poll_script, script)
        answers = alive is not False and await port_answers(record.host, record.port)
        if answers:
            lifecycle = SessionLifecycle.adopt_running(
                now=now,
                timeouts=timeouts,
                label=label,
                host=record.host,
                port=record.port,
                ready_at=monotonic(record.started),
                last_activity=monotonic(record.last_activity),
            )
        else:
            lifecycle = SessionLifecycle.adopt_interrupted(
                now=now,
                timeouts=timeouts,
                label=label,
                reason=EndReason.CRASHED,
                message="the VNC server no longer answered after the gateway restarted",
            )
    else:
        reason = EndReason.START_FAILED
        if record.end_reason in {r.value for r in EndReason}:
            reason = EndReason(record.end_reason)
        lifecycle = SessionLifecycle.adopt_interrupted(
            now=now,
            timeouts=timeouts,
            label=label,
            reason=reason,
            message=record.message or "the gateway restarted while the session started",
        )
    return lifecycle
