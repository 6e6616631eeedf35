"""Restart re-adoption: what becomes of a session a previous gateway process left live.

A reservation keeps its deadline. A running session whose script's ``poll()`` does not say it is
dead and whose VNC server still answers runs on, with the linger starting now: its users
reconnect with the same token, or it is stopped when nobody does. Anything else (a ``start()`` or
``stop()`` the restart cut short, a server that no longer answers) is stopped.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

from vizgate.catalog import ServiceType
from vizgate.lifecycle import EndReason, SessionLifecycle, State, Timeouts
from vizgate.live import LiveSession
from vizgate.net import port_answers
from vizgate.script_hooks import load_script_state, poll_script
from vizgate.scripts import RemoteServiceScript
from vizgate.store import SessionRecord

__all__ = ["adopted_session", "left_the_catalog", "restored_lifecycle"]


def left_the_catalog(record: SessionRecord, wall: float) -> SessionRecord:
    """What is saved of a session whose type or index is no longer in the catalog: nothing can
    stop it now, so it ends flagged for an administrator to check by hand."""
    return replace(
        record,
        state=State.ENDED.value,
        ended=wall,
        end_reason=EndReason.CRASHED.value,
        message="its session type is no longer in the catalog",
        stop_timed_out=True,
    )


async def adopted_session(
    record: SessionRecord,
    service: ServiceType,
    script: RemoteServiceScript,
    timeouts: Timeouts,
    ready: asyncio.Future[tuple[str, int]],
    *,
    now: float,
    wall: float,
) -> LiveSession:
    """The live session a saved one becomes (see :func:`restored_lifecycle`).

    Args:
        record: the saved session.
        service: its session type; ``script`` the instance of its index.
        timeouts: the type's timeouts.
        ready: resolved here with host:port when the session runs on.
        now: the broker's monotonic clock now; ``wall`` the wall clock at the same moment.
    """
    label = f"{service.name}#{record.index}"
    lifecycle = await restored_lifecycle(record, script, timeouts, label, now=now, wall=wall)
    if lifecycle.state is State.RUNNING and lifecycle.host_port is not None:
        ready.set_result(lifecycle.host_port)
    return LiveSession(
        # The token is not saved, only its hash: a viewer who presents it makes it known again.
        token=None,
        token_hash=record.token_hash,
        id=record.id,
        service=service,
        index=record.index,
        script=script,
        user=record.user,
        options=dict(record.options),
        lifecycle=lifecycle,
        created=record.created,
        ready=ready,
        bound=record.bound,
        bytes_to_client=record.bytes_to_client,
        bytes_to_server=record.bytes_to_server,
        script_state=dict(record.script_state),
    )


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
            if record.ends_at is not None:
                lifecycle.end_by(monotonic(record.ends_at))
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
