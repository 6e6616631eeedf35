"""Running session scripts' blocking calls: one thread per call, one instance's calls in order.

:func:`call_start` and :func:`call_stop` make a session's calls and tell its lifecycle how they
went; the broker then carries out what the lifecycle asks for next.

Each call runs in a thread of its own that first waits for the instance's previous call to
return, so ``start()`` and ``stop()`` of one instance run in the order they were asked for and
never overlap, even when one of them overran its timeout; no thread outlives its call.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from vizgate.lifecycle import State
from vizgate.live import LiveSession
from vizgate.script_hooks import script_state

__all__ = ["END_TIME_MARGIN", "ScriptCalls", "call_start", "call_stop"]

T = TypeVar("T")

logger = logging.getLogger(__name__)


class ScriptCalls:
    """The calls of every instance's script, each instance's in the order they were made.

    A thread per call, not a pool: calls are rare (two per session), a hung one must not starve
    the others, and no idle thread is kept per instance.
    """

    def __init__(self) -> None:
        self._last: dict[Hashable, concurrent.futures.Future[Any]] = {}

    def run(self, instance: Hashable, label: str, call: Callable[[], T]) -> asyncio.Future[T]:
        """Run ``call`` once the previous call of ``instance`` has returned.

        Args:
            instance: which instance the call is for, e.g. ``(type name, index)``.
            label: names the thread, for people reading a thread dump.
            call: the blocking call; its result or exception becomes the future's.
        """
        previous = self._last.get(instance)
        result: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            if previous is not None:
                concurrent.futures.wait([previous])
            if not result.set_running_or_notify_cancel():
                return
            try:
                result.set_result(call())
            except BaseException as exc:
                result.set_exception(exc)

        self._last[instance] = result
        threading.Thread(target=run, name=f"vizgate {label}", daemon=True).start()
        return asyncio.wrap_future(result)


#: A session whose script reported an end time ends this many seconds before it.
END_TIME_MARGIN = 10.0


async def call_start(session: LiveSession, calls: ScriptCalls, now: Callable[[], float]) -> None:
    """Call the session script's ``start()``; tell the lifecycle whether it started.

    ``now`` is the broker's clock.
    """
    script = session.script
    loop = asyncio.get_running_loop()

    def start() -> bool:
        script.reset()
        # A reservation adopted after a restart and reached by its id has no token here.
        token = session.token or session.id
        started = bool(script.start(token, timestamp=time.time(), options=dict(session.options)))
        session.script_state = script_state(script)
        return started

    began = loop.time()
    try:
        ok = await calls.run((session.service.name, session.index), session.label, start)
    except Exception as exc:
        logger.exception("%s: start() raised", session.label)
        session.lifecycle.start_failed(f"start() raised {type(exc).__name__}: {exc}", now())
        return
    host_port = script.host_port()
    if not ok:
        # A script may say why before it gives up (report_progress); the person waiting is
        # better served by that than by the bare fact.
        said = script.progress()
        message = f"start() returned False: {said}" if said else "start() returned False"
        session.lifecycle.start_failed(message, now())
    elif host_port is None:
        session.lifecycle.start_failed(
            "start() returned True but did not call set_host_port()", now()
        )
    else:
        logger.info("%s: start() returned after %.1f s", session.label, loop.time() - began)
        session.lifecycle.start_succeeded(*host_port, now())
        end_time = script.end_time()
        if end_time is not None:
            # The script speaks wall-clock time; the lifecycle, the broker's clock. The session
            # ends a little before, so that stop() rather than the end itself ends it.
            session.lifecycle.end_by(now() + (end_time - time.time()) - END_TIME_MARGIN)


async def call_stop(session: LiveSession, calls: ScriptCalls, now: Callable[[], float]) -> bool:
    """Call the session script's ``stop()``; tell the lifecycle it returned.

    Returns False when the lifecycle no longer waited for it (``stop()`` overran its timeout
    and the session has ended without it).
    """
    try:
        await calls.run((session.service.name, session.index), session.label, session.script.stop)
    except Exception:
        logger.exception("%s: stop() raised", session.label)
    if session.lifecycle.state is not State.STOPPING:
        logger.warning("%s: stop() returned after its timeout", session.label)
        return False
    session.lifecycle.stop_returned(now())
    return True
