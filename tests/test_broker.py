"""Tests of vizgate.broker through its public API, with the shipped test-double scripts.

Every session type here uses ``vizgate/testing/double_session.py``; ``options.behaviour`` picks
what its ``start()`` and ``stop()`` do, and :func:`vizgate.testing.doubles.instances` reaches the
doubles the broker realized, to read their call counters.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

import vizgate.broker_records as broker_records
from broker_fixtures import FAST, WAIT, MakeBroker, bounded_close
from support import await_until
from vizgate.broker import Attachment, Broker
from vizgate.catalog import load_catalog
from vizgate.exceptions import ReservationError, StartError
from vizgate.lifecycle import EndReason
from vizgate.sessions import CloseRequest, session_id_of
from vizgate.store import MemoryStore, SessionEventRecord, SessionRecord, StoreUnavailable
from vizgate.testing import DOUBLE_SESSION_SCRIPT
from vizgate.testing.doubles import DoubleScript, forget, instances, release_hung

POLL = 0.01
# The broker's clock is the event loop's. uvloop reads it once per loop iteration, in whole
# milliseconds: a time taken from it may be that much older than one from time.time().
LOOP_CLOCK_LAG = 0.05


async def eventually(condition: Callable[[], object], message: str = "condition not met") -> None:
    await await_until(condition, WAIT, interval=POLL, message=message)


def double(name: str, index: int = 0) -> DoubleScript:
    return instances(name)[index]


def in_use(broker: Broker, name: str) -> int:
    return next(s.in_use for s in broker.services() if s.name == name)


async def stopped_and_freed(broker: Broker, name: str, index: int = 0) -> None:
    """Wait until the double of ``index`` was stopped once and no instance is in use."""
    await eventually(lambda: double(name, index).stop_calls == 1, "stop() was not called")
    await eventually(lambda: in_use(broker, name) == 0, "the index was not freed")


# -- reservations --------------------------------------------------------------------------------


async def test_reserve_hands_out_the_lowest_free_indices(make_broker: MakeBroker) -> None:
    broker = await make_broker({"Desktop": {}})
    first = await broker.reserve("Desktop", user="ada")
    second = await broker.reserve("Desktop", user="bob")
    assert (first.service, first.index, second.index) == ("Desktop", 0, 1)
    assert first.token != second.token
    assert first.session_id == session_id_of(first.token)
    assert first.token not in repr(first)
    with pytest.raises(ReservationError) as caught:
        await broker.reserve("Desktop")
    assert str(caught.value) == "no free instance of 'Desktop' (2 of 2 in use)"
    assert caught.value.reason == "no_free_instance"
    assert broker.release(first.token) is True
    assert (await broker.reserve("Desktop")).index == 0


async def test_a_user_has_at_most_max_per_user_sessions_of_a_type(make_broker: MakeBroker) -> None:
    broker = await make_broker({"Desktop": {"max_per_user": 1}, "Other": {}}, count=3)
    first = await broker.reserve("Desktop", user="ada")
    with pytest.raises(ReservationError) as caught:
        await broker.reserve("Desktop", user="ada")
    assert caught.value.reason == "user_limit"
    assert str(caught.value) == (
        "ada already has 1 session of 'Desktop', the most one user may have of it at once; "
        "end one first"
    )
    # Others, other types, administrators and reservations for nobody in particular are not
    # held to it.
    await broker.reserve("Desktop", user="bob")
    await broker.reserve("Other", user="ada")
    await broker.reserve("Desktop", user="ada", unlimited=True)
    assert in_use(broker, "Desktop") == 3
    broker.release(first.token)
    await broker.reserve("Other")
    with pytest.raises(ReservationError, match="ada already has 1 session of 'Desktop'"):
        await broker.reserve("Desktop", user="ada")


async def test_a_user_has_at_most_max_sessions_per_user_over_all_types(
    make_broker: MakeBroker,
) -> None:
    broker = await make_broker({"Desktop": {}, "Other": {}}, count=3)
    broker.max_sessions_per_user = 2
    first = await broker.reserve("Desktop", user="ada")
    await broker.reserve("Other", user="ada")
    with pytest.raises(ReservationError) as caught:
        await broker.reserve("Other", user="ada")
    assert caught.value.reason == "user_limit"
    assert str(caught.value) == (
        "ada already has 2 sessions, the most one user may have at once; end one first"
    )
    await broker.reserve("Other", user="bob")
    # A session counts until its stop begins.
    broker.release(first.token)
    await broker.reserve("Desktop", user="ada")


async def test_reserve_an_unknown_type(make_broker: MakeBroker) -> None:
    broker = await make_broker({"Desktop": {}})
    with pytest.raises(ReservationError, match="no session type named 'Nope'") as caught:
        await broker.reserve("Nope")
    assert caught.value.reason == "unknown_type"


async def test_reserve_a_size_not_offered(make_broker: MakeBroker) -> None:
    broker = await make_broker({"Desktop": {"sizes": ["1600x1200", "1920x1080"]}})
    with pytest.raises(ReservationError) as caught:
        await broker.reserve("Desktop", options={"size": "800x600"})
    assert caught.value.reason == "bad_option"
    assert "'800x600'" in str(caught.value)
    assert str(caught.value).endswith("choose one of: 1600x1200, 1920x1080")
    assert in_use(broker, "Desktop") == 0


async def test_start_gets_username_size_and_the_reservation_options(
    make_broker: MakeBroker,
) -> None:
    broker = await make_broker({"Desktop": {"sizes": ["1600x1200", "1920x1080"]}})
    reservation = await broker.reserve(
        "Desktop", user="ada", options={"size": "1920x1080", "file": "model.vtk"}
    )
    broker.detach(await broker.attach(reservation.token))
    assert double("Desktop").last_options == {
        "username": "ada",
        "size": "1920x1080",
        "file": "model.vtk",
    }


async def test_size_defaults_to_the_first_offered(make_broker: MakeBroker) -> None:
    broker = await make_broker({"Desktop": {"sizes": ["1600x1200", "1920x1080"]}})
    reservation = await broker.reserve("Desktop", user="ada")
    broker.detach(await broker.attach(reservation.token))
    options = double("Desktop").last_options
    assert options is not None
    assert options["size"] == "1600x1200"


async def test_reservation_timeout_reclaims_an_unused_token(make_broker: MakeBroker) -> None:
    broker = await make_broker({"Desktop": {}}, reservation=0.2)
    reservation = await broker.reserve("Desktop")
    assert in_use(broker, "Desktop") == 1
    await eventually(lambda: in_use(broker, "Desktop") == 0, "the reservation was kept")
    with pytest.raises(ReservationError) as caught:
        await broker.attach(reservation.token)
    assert caught.value.reason == "unknown_token"
    [ended] = broker.history()
    assert (ended.end_reason, ended.message) == (
        "reservation_timeout",
        "nobody connected within 0.2 s",
    )
    assert (double("Desktop").start_calls, double("Desktop").stop_calls) == (0, 0)


async def test_attach_with_an_unknown_token(make_broker: MakeBroker) -> None:
    broker = await make_broker({"Desktop": {}})
    with pytest.raises(ReservationError) as caught:
        await broker.attach("not-a-token")
    assert caught.value.reason == "unknown_token"


# -- starting ------------------------------------------------------------------------------------


async def test_attach_starts_the_session_and_tells_where(make_broker: MakeBroker) -> None:
    broker = await make_broker({"Desktop": {}})
    reservation = await broker.reserve("Desktop")
    attachment = await broker.attach(reservation.token)
    assert (attachment.host, attachment.port) == double("Desktop").host_port()
    assert attachment.session_id == reservation.session_id
    # What the broker found ready is a server speaking RFB.
    reader, writer = await asyncio.open_connection(attachment.host, attachment.port)
    assert await asyncio.wait_for(reader.readexactly(12), WAIT) == b"RFB 003.008\n"
    writer.close()
    await writer.wait_closed()
    assert double("Desktop").start_calls == 1
    broker.detach(attachment)


async def test_attach_by_session_id(make_broker: MakeBroker) -> None:
    broker = await make_broker({"Desktop": {}})
    reservation = await broker.reserve("Desktop")
    by_id = await broker.attach_session(reservation.session_id)
    by_token = await broker.attach(reservation.token)
    assert (by_id.host, by_id.port) == (by_token.host, by_token.port)
    assert double("Desktop").start_calls == 1
    info = broker.session_by_id(reservation.session_id)
    assert info is not None
    assert info.connections == 2
    assert broker.session_of_token(reservation.token) == info
    with pytest.raises(ReservationError) as caught:
        await broker.attach_session("0123456789abcdef")
    assert caught.value.reason == "unknown_token"
    broker.detach(by_id)
    broker.detach(by_token)
    await stopped_and_freed(broker, "Desktop")
    assert broker.session_by_id(reservation.session_id) is None


async def test_concurrent_attaches_share_one_start(make_broker: MakeBroker) -> None:
    broker = await make_broker({"Desktop": {"behaviour": "slow", "delay": 0.3}})
    reservation = await broker.reserve("Desktop")
    attaches = [asyncio.create_task(broker.attach(reservation.token)) for _ in range(20)]
    # While start() runs, status pages show what the script reports.
    await eventually(lambda: broker.sessions()[0].progress == "starting slowly (0.3 s)")
    assert broker.sessions()[0].state == "starting"
    attachments = await asyncio.gather(*attaches)
    assert broker.sessions()[0].progress == ""
    assert double("Desktop").start_calls == 1
    assert {(a.host, a.port) for a in attachments} == {(attachments[0].host, attachments[0].port)}
    assert len({a.connection_id for a in attachments}) == 20
    [info] = broker.sessions()
    assert (info.state, info.connections) == ("running", 20)
    for attachment in attachments:
        broker.detach(attachment)
    await stopped_and_freed(broker, "Desktop")
    assert double("Desktop").start_calls == 1


async def test_detach_stops_after_linger_and_frees_the_index(make_broker: MakeBroker) -> None:
    broker = await make_broker({"Desktop": {}})
    reservation = await broker.reserve("Desktop")
    attachment = await broker.attach(reservation.token)
    broker.detach(attachment)
    broker.detach(attachment)  # idempotent
    assert double("Desktop").stop_calls == 0
    assert in_use(broker, "Desktop") == 1
    await stopped_and_freed(broker, "Desktop")
    assert (await broker.reserve("Desktop")).index == 0
    [ended] = broker.history()
    assert (ended.end_reason, ended.message) == ("disconnected", "the last viewer disconnected")
    assert double("Desktop").stop_calls == 1
    assert double("Desktop").overlapped is False


async def test_reattach_within_linger_keeps_the_session(make_broker: MakeBroker) -> None:
    broker = await make_broker({"Desktop": {}}, linger=0.5)
    reservation = await broker.reserve("Desktop")
    first = await broker.attach(reservation.token)
    broker.detach(first)
    second = await broker.attach(reservation.token)
    assert (second.host, second.port) == (first.host, first.port)
    assert double("Desktop").start_calls == 1
    broker.detach(second)
    await stopped_and_freed(broker, "Desktop")


async def test_cancelled_attach_still_stops_the_session(make_broker: MakeBroker) -> None:
    broker = await make_broker({"Desktop": {"behaviour": "slow", "delay": 0.3}})
    reservation = await broker.reserve("Desktop")
    attach = asyncio.create_task(broker.attach(reservation.token))
    await eventually(lambda: double("Desktop").start_calls == 1)
    attach.cancel()
    with pytest.raises(asyncio.CancelledError):
        await attach
    # The viewer left while start() ran: the session starts, lingers, and is stopped.
    await stopped_and_freed(broker, "Desktop")
    assert broker.history()[0].end_reason == "disconnected"


@pytest.mark.parametrize(
    ("behaviour", "message"),
    [
        ("false", "start() returned False"),
        ("raises", "start() raised RuntimeError: boom"),
        ("no_host_port", "start() returned True but did not call set_host_port()"),
        ("not_listening", "VNC server did not accept connections within 0.5 s"),
    ],
)
async def test_failed_start(make_broker: MakeBroker, behaviour: str, message: str) -> None:
    broker = await make_broker({"Desktop": {"behaviour": behaviour}})
    reservation = await broker.reserve("Desktop")
    with pytest.raises(StartError) as caught:
        await broker.attach(reservation.token)
    assert caught.value.user_message == message
    assert caught.value.reason == "start_failed"
    await stopped_and_freed(broker, "Desktop")
    [ended] = broker.history()
    assert (ended.end_reason, ended.message, ended.connections) == ("start_failed", message, 0)
    # Freed, and passed over while another instance is free (tests/test_failed_instances.py).
    assert (await broker.reserve("Desktop")).index == 1
    assert (await broker.reserve("Desktop")).index == 0
    script = double("Desktop")
    assert (script.start_calls, script.stop_calls, script.overlapped) == (1, 1, False)


async def test_start_that_never_returns(make_broker: MakeBroker) -> None:
    broker = await make_broker({"Desktop": {"behaviour": "never", "hang": 10}}, start=0.3)
    reservation = await broker.reserve("Desktop")
    with pytest.raises(StartError) as caught:
        await broker.attach(reservation.token)
    assert caught.value.reason == "start_timeout"
    assert caught.value.user_message == "start() did not finish within 0.3 s"
    script = double("Desktop")
    # start() still runs: the index stays held and stop() waits.
    [info] = broker.sessions()
    assert (info.state, info.end_reason) == ("cancelling", "start_timeout")
    assert in_use(broker, "Desktop") == 1
    assert script.stop_calls == 0
    with pytest.raises(ReservationError):
        await broker.attach(reservation.token)
    await eventually(lambda: script.start_calls == 1)
    assert release_hung("Desktop") >= 1
    await stopped_and_freed(broker, "Desktop")
    assert (script.start_calls, script.stop_calls, script.overlapped) == (1, 1, False)
    assert broker.history()[0].end_reason == "start_timeout"


# -- ending --------------------------------------------------------------------------------------


async def test_release_of_a_running_session(make_broker: MakeBroker) -> None:
    broker = await make_broker({"Desktop": {}})
    reservation = await broker.reserve("Desktop")
    attachment = await broker.attach(reservation.token)
    assert broker.release(reservation.token) is True
    assert broker.release(reservation.token) is False
    request = await asyncio.wait_for(attachment.close_requested, WAIT)
    assert request == CloseRequest(EndReason.RELEASED, "the session was released")
    await stopped_and_freed(broker, "Desktop")
    broker.detach(attachment)  # a viewer closing late is harmless
    with pytest.raises(ReservationError):
        broker.release(reservation.token)
    assert broker.history()[0].end_reason == "released"


async def test_release_before_anyone_attached_never_starts(make_broker: MakeBroker) -> None:
    broker = await make_broker({"Desktop": {}})
    reservation = await broker.reserve("Desktop")
    assert broker.release(reservation.token) is True
    assert in_use(broker, "Desktop") == 0
    assert (double("Desktop").start_calls, double("Desktop").stop_calls) == (0, 0)
    assert broker.history()[0].end_reason == "released"


async def test_release_while_starting_fails_the_attach(make_broker: MakeBroker) -> None:
    broker = await make_broker({"Desktop": {"behaviour": "slow", "delay": 0.3}})
    reservation = await broker.reserve("Desktop")
    attach = asyncio.create_task(broker.attach(reservation.token))
    await eventually(lambda: double("Desktop").start_calls == 1)
    broker.release(reservation.token)
    with pytest.raises(StartError) as caught:
        await attach
    assert caught.value.reason == "released"
    await stopped_and_freed(broker, "Desktop")
    assert double("Desktop").overlapped is False


async def test_terminate_by_session_id(make_broker: MakeBroker) -> None:
    broker = await make_broker({"Desktop": {}})
    reservation = await broker.reserve("Desktop")
    attachment = await broker.attach(reservation.token)
    assert broker.terminate(reservation.session_id) is True
    request = await asyncio.wait_for(attachment.close_requested, WAIT)
    assert request == CloseRequest(EndReason.TERMINATED, "session ended by administrator")
    await stopped_and_freed(broker, "Desktop")
    [ended] = broker.history()
    assert (ended.end_reason, ended.message) == ("terminated", "session ended by administrator")
    with pytest.raises(ReservationError) as caught:
        broker.terminate(reservation.session_id)
    assert caught.value.reason == "unknown_session"


async def test_idle_timeout(make_broker: MakeBroker) -> None:
    broker = await make_broker({"Desktop": {"idle_timeout": 0.4}})
    reservation = await broker.reserve("Desktop")
    before = time.time()
    attachment = await broker.attach(reservation.token)
    after = time.time()
    # Viewers are told when and why the session will end: 0.4 s after it became ready.
    [info] = broker.sessions()
    assert info.ends_because == "idle_timeout"
    assert info.ends_at is not None
    assert before + 0.4 - 0.05 <= info.ends_at <= after + 0.4 + 0.05
    # Input keeps the session alive past its idle timeout ...
    kept_until = time.monotonic() + 0.8
    while time.monotonic() < kept_until:
        attachment.note_input()
        assert not attachment.close_requested.done()
        await asyncio.sleep(0.05)
    # ... and without it the session ends.
    request = await asyncio.wait_for(attachment.close_requested, WAIT)
    assert request == CloseRequest(EndReason.IDLE_TIMEOUT, "no input for 0.4 s")
    broker.detach(attachment)
    await stopped_and_freed(broker, "Desktop")
    assert broker.history()[0].end_reason == "idle_timeout"


async def test_max_lifetime(make_broker: MakeBroker) -> None:
    broker = await make_broker({"Desktop": {"max_lifetime": 0.3}})
    reservation = await broker.reserve("Desktop")
    attachment = await broker.attach(reservation.token)
    attachment.note_input()
    request = await asyncio.wait_for(attachment.close_requested, WAIT)
    assert request == CloseRequest(
        EndReason.MAX_LIFETIME, "the session reached its maximum lifetime of 0.3 s"
    )
    broker.detach(attachment)
    await stopped_and_freed(broker, "Desktop")


async def test_a_vanished_server_is_a_crash(make_broker: MakeBroker) -> None:
    broker = await make_broker({"Desktop": {}})
    reservation = await broker.reserve("Desktop")
    attachment = await broker.attach(reservation.token)
    # A viewer dropped by a server that still answers ends nothing ...
    attachment.server_closed()
    await eventually(lambda: not [t for t in asyncio.all_tasks() if "crash" in t.get_name()])
    assert broker.sessions()[0].state == "running"
    assert not attachment.close_requested.done()
    # ... but when the server is gone, the session crashed.
    double("Desktop").crash()
    attachment.server_closed()
    request = await asyncio.wait_for(attachment.close_requested, WAIT)
    assert request == CloseRequest(EndReason.CRASHED, "VNC server closed the connection")
    broker.detach(attachment)
    await stopped_and_freed(broker, "Desktop")
    assert broker.history()[0].end_reason == "crashed"


async def test_stop_that_raises_still_ends_the_session(make_broker: MakeBroker) -> None:
    broker = await make_broker({"Desktop": {"behaviour": "stop_raises"}})
    reservation = await broker.reserve("Desktop")
    broker.detach(await broker.attach(reservation.token))
    await stopped_and_freed(broker, "Desktop")
    [ended] = broker.history()
    assert (ended.end_reason, ended.stop_timed_out) == ("disconnected", False)


async def test_stop_that_hangs_is_flagged_and_the_index_freed(make_broker: MakeBroker) -> None:
    broker = await make_broker({"Desktop": {"behaviour": "stop_hangs", "hang": 10}}, count=1)
    reservation = await broker.reserve("Desktop")
    broker.release(reservation.token, message="done")
    # Nothing started, nothing to stop; now a session that did start:
    reservation = await broker.reserve("Desktop")
    attachment = await broker.attach(reservation.token)
    broker.release(reservation.token)
    broker.detach(attachment)
    await eventually(lambda: in_use(broker, "Desktop") == 0, "the index was not freed")
    ended = broker.history()[0]
    assert (ended.end_reason, ended.stop_timed_out) == ("released", True)
    script = double("Desktop")
    assert script.stop_calls == 1
    # The next session of that index waits for the hung stop() instead of overlapping it.
    reservation = await broker.reserve("Desktop")
    attach = asyncio.create_task(broker.attach(reservation.token))
    release_hung("Desktop")
    attachment = await asyncio.wait_for(attach, WAIT)
    assert (script.start_calls, script.overlapped) == (2, False)
    broker.detach(attachment)
    await eventually(lambda: script.stop_calls == 2)


async def test_close_right_after_activity_returns(make_broker: MakeBroker) -> None:
    # The timers' task is cancelled just after a reservation woke it: one turn of the loop
    # lets the wake-up finish but not reach the task. On Python 3.11, a wait_for() in the
    # timers would swallow that cancellation and close() would never return.
    broker = await make_broker({"Desktop": {}})
    await broker.reserve("Desktop")
    await asyncio.sleep(0)
    await broker.reserve("Desktop")
    await asyncio.sleep(0)
    await bounded_close(broker)
    assert [s.end_reason for s in broker.history()] == ["shutdown", "shutdown"]


async def test_a_cancelled_close_is_cancelled(make_broker: MakeBroker) -> None:
    broker = await make_broker({"Desktop": {}})
    await asyncio.sleep(0)
    closing = asyncio.create_task(broker.close())
    await asyncio.sleep(0)  # close() now waits for its timers' task to end
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing


async def test_close_stops_running_sessions(make_broker: MakeBroker) -> None:
    broker = await make_broker({"Desktop": {}})
    reservation = await broker.reserve("Desktop")
    attachment = await broker.attach(reservation.token)
    await broker.reserve("Desktop")
    await broker.close()
    assert double("Desktop").stop_calls == 1
    assert double("Desktop", 1).stop_calls == 0
    assert attachment.close_requested.result().reason is EndReason.SHUTDOWN
    assert [s.end_reason for s in broker.history()] == ["shutdown", "shutdown"]
    assert broker.sessions() == []


# -- status --------------------------------------------------------------------------------------


async def test_status(make_broker: MakeBroker) -> None:
    broker = await make_broker(
        {"Desktop": {"sizes": ["1600x1200"], "group": "Viz"}, "Other": {}}, count=2
    )
    services = {s.name: s for s in broker.services()}
    assert (services["Desktop"].count, services["Desktop"].in_use) == (2, 0)
    assert (services["Desktop"].sizes, services["Desktop"].group) == (("1600x1200",), "Viz")
    assert services["Other"].group is None

    before = time.time()
    first = await broker.reserve("Desktop", user="ada")
    second = await broker.reserve("Desktop", user="bob")
    assert [s.in_use for s in broker.services()] == [2, 0]

    reserved = {s.id: s for s in broker.sessions()}
    info = reserved[first.session_id]
    assert (info.service, info.index, info.user, info.size) == ("Desktop", 0, "ada", "1600x1200")
    assert (info.state, info.connections, info.host, info.port) == ("reserved", 0, None, None)
    assert (info.started, info.ended, info.end_reason, info.message) == (None, None, None, "")
    assert before <= info.created <= time.time()
    assert info.token_prefix == first.token[:6]
    assert first.token not in repr(info)

    attachment = await broker.attach(first.token)
    attachment.bytes_to_client += 100
    attachment.bytes_to_server += 7
    info = {s.id: s for s in broker.sessions()}[first.session_id]
    assert (info.state, info.connections) == ("running", 1)
    assert (info.host, info.port) == (attachment.host, attachment.port)
    assert info.started is not None
    assert before - LOOP_CLOCK_LAG <= info.started <= time.time()
    assert (info.bytes_to_client, info.bytes_to_server) == (100, 7)

    broker.release(second.token)
    broker.detach(attachment)
    await stopped_and_freed(broker, "Desktop")
    newest, oldest = broker.history()
    assert (newest.id, newest.end_reason) == (first.session_id, "disconnected")
    assert (oldest.id, oldest.end_reason) == (second.session_id, "released")
    assert newest.ended is not None
    assert newest.started is not None
    assert newest.started <= newest.ended <= time.time()
    assert (newest.bytes_to_client, newest.bytes_to_server) == (100, 7)
    assert broker.sessions() == []
    assert broker.session_of_token(first.token) is None


# -- secrets and resources -----------------------------------------------------------------------


async def test_no_token_is_ever_logged(
    make_broker: MakeBroker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    broker = await make_broker(
        {"Desktop": {}, "Broken": {"behaviour": "raises"}, "Sticky": {"behaviour": "stop_raises"}},
        reservation=0.2,
    )
    tokens: list[str] = []

    async def reserve(name: str) -> str:
        token = (await broker.reserve(name, user="ada")).token
        tokens.append(token)
        return token

    broker.detach(await broker.attach(await reserve("Desktop")))
    with pytest.raises(StartError):
        await broker.attach(await reserve("Broken"))
    broker.release(await reserve("Desktop"))
    broker.terminate(session_id_of(await reserve("Desktop")))
    broker.detach(await broker.attach(await reserve("Sticky")))
    await reserve("Desktop")  # left to time out
    await broker.wait_until_idle()
    assert caplog.records
    for token in tokens:
        for record in caplog.records:
            assert token not in record.getMessage(), record.getMessage()
        assert token not in caplog.text


async def test_a_storm_of_attaches_starts_and_stops_once_and_leaks_nothing(
    make_broker: MakeBroker,
) -> None:
    broker = await make_broker({"Desktop": {}})

    async def cycles(token: str, count: int) -> Attachment:
        attachment = await broker.attach(token)
        for _ in range(count - 1):
            broker.detach(attachment)
            await asyncio.sleep(0)
            attachment = await broker.attach(token)
        return attachment

    def session_tasks() -> list[asyncio.Task[Any]]:
        return [t for t in asyncio.all_tasks() if t.get_name().startswith("Desktop#")]

    # A first whole session creates what persists (the instance's worker thread).
    broker.detach(await cycles((await broker.reserve("Desktop")).token, 1))
    await stopped_and_freed(broker, "Desktop")
    await eventually(lambda: not session_tasks(), "tasks of the first session remain")
    threads = set(threading.enumerate())
    tasks = len(asyncio.all_tasks())

    script = double("Desktop")
    reservation = await broker.reserve("Desktop")
    broker.detach(await cycles(reservation.token, 200))
    # One more start and, after the linger, one more stop: the first session had one each.
    assert script.start_calls == 2
    await eventually(lambda: script.stop_calls == 2, "the storm's session was not stopped")
    await eventually(lambda: in_use(broker, "Desktop") == 0)
    await eventually(lambda: not session_tasks(), "tasks of the session remain")
    await eventually(lambda: len(asyncio.all_tasks()) == tasks, "asyncio tasks leaked")
    leaked = set(threading.enumerate()) - threads
    assert not leaked, leaked
    assert threading.active_count() <= len(threads)
    assert (script.start_calls, script.stop_calls, script.overlapped) == (2, 2, False)
    assert broker.history()[0].end_reason == "disconnected"


# -- saving before viewers see the desktop -------------------------------------------------------


class HeldStore(MemoryStore):
    """A memory store that holds every write of a session in ``state`` until :attr:`release`."""

    def __init__(self, state: str = "running") -> None:
        super().__init__()
        self.state = state
        self.release = threading.Event()
        self.holding = threading.Event()

    def save(self, record: SessionRecord) -> None:
        if record.state == self.state:
            self.holding.set()
            self.release.wait(WAIT)
        super().save(record)


async def held_broker(tmp_path: Path, store: MemoryStore, count: int = 1) -> Broker:
    """An open broker of one double type saving to ``store``."""
    path = tmp_path / "external_services.json"
    path.write_text(
        json.dumps(
            {"Desktop": {"script": str(DOUBLE_SESSION_SCRIPT), "count": count, "options": {}}}
        )
    )
    broker = Broker(load_catalog(path), timeouts=FAST, probe_interval=0.02, store=store)
    await broker.open()
    return broker


async def test_a_viewer_gets_the_desktop_only_once_its_running_session_is_saved(
    tmp_path: Path,
) -> None:
    store = HeldStore()
    broker = await held_broker(tmp_path, store)
    try:
        reservation = await broker.reserve("Desktop")
        attach = asyncio.create_task(broker.attach(reservation.token))
        await eventually(store.holding.is_set, "the running session was never saved")
        # A gateway killed now would not find the session running: the viewer must wait.
        done, _ = await asyncio.wait({attach}, timeout=0.2)
        assert not done, "the viewer got the desktop before its session was saved"
        store.release.set()
        attachment = await asyncio.wait_for(attach, WAIT)
        assert [record.state for record in store.load_live()] == ["running"]
        broker.detach(attachment)
    finally:
        store.release.set()
        await bounded_close(broker)
        forget()


async def test_a_store_that_cannot_save_delays_the_desktop_only_so_long(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(broker_records, "SAVE_WAIT_TIMEOUT", 0.1)
    store = HeldStore()
    broker = await held_broker(tmp_path, store)
    try:
        reservation = await broker.reserve("Desktop")
        attachment = await asyncio.wait_for(broker.attach(reservation.token), WAIT)
        assert store.holding.is_set()
        assert not store.release.is_set()
        assert "viewers are let in before the session is saved" in caplog.text
        broker.detach(attachment)
    finally:
        store.release.set()
        await bounded_close(broker)
        forget()


async def test_a_token_is_handed_out_only_once_its_reservation_is_saved(tmp_path: Path) -> None:
    store = HeldStore("reserved")
    broker = await held_broker(tmp_path, store)
    try:
        reserve = asyncio.create_task(broker.reserve("Desktop"))
        await eventually(store.holding.is_set, "the reservation was never saved")
        done, _ = await asyncio.wait({reserve}, timeout=0.2)
        assert not done, "the token was handed out before its reservation was saved"
        store.release.set()
        reservation = await asyncio.wait_for(reserve, WAIT)
        assert [record.id for record in store.load_live()] == [reservation.session_id]
    finally:
        store.release.set()
        await bounded_close(broker)
        forget()


class AwayStore(MemoryStore):
    """A memory store whose database is away while :attr:`away` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.away = threading.Event()
        self.away.set()

    def write(self, changes: Sequence[SessionRecord | SessionEventRecord]) -> None:
        if self.away.is_set():
            raise StoreUnavailable("connection refused")
        super().write(changes)


async def test_during_an_outage_sessions_go_on_without_a_wait_or_a_warning_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Longer than the test may take: once the outage is known, nothing waits for the store.
    monkeypatch.setattr(broker_records, "SAVE_WAIT_TIMEOUT", 1000.0)
    caplog.set_level(logging.WARNING)
    store = AwayStore()
    broker = await held_broker(tmp_path, store, count=2)
    try:
        # The store learns of the outage at its first write.
        broker.store.add_event(SessionEventRecord("none", "probe", 1_700_000_000.0))  # type: ignore[union-attr]
        await eventually(lambda: broker.store.away, "the outage was not noticed")  # type: ignore[union-attr]
        for _ in range(2):
            reservation = await asyncio.wait_for(broker.reserve("Desktop"), WAIT)
            broker.detach(await asyncio.wait_for(broker.attach(reservation.token), WAIT))
    finally:
        store.away.clear()
        await bounded_close(broker)
        forget()
    # Nothing was lost: both sessions are saved, and ended.
    assert len(store.records) == 2
    assert {record.state for record in store.records.values()} == {"ended"}
    messages = [record.getMessage() for record in caplog.records]
    assert len([m for m in messages if "cannot reach the database" in m]) == 1, messages
    assert not [m for m in messages if "before the session is saved" in m], messages
