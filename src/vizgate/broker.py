"""The session broker: drives one :class:`~vizgate.lifecycle.SessionLifecycle` per session.

The broker owns the pools of instances (one per index of each session type), hands out
reservations, runs the scripts' blocking ``start()`` / ``stop()`` in worker threads, probes
readiness, keeps every timer, and tells viewers' connections when to close. It runs on the
gateway's event loop; nothing in it blocks.

Script calls run in threads, one instance's in order (:mod:`vizgate.script_calls`); sessions a
previous gateway process left live are adopted at :meth:`Broker.open`
(:mod:`vizgate.readoption`); the records and audit trail it saves are
:mod:`vizgate.broker_records`', and the read-only snapshots the web layer asks for
:mod:`vizgate.broker_views`'.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any

from vizgate.broker_records import BrokerRecords, set_ready
from vizgate.catalog import Catalog, ServiceType
from vizgate.choices import launch_options
from vizgate.exceptions import ReservationError, StartError
from vizgate.lifecycle import (
    Action,
    CallStart,
    CallStop,
    CloseConnections,
    Ended,
    EndReason,
    Persist,
    ProbeReady,
    SessionFailed,
    SessionLifecycle,
    SessionReady,
    State,
    Timeouts,
)
from vizgate.live import Attachment, LiveSession
from vizgate.metrics import SessionTally
from vizgate.net import port_answers, server_greets
from vizgate.placement import InstanceNodes, choose_instance
from vizgate.readoption import adopted_session, left_the_catalog
from vizgate.registry import SessionRegistry
from vizgate.script_calls import ScriptCalls, call_start, call_stop
from vizgate.scripts import RemoteServiceScript, realize_instances
from vizgate.sessions import (
    CloseRequest,
    Reservation,
    session_id_of,
    token_hash,
)
from vizgate.store import SessionRecord, SessionStore, ThreadedStore
from vizgate.user_limits import check_user_limits

__all__ = ["FAILED_INSTANCE_REST", "Attachment", "Broker"]

logger = logging.getLogger(__name__)

#: Seconds an instance whose ``start()`` failed is passed over while another is free.
FAILED_INSTANCE_REST = 60.0
#: How a start ends that tells against its instance; a release, a termination or a shutdown
#: during the start does not.
INSTANCE_FAILURES = frozenset({EndReason.START_FAILED, EndReason.START_TIMEOUT, EndReason.CRASHED})


class Broker(BrokerRecords):
    """Reserves, starts, watches and stops the sessions of a catalog.

    Args:
        catalog: the session types.
        timeouts: server-wide default timeouts; a type's options ``start_timeout``,
            ``ready_timeout``, ``linger``, ``idle_timeout`` and ``max_lifetime`` override them.
        probe_interval: seconds between readiness probe attempts.
        store: where sessions are saved; at :meth:`open` the broker adopts the sessions it
            holds that had not ended (a restarted gateway keeps its users' desktops).
        max_sessions_per_user: the most sessions one user may hold over all types (see
            :mod:`vizgate.user_limits`); None for no limit.
        paused: why new sessions are paused, or None (:mod:`vizgate.pause`); asked at each
            reservation, except an administrator's.
        paused_types: the session types paused alone and why
            (:class:`vizgate.pause.TypePauses`); asked as ``paused`` is.
        paused_nodes: the nodes paused alone and why (:class:`vizgate.pause.NodePauses`);
            reservations, an administrator's too, pass over the instances whose script's
            ``node()`` names one of them.
        failed_instance_rest: seconds an instance whose ``start()`` failed is passed over by
            new reservations while another instance of its type is free.
    """

    def __init__(
        self,
        catalog: Catalog,
        *,
        timeouts: Timeouts | None = None,
        probe_interval: float = 0.1,
        store: SessionStore | None = None,
        max_sessions_per_user: int | None = None,
        paused: Callable[[], str | None] = lambda: None,
        paused_types: Callable[[], Mapping[str, str]] = dict,
        paused_nodes: Callable[[], Mapping[str, str]] = dict,
        failed_instance_rest: float = FAILED_INSTANCE_REST,
    ) -> None:
        self.catalog = catalog
        self.failed_instance_rest = failed_instance_rest
        self.paused = paused
        self.paused_types = paused_types
        self.paused_nodes = paused_nodes
        self.max_sessions_per_user = max_sessions_per_user
        #: Where sessions are saved (None: nowhere); ``/metrics`` reads its backlog.
        self.store = ThreadedStore(store) if store is not None else None
        self.timeouts = timeouts or Timeouts()
        self.probe_interval = probe_interval
        self._instances: dict[str, list[RemoteServiceScript]] = {}
        self._nodes = InstanceNodes()
        self._script_calls = ScriptCalls()
        self._live = SessionRegistry()
        self._connection_ids = itertools.count(1)
        self._wakeup = asyncio.Event()
        self._timer_task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wall_offset = 0.0
        #: What happened to sessions since this broker was made, for ``/metrics``.
        self.tally = SessionTally()

    # -- opening and closing ------------------------------------------------------------------

    async def open(self) -> None:
        """Load every script, realize every instance, start the timers.

        Raises:
            ScriptError: a script cannot be loaded or realized.
        """
        self._loop = asyncio.get_running_loop()
        # Status pages show wall-clock times; the lifecycle keeps monotonic ones. The event
        # loop's clock is CLOCK_MONOTONIC; uvloop's is read once per loop iteration and in whole
        # milliseconds, so it runs up to a few ms behind time.monotonic(), never ahead: taking
        # the offset from time.monotonic() keeps every converted time at or before the present.
        self._wall_offset = time.time() - time.monotonic()
        for service in self.catalog:
            instances = await asyncio.to_thread(
                realize_instances,
                service.name,
                service.script,
                service.count,
                service.options_dict(),
            )
            self._instances[service.name] = instances
            await asyncio.to_thread(self._nodes.add_type, service.name, instances)
            self._live.add_type(service.name, service.count)
        if self.store is not None:
            for record in await asyncio.to_thread(self.store.load_live):
                await self._adopt(record)
        self._timer_task = asyncio.create_task(self._run_timers(), name="vizgate-broker-timers")

    async def close(self, *, stop_sessions: bool = True, timeout: float | None = None) -> None:
        """Stop the timers; with ``stop_sessions``, end every live session and wait for it.

        Args:
            stop_sessions: end live sessions (reason ``shutdown``) and wait for their ``stop()``;
                without it, running sessions keep running and a broker opened later on the
                same store adopts them.
            timeout: how long to wait for them; default the stop timeout plus a little.
        """
        try:
            if stop_sessions:
                for session in self._live:
                    self._release(session, EndReason.SHUTDOWN, "")
                wait = timeout if timeout is not None else self.timeouts.stop + 5
                try:
                    async with asyncio.timeout(wait):
                        await self._live.all_ended.wait()
                except TimeoutError:
                    logger.warning("%d session(s) did not end before shutdown", len(self._live))
        finally:
            timers, self._timer_task = self._timer_task, None
            if timers is not None:
                timers.cancel()
            for session in self._live:
                for task in list(session.tasks):
                    task.cancel()
            if timers is not None:
                try:
                    await timers
                except asyncio.CancelledError:
                    # The timers' own cancellation ends here; one aimed at close() goes on.
                    current = asyncio.current_task()
                    if current is not None and current.cancelling():
                        raise
            if self.store is not None:
                for session in self._live:
                    self._save(session)
                await asyncio.to_thread(self.store.close)

    # -- the public operations -------------------------------------------------------------------

    def now(self) -> float:
        """The broker's clock (the event loop's monotonic time)."""
        assert self._loop is not None, "Broker.open() was not awaited"
        return self._loop.time()

    def service(self, name: str) -> ServiceType:
        """The session type called ``name``.

        Raises:
            ReservationError: no such type (reason ``unknown_type``).
        """
        service = self.catalog.get(name)
        if service is None:
            raise ReservationError(f"no session type named {name!r}", reason="unknown_type")
        return service

    async def reserve(
        self,
        service_name: str,
        *,
        user: str = "",
        options: Mapping[str, Any] | None = None,
        bound: bool = False,
        unlimited: bool = False,
    ) -> Reservation:
        """Hold the lowest free instance of a type for a new token (passing over one that
        failed to start in the last :attr:`failed_instance_rest` seconds while another is free,
        and every one on a paused node).

        Args:
            service_name: the session type.
            user: who the session is for; given to ``start()`` as ``options['username']``.
            options: what the reservation carries to ``start()`` (e.g. ``size``, the type's
                choices: :func:`vizgate.choices.launch_options`).
            bound: only ``user`` (or staff) may connect with the token, as the tunnel's
                authorizer decides; otherwise the token is a bearer token as the seed defines.
            unlimited: ``user`` is not held to the per-user limits (an administrator).

        Raises:
            ReservationError: unknown type, a size or a choice not offered, new sessions
                paused, the user's limit reached, or no free instance.
        """
        service = self.service(service_name)
        try:
            start_options = launch_options(service, options or {})
        except ValueError as exc:
            raise ReservationError(str(exc), reason="bad_option") from None
        if not unlimited and (why := self.paused()):
            raise ReservationError(f"new sessions are paused: {why}", reason="paused")
        if not unlimited and (why := self.paused_types().get(service.name)):
            raise ReservationError(
                f"new {service.name} sessions are paused: {why}", reason="paused"
            )
        if user and not unlimited:
            check_user_limits(self._live, service, user, self.max_sessions_per_user)
        now = self.now()
        index = choose_instance(
            self._live,
            service,
            self._nodes,
            self.paused_nodes(),
            now=now,
            rest=self.failed_instance_rest,
        )
        start_options["username"] = user
        token = secrets.token_urlsafe(32)
        session = LiveSession(
            token=token,
            token_hash=token_hash(token),
            id=session_id_of(token),
            service=service,
            index=index,
            script=self._instances[service.name][index],
            user=user,
            options=start_options,
            lifecycle=SessionLifecycle(
                now=now,
                timeouts=self.timeouts.with_options(service.options),
                label=f"{service.name}#{index}",
            ),
            created=time.time(),
            ready=self._new_ready_future(),
            bound=bound,
        )
        self._live.add(session)
        logger.info(
            "%s: reserved for %s at %s (session %s)",
            session.label,
            user or "-",
            start_options["size"],
            session.id,
        )
        self._save(session)
        self._event(session, "reserved", user=user)
        self._wakeup.set()
        # A token handed out is one a gateway killed right after still knows.
        await self._until_saved(session, "the token is handed out")
        return Reservation(token=token, session_id=session.id, service=service.name, index=index)

    async def attach(self, token: str, *, client: str = "", user: str = "") -> Attachment:
        """Attach a viewer to a session; the first attach starts it. Waits until it runs.

        Args:
            token: the reservation's token.
            client: the viewer's address, for the audit trail.
            user: the viewer's account when known (a logged-in user), for the audit trail.

        Raises:
            ReservationError: the token is unknown, expired or released (``unknown_token``).
            StartError: the session failed to start (its user message says why).
        """
        session = self._live.by_token_hash(token_hash(token))
        if session is not None and session.token is None:
            session.token = token
        return await self._attach(session, client, user)

    async def attach_session(
        self, session_id: str, *, client: str = "", user: str = "", grant: str = ""
    ) -> Attachment:
        """Attach a viewer to a session by its public id, for callers that authenticated the
        viewer another way (a logged-in owner); see :meth:`attach`.

        Args:
            grant: what let a viewer in who is not the owner (a share link), so that
                :meth:`revoke_grant` can close its connections later; "" for the owner.
        """
        return await self._attach(self._live.by_id(session_id), client, user, grant)

    async def _attach(
        self, session: LiveSession | None, client: str, user: str, grant: str = ""
    ) -> Attachment:
        if session is None or not session.lifecycle.accepts_connections:
            raise ReservationError("unknown, expired or released token", reason="unknown_token")
        attachment = Attachment(self, session, next(self._connection_ids), client, grant, user)
        session.attachments[attachment.connection_id] = attachment
        session.lifecycle.connected(attachment.connection_id, self.now())
        logger.info(
            "%s: viewer %d connected (%d open)",
            session.label,
            attachment.connection_id,
            len(session.attachments),
        )
        self._event(session, "connected", user=user, client=client, detail=attachment.access)
        self._drive(session)
        try:
            host, port = await asyncio.shield(session.ready)
        except BaseException:
            self.detach(attachment)
            raise
        attachment.host, attachment.port = host, port
        return attachment

    def detach(self, attachment: Attachment) -> None:
        """A viewer's connection is gone; idempotent."""
        if attachment.detached:
            return
        attachment.detached = True
        session = attachment._session
        session.attachments.pop(attachment.connection_id, None)
        session.bytes_to_client += attachment.bytes_to_client
        session.bytes_to_server += attachment.bytes_to_server
        session.lifecycle.disconnected(attachment.connection_id, self.now())
        logger.info(
            "%s: viewer %d disconnected (%d open)",
            session.label,
            attachment.connection_id,
            len(session.attachments),
        )
        self._event(
            session,
            "disconnected",
            user=attachment.user,
            client=attachment.client,
            detail=attachment.access,
        )
        self._drive(session)

    def release(
        self, token: str, reason: EndReason = EndReason.RELEASED, message: str = ""
    ) -> bool:
        """End the session of a token: stop it if it started, free it if it did not.

        Returns:
            False when the session was already ending.

        Raises:
            ReservationError: the token is unknown or the session already ended.
        """
        session = self._live.by_token_hash(token_hash(token))
        if session is None:
            raise ReservationError("unknown, expired or released token", reason="unknown_token")
        self._event(session, "released", detail=reason.value)
        return self._release(session, reason, message)

    def terminate(self, session_id: str, message: str = "", *, by: str = "") -> bool:
        """An admin ends a session by its public id.

        Args:
            by: the administrator's account, for the audit trail ("" when not known).

        Raises:
            ReservationError: no live session has that id.
        """
        session = self._live_by_id(session_id)
        self._event(session, "terminated", user=by, detail=message)
        return self._release(session, EndReason.TERMINATED, message)

    def release_session(self, session_id: str, message: str = "") -> bool:
        """Its owner ends a session by its public id (the portal, where the page holds no
        token); recorded as ``released``.

        Raises:
            ReservationError: no live session has that id.
        """
        session = self._live_by_id(session_id)
        self._event(session, "released", detail=message)
        return self._release(session, EndReason.RELEASED, message)

    def revoke_grant(self, session_id: str, grant: str, message: str) -> int:
        """Close the connections to a session that ``grant`` let in; return how many.

        The session itself goes on. Nothing happens when it has ended or ``grant`` is "".
        """
        session = self._live.by_id(session_id)
        if session is None or not grant:
            return 0
        revoked = [a for a in session.attachments.values() if a.grant == grant]
        for attachment in revoked:
            attachment.revoke(message)
        if revoked:
            logger.info(
                "%s: %d viewer(s) let in by %s closed: %s",
                session.label,
                len(revoked),
                grant,
                message,
            )
        return len(revoked)

    def _live_by_id(self, session_id: str) -> LiveSession:
        session = self._live.by_id(session_id)
        if session is None:
            raise ReservationError(f"no live session {session_id!r}", reason="unknown_session")
        return session

    def _release(self, session: LiveSession, reason: EndReason, message: str) -> bool:
        changed = session.lifecycle.release(reason, self.now(), message)
        self._drive(session)
        return changed

    async def wait_until_idle(self) -> None:
        """Wait until no session is live (tests and graceful shutdown)."""
        await self._live.all_ended.wait()

    # -- internals -------------------------------------------------------------------------------

    async def _adopt(self, record: SessionRecord) -> None:
        """Take back a session a previous gateway process left live (see
        :mod:`vizgate.readoption`)."""
        service = self.catalog.get(record.service)
        if service is None or record.index >= service.count:
            logger.warning(
                "session %s of %r #%d is not in the catalog any more; it cannot be stopped",
                record.id,
                record.service,
                record.index,
            )
            if self.store is not None:
                self.store.save(left_the_catalog(record, time.time()))
            return
        session = await adopted_session(
            record,
            service,
            self._instances[service.name][record.index],
            self.timeouts.with_options(service.options),
            self._new_ready_future(),
            now=self.now(),
            wall=time.time(),
        )
        self._live.add(session)
        state = session.lifecycle.state.value
        logger.info("%s: adopted after a restart (%s)", session.label, state)
        self._event(session, "adopted", detail=state)
        self._save(session)
        self._drive(session)

    def server_closed(self, session: LiveSession) -> None:
        """A viewer's VNC connection was closed by the server: if the server is gone, the
        session crashed."""
        if session.lifecycle.state is State.RUNNING and not session.lifecycle.is_ending:
            self._spawn(session, self._confirm_crash(session), "crash check")

    async def _confirm_crash(self, session: LiveSession) -> None:
        host_port = session.lifecycle.host_port
        if host_port is None or await server_greets(*host_port):
            return
        if session.lifecycle.state is State.RUNNING and not session.lifecycle.is_ending:
            logger.warning("%s: the VNC server at %s:%d is gone", session.label, *host_port)
            session.lifecycle.crashed("VNC server closed the connection", self.now())
            self._drive(session)

    def _new_ready_future(self) -> asyncio.Future[tuple[str, int]]:
        future: asyncio.Future[tuple[str, int]] = asyncio.get_running_loop().create_future()
        # A failed start nobody waits for any more must not be reported as "never retrieved".
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        return future

    def _spawn(self, session: LiveSession, coroutine: Any, name: str) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coroutine, name=f"{session.label} {name}")
        session.tasks.add(task)
        task.add_done_callback(session.tasks.discard)

    def _drive(self, session: LiveSession) -> None:
        """Carry out what the session's lifecycle asks for."""
        for action in session.lifecycle.actions_to_run():
            self._perform(session, action)
        self._wakeup.set()

    def _perform(self, session: LiveSession, action: Action) -> None:
        if isinstance(action, CallStart):
            self._spawn(session, self._run_start(session), "start")
        elif isinstance(action, ProbeReady):
            self._spawn(session, self._probe(session, action.host, action.port), "probe")
        elif isinstance(action, SessionReady):
            logger.info("%s: running at %s:%d", session.label, action.host, action.port)
            self._live.started(session.service.name, session.index)
            self._event(session, "started", detail=f"{action.host}:{action.port}")
            lifecycle = session.lifecycle
            if lifecycle.started_at is not None and lifecycle.ready_at is not None:
                self.tally.session_ready(
                    session.service.name, lifecycle.ready_at - lifecycle.started_at
                )
            if self.store is None:
                set_ready(session, action.host, action.port)
            else:
                self._spawn(
                    session, self._ready_once_saved(session, action.host, action.port), "save"
                )
        elif isinstance(action, SessionFailed):
            logger.warning("%s: failed to start: %s", session.label, action.message)
            if action.reason in INSTANCE_FAILURES:
                self._live.start_failed(session.service.name, session.index, self.now())
                if session.service.count > 1 and self.failed_instance_rest > 0:
                    logger.warning(
                        "%s: new %s sessions go to its other free instances for %g s",
                        session.label,
                        session.service.name,
                        self.failed_instance_rest,
                    )
            self._event(session, "failed", detail=action.message)
            if not session.ready.done():
                session.ready.set_exception(StartError(action.message, reason=action.reason.value))
        elif isinstance(action, CloseConnections):
            request = CloseRequest(action.reason, action.message)
            for attachment in list(session.attachments.values()):
                if not attachment.close_requested.done():
                    attachment.close_requested.set_result(request)
        elif isinstance(action, CallStop):
            self._event(session, "stopping", detail=session.lifecycle.message)
            self._spawn(session, self._run_stop(session), "stop")
        elif isinstance(action, Ended):
            self._end(session, action.reason)
        elif isinstance(action, Persist):
            self._save(session)

    def _end(self, session: LiveSession, reason: EndReason) -> None:
        if not session.ready.done():
            session.ready.set_exception(
                StartError(session.lifecycle.message or reason.value, reason=reason.value)
            )
        info = session.info(self._wall)
        self._live.remove(session, info)
        self.tally.session_ended(info)
        self._event(session, "stopped", detail=reason.value)
        logger.info(
            "%s: ended (%s)%s",
            session.label,
            reason.value,
            f": {info.message}" if info.message else "",
        )

    async def _run_start(self, session: LiveSession) -> None:
        await call_start(session, self._script_calls, self.now)
        self._drive(session)

    async def _probe(self, session: LiveSession, host: str, port: int) -> None:
        while session.lifecycle.state is State.WAITING_READY:
            if not await port_answers(host, port):
                await asyncio.sleep(self.probe_interval)
                continue
            if session.lifecycle.state is State.WAITING_READY:
                session.lifecycle.ready(self.now())
                self._drive(session)
            return

    async def _run_stop(self, session: LiveSession) -> None:
        if await call_stop(session, self._script_calls, self.now):
            self._drive(session)

    async def _run_timers(self) -> None:
        while True:
            self._wakeup.clear()
            deadlines = [d for s in self._live if (d := s.lifecycle.next_deadline()) is not None]
            timeout = max(0.0, min(deadlines) - self.now()) if deadlines else None
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation
            # that arrives just as the event is set, and close() would wait forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wakeup.wait()
            now = self.now()
            for session in self._live:
                deadline = session.lifecycle.next_deadline()
                if deadline is not None and deadline <= now:
                    session.lifecycle.tick(now)
                    self._drive(session)
