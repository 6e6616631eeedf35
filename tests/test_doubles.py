"""Tests of vizgate.testing.doubles: the shipped test-double session scripts."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from support import wait_until
from vizgate.catalog import load_catalog
from vizgate.scripts import RemoteServiceScript, realize_instances
from vizgate.testing import DOUBLE_SESSION_SCRIPT
from vizgate.testing.doubles import (
    BEHAVIOURS,
    RFB_GREETING,
    DoubleScript,
    EchoServer,
    NeverStartsDouble,
    StartingDouble,
    forget,
    instances,
    realize_service,
    release_hung,
)

TOKEN = "a-token-for-tests"
WAIT = 5.0


def wait_for(condition: Callable[[], bool], timeout: float = WAIT) -> None:
    wait_until(condition, timeout, interval=0.005)


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {size} bytes")
        data += chunk
    return bytes(data)


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    sock.settimeout(WAIT)
    return sock


def refuses(port: int) -> bool:
    try:
        connect(port).close()
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:
        # A connection that reached the backlog of a listening socket being closed: not yet.
        return False
    return False


def double(behaviour: str, name: str = "Doubles", **options: Any) -> DoubleScript:
    return realize_service(name, 1, 0, {"behaviour": behaviour, **options})


def in_thread(call: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    """Run ``call`` in a thread; the list receives its result or exception."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(call())
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


@pytest.fixture(autouse=True)
def _release_everything() -> Iterator[None]:
    yield
    release_hung()
    forget()


# -- realize_service and the registry ------------------------------------------------------------


@pytest.mark.parametrize("behaviour", sorted(BEHAVIOURS))
def test_realize_service_picks_the_behaviour(behaviour: str) -> None:
    script = realize_service("T", 3, 2, {"behaviour": behaviour})
    assert type(script) is BEHAVIOURS[behaviour]
    assert type(script).behaviour == behaviour
    assert isinstance(script, RemoteServiceScript)
    assert (script._name, script._count, script._index) == ("T", 3, 2)
    assert script._common_options == {"behaviour": behaviour}


def test_starts_is_the_default() -> None:
    assert type(realize_service("T", 1, 0, {})) is StartingDouble


def test_unknown_behaviour_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown behaviour 'flaky'; choose one of: ") as caught:
        realize_service("T", 1, 0, {"behaviour": "flaky"})
    assert all(name in str(caught.value) for name in BEHAVIOURS)


def test_durations_must_be_seconds() -> None:
    with pytest.raises(ValueError, match="option 'hang' must be a number of seconds"):
        realize_service("T", 1, 0, {"behaviour": "never", "hang": "soon"})
    with pytest.raises(ValueError, match="option 'delay' must be 0 or more seconds"):
        realize_service("T", 1, 0, {"behaviour": "slow", "delay": -1})


def test_the_script_file_realizes_doubles_found_through_the_registry() -> None:
    realized = realize_instances("Registry", DOUBLE_SESSION_SCRIPT, 3, {"behaviour": "false"})
    assert instances("Registry") == realized
    assert [d._index for d in instances("Registry")] == [0, 1, 2]
    again = realize_instances("Registry", DOUBLE_SESSION_SCRIPT, 3, {"behaviour": "false"})
    assert instances("Registry") == again
    assert all(a is not b for a, b in zip(again, realized, strict=True))
    assert instances("Nobody") == []
    forget("Registry")
    assert instances("Registry") == []


def test_a_catalog_can_name_the_script(tmp_path: Path) -> None:
    config = tmp_path / "external_services.json"
    config.write_text(
        json.dumps(
            {
                "Try me": {
                    "script": str(DOUBLE_SESSION_SCRIPT),
                    "count": 2,
                    "options": {"behaviour": "starts"},
                }
            }
        )
    )
    service = load_catalog(config)["Try me"]
    assert service.script == DOUBLE_SESSION_SCRIPT
    realized = realize_instances(service.name, service.script, 2, service.options_dict())
    assert [type(d) for d in realized] == [StartingDouble, StartingDouble]


# -- the echo server -----------------------------------------------------------------------------


def test_echo_server_greets_and_echoes_every_client() -> None:
    server = EchoServer()
    try:
        first, second = connect(server.port), connect(server.port)
        with first, second:
            assert recv_exactly(first, len(RFB_GREETING)) == b"RFB 003.008\n"
            assert recv_exactly(second, len(RFB_GREETING)) == RFB_GREETING
            first.sendall(b"hello")
            second.sendall(b"world")
            assert recv_exactly(first, 5) == b"hello"
            assert recv_exactly(second, 5) == b"world"
        wait_for(lambda: server.accepted == 2)
    finally:
        server.close()


def test_echo_server_echoes_more_than_it_buffers() -> None:
    # 4 MiB exceeds what the server keeps unsent, so it must stop reading and resume.
    payload = bytes(range(256)) * (4 * 4096)
    server = EchoServer()
    try:
        with connect(server.port) as sock:
            recv_exactly(sock, len(RFB_GREETING))
            sender, _ = in_thread(lambda: sock.sendall(payload))
            assert recv_exactly(sock, len(payload)) == payload
            sender.join(WAIT)
    finally:
        server.close()


def test_echo_server_survives_clients_that_leave_at_once() -> None:
    server = EchoServer()
    try:
        for _ in range(20):
            connect(server.port).close()
        with connect(server.port) as sock:
            assert recv_exactly(sock, len(RFB_GREETING)) == RFB_GREETING
    finally:
        server.close()


def test_echo_server_close_stops_its_thread_and_port() -> None:
    threads = set(threading.enumerate())
    server = EchoServer()
    [thread] = set(threading.enumerate()) - threads
    assert thread.name == f"vizgate-echo-{server.port}"
    assert thread.daemon
    client = connect(server.port)
    # Accepted first: closing a listener with a connection still in its backlog resets it.
    wait_for(lambda: server.accepted == 1)
    server.close()
    server.close()
    assert not server.is_serving
    assert not set(threading.enumerate()) - threads
    assert refuses(server.port)
    # The client sees an orderly end, after the greeting if it was sent in time.
    with client:
        received = b""
        while chunk := client.recv(100):
            received += chunk
    assert received in (RFB_GREETING, b"")


# -- each behaviour ------------------------------------------------------------------------------


def test_starts_serves_until_stopped() -> None:
    threads = set(threading.enumerate())
    script = double("starts")
    options = {"username": "ada", "size": "1600x1200", "extra": 1}
    assert script.start(TOKEN, timestamp=1.0, options=options) is True
    host_port = script.host_port()
    assert host_port is not None
    host, port = host_port
    assert host == "127.0.0.1"
    assert script.last_options == options
    with connect(port) as sock:
        assert recv_exactly(sock, len(RFB_GREETING)) == RFB_GREETING
        sock.sendall(b"ping")
        assert recv_exactly(sock, 4) == b"ping"
    assert script.stop() is True
    assert refuses(port)
    assert not set(threading.enumerate()) - threads
    assert (script.start_calls, script.stop_calls, script.overlapped) == (1, 1, False)


def test_starts_uses_a_new_port_each_session() -> None:
    script = double("starts")
    script.start(TOKEN)
    first = script.host_port()
    script.stop()
    script.reset()
    script.start(TOKEN)
    second = script.host_port()
    try:
        assert first is not None
        assert second is not None
        assert refuses(first[1])
        connect(second[1]).close()
    finally:
        script.stop()
    assert (script.start_calls, script.stop_calls) == (2, 2)


def test_slow_waits_its_delay_then_serves() -> None:
    script = double("slow", delay=0.3)
    began = time.monotonic()
    assert script.start(TOKEN) is True
    assert time.monotonic() - began >= 0.3
    assert script.progress() == "starting slowly (0.3 s)"
    host_port = script.host_port()
    assert host_port is not None
    connect(host_port[1]).close()
    script.stop()


def test_never_blocks_until_released() -> None:
    script = double("never", name="Never")
    thread, outcome = in_thread(lambda: script.start(TOKEN))
    wait_for(lambda: script.start_calls == 1)
    thread.join(0.3)
    assert thread.is_alive(), "start() returned although nobody released it"
    assert release_hung("Never") == 1
    thread.join(WAIT)
    assert outcome == [False]
    assert script.host_port() is None


def test_never_gives_up_after_its_hang_option() -> None:
    script = double("never", hang=0.2)
    began = time.monotonic()
    assert script.start(TOKEN) is False
    assert 0.2 <= time.monotonic() - began < WAIT


def test_release_hung_only_releases_the_named_type() -> None:
    mine, other = double("never", name="Mine"), double("never", name="Other")
    mine_thread, _ = in_thread(lambda: mine.start(TOKEN))
    other_thread, _ = in_thread(lambda: other.start(TOKEN))
    wait_for(lambda: mine.start_calls == other.start_calls == 1)
    release_hung("Mine")
    mine_thread.join(WAIT)
    assert not mine_thread.is_alive()
    assert other_thread.is_alive()
    release_hung()
    other_thread.join(WAIT)
    assert not other_thread.is_alive()


def test_false() -> None:
    script = double("false")
    assert script.start(TOKEN) is False
    assert script.start_calls == 1


def test_raises() -> None:
    script = double("raises")
    with pytest.raises(RuntimeError, match=r"^boom$"):
        script.start(TOKEN)
    assert script.start_calls == 1


def test_no_host_port() -> None:
    script = double("no_host_port")
    assert script.start(TOKEN) is True
    assert script.host_port() is None


def test_not_listening() -> None:
    script = double("not_listening")
    assert script.start(TOKEN) is True
    host_port = script.host_port()
    assert host_port is not None
    assert refuses(host_port[1])


def test_stop_raises_after_closing_the_server() -> None:
    script = double("stop_raises")
    script.start(TOKEN)
    host_port = script.host_port()
    assert host_port is not None
    with pytest.raises(RuntimeError, match="stop boom"):
        script.stop()
    assert refuses(host_port[1])
    assert script.stop_calls == 1


def test_stop_hangs_after_closing_the_server() -> None:
    script = double("stop_hangs", name="StopHangs")
    script.start(TOKEN)
    host_port = script.host_port()
    assert host_port is not None
    thread, outcome = in_thread(script.stop)
    wait_for(lambda: script.stop_calls == 1)
    wait_for(lambda: refuses(host_port[1]))
    thread.join(0.3)
    assert thread.is_alive(), "stop() returned although nobody released it"
    release_hung("StopHangs")
    thread.join(WAIT)
    assert outcome == [True]


def test_crash_closes_the_server_without_stop() -> None:
    script = double("starts")
    script.start(TOKEN)
    host_port = script.host_port()
    assert host_port is not None
    server = script.server
    assert server is not None
    script.crash()
    assert refuses(host_port[1])
    assert not server.is_serving
    assert script.server is None
    assert script.stop_calls == 0
    script.stop()  # stopping a crashed session is harmless


# -- the counters --------------------------------------------------------------------------------


def test_overlapping_start_and_stop_are_recorded() -> None:
    script = double("never")
    assert isinstance(script, NeverStartsDouble)
    thread, _ = in_thread(lambda: script.start(TOKEN))
    wait_for(lambda: script.start_calls == 1)
    assert script.overlapped is False
    script.stop()
    assert script.overlapped is True
    script.release()
    thread.join(WAIT)


def test_sequential_calls_never_count_as_overlapping() -> None:
    script = double("false")
    for _ in range(50):
        script.start(TOKEN)
        script.stop()
    assert (script.start_calls, script.stop_calls, script.overlapped) == (50, 50, False)


def test_counters_are_thread_safe() -> None:
    script = double("false")
    barrier = threading.Barrier(8)

    def hammer() -> None:
        barrier.wait()
        for _ in range(500):
            script.start(TOKEN)
            script.stop()

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT * 4)
    assert (script.start_calls, script.stop_calls) == (4000, 4000)
