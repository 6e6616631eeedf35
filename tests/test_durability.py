"""Durability: a gateway killed with SIGKILL keeps its users' desktops, every failure path of a
script ends with a clear reason and a freed index, and many connections leak nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets

from gateway import (
    TIME_LIMITED_DESKTOP,
    GatewayProcess,
    seed_desktop_type,
    start_gateway,
    write_catalog,
)
from inprocess import closed_with, serve, serve_catalog, unique
from rfb_client import RfbClient, WebSocketSource
from support import (
    VncHome,
    await_until,
    free_display,
    kill_pid_tree,
    pids_on_display,
    require_binaries,
    scaled,
)
from vizgate.lifecycle import Timeouts
from vizgate.testing import instances

SERVICE = "Local Software Session"
LINGER = 2.0


# ---------------------------------------------------------------------------------------
# A real desktop survives a killed gateway


@pytest.fixture
def desktop(vnc_home: VncHome, tmp_path: Path) -> Iterator[tuple[Path, int]]:
    require_binaries("vncserver", "Xvnc", "xsetroot")
    display = free_display(100)
    config = write_catalog(tmp_path / "config", {SERVICE: seed_desktop_type(display, ["800x600"])})
    yield config, display
    if pids_on_display(display):
        subprocess.run(["vncserver", "-kill", f":{display}"], check=False, timeout=60)
    for pid in pids_on_display(display):
        kill_pid_tree(pid)


def xvnc_pids(display: int) -> set[int]:
    found = set()
    for pid in pids_on_display(display):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() in {"Xvnc", "Xtigervnc"}:
                found.add(pid)
        except OSError:
            continue
    return found


def paint(display: int, home: Path, colour: str) -> None:
    env = {**os.environ, "DISPLAY": f":{display}", "XAUTHORITY": str(home / ".Xauthority")}
    subprocess.run(["xsetroot", "-solid", colour], env=env, check=True, timeout=10)


async def connect(
    gateway: GatewayProcess, token: str
) -> tuple[RfbClient, websockets.ClientConnection]:
    ws = await websockets.connect(f"ws://127.0.0.1:{gateway.port}/websockify?token={token}")
    client = RfbClient(WebSocketSource(ws))
    await asyncio.wait_for(client.handshake(), scaled(30))
    return client, ws


def restart(gateway: GatewayProcess, tmp_path: Path, config: Path, name: str) -> GatewayProcess:
    """SIGKILL the gateway and start a new one on the same data directory."""
    gateway.process.send_signal(signal.SIGKILL)
    gateway.process.wait(timeout=scaled(10))
    data = tmp_path / "first" / "data"
    return start_gateway(tmp_path / name, config, "--linger", str(LINGER), "--data-dir", str(data))


def status(gateway: GatewayProcess) -> dict[str, list[dict[str, object]]]:
    result: dict[str, list[dict[str, object]]] = gateway.request("/v1/status").json()
    return result


@pytest.mark.integration
async def test_a_killed_gateway_restarts_and_the_same_token_reaches_the_same_desktop(
    desktop: tuple[Path, int], vnc_home: VncHome, tmp_path: Path, gateways: list[GatewayProcess]
) -> None:
    config, display = desktop
    first = start_gateway(tmp_path / "first", config, "--linger", str(LINGER))
    gateways.append(first)
    token = first.request("/v1/reserve/" + urllib.parse.quote(SERVICE)).json()["token"]

    client, ws = await connect(first, token)
    paint(display, vnc_home.path, "#00ff00")

    async def painted() -> bool:
        return await client.pixel(5, 5) == (0, 255, 0)

    await await_until(painted, timeout=scaled(5), message="the colour never showed")
    [xvnc] = xvnc_pids(display)

    second = restart(first, tmp_path, config, "second")
    gateways.append(second)
    await ws.close()
    [adopted] = status(second)["sessions"]
    assert adopted["state"] == "running"

    client, ws = await connect(second, token)
    try:
        assert await client.pixel(5, 5) == (0, 255, 0), "not the same desktop"
        assert xvnc_pids(display) == {xvnc}, "the Xvnc was started again"
    finally:
        await ws.close()
    await await_until(
        lambda: not status(second)["sessions"] and not pids_on_display(display),
        timeout=LINGER + scaled(10),
        message="the adopted session was not stopped after its last viewer left",
    )
    assert token not in second.output()


@pytest.mark.integration
async def test_a_killed_gateway_nobody_returns_to_stops_the_desktop_after_the_linger(
    desktop: tuple[Path, int], tmp_path: Path, gateways: list[GatewayProcess]
) -> None:
    config, display = desktop
    first = start_gateway(tmp_path / "first", config, "--linger", str(LINGER))
    gateways.append(first)
    token = first.request("/v1/reserve/" + urllib.parse.quote(SERVICE)).json()["token"]
    _, ws = await connect(first, token)
    assert xvnc_pids(display)

    second = restart(first, tmp_path, config, "second")
    gateways.append(second)
    await ws.close()
    await await_until(
        lambda: not status(second)["sessions"] and not pids_on_display(display),
        timeout=LINGER + scaled(10),
        message="the orphaned desktop was not stopped",
    )
    [ended] = status(second)["ended"]
    assert ended["end_reason"] == "disconnected"


@pytest.mark.integration
async def test_killing_the_vnc_server_mid_session_ends_it_as_crashed(
    desktop: tuple[Path, int], tmp_path: Path, gateways: list[GatewayProcess]
) -> None:
    config, display = desktop
    gateway = start_gateway(tmp_path / "first", config, "--linger", str(LINGER))
    gateways.append(gateway)
    token = gateway.request("/v1/reserve/" + urllib.parse.quote(SERVICE)).json()["token"]
    _, ws = await connect(gateway, token)
    [xvnc] = xvnc_pids(display)
    os.kill(xvnc, signal.SIGKILL)
    assert await closed_with(ws) == (1011, "VNC server closed the connection")
    await await_until(
        lambda: not status(gateway)["sessions"],
        timeout=scaled(10),
        message="the crashed session did not end",
    )
    [ended] = status(gateway)["ended"]
    assert ended["end_reason"] == "crashed"
    assert "stopping" in gateway.output() or "ended (crashed)" in gateway.output()
    await await_until(lambda: not pids_on_display(display), timeout=scaled(10), message="leftovers")


# ---------------------------------------------------------------------------------------
# Scripts that fail for real


SLEEPY = """
import subprocess
from nexus_remote_service import RemoteServiceScript

class Sleepy(RemoteServiceScript):
    def start(self, token, timestamp=None, options=None):
        with open(self._common_options["log"], "a") as log:
            log.write("start\\n")
        subprocess.call(["sleep", str(self._common_options["sleep"])])
        with open(self._common_options["log"], "a") as log:
            log.write("start returned\\n")
        return False

    def stop(self):
        with open(self._common_options["log"], "a") as log:
            log.write("stop\\n")
        return super().stop()

def realize_service(name="", count=1, index=0, common_options=dict()):
    return Sleepy(name, count=count, index=index, common_options=common_options)
"""

EXITS = """
import socket, subprocess
from nexus_remote_service import RemoteServiceScript

class Exits(RemoteServiceScript):
    def start(self, token, timestamp=None, options=None):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        # A "VNC server" that exits at once: nothing ever listens on the port.
        subprocess.call(["sh", "-c", "exit 3"])
        self.set_host_port("127.0.0.1", port)
        return super().start(token, timestamp=timestamp, options=options)

    def stop(self):
        with open(self._common_options["log"], "a") as log:
            log.write("stop\\n")
        return super().stop()

def realize_service(name="", count=1, index=0, common_options=dict()):
    return Exits(name, count=count, index=index, common_options=common_options)
"""


@pytest.mark.integration
async def test_a_start_that_hangs_past_its_timeout_is_stopped_once_it_returns(
    tmp_path: Path,
) -> None:
    (tmp_path / "sleepy.py").write_text(SLEEPY)
    log = tmp_path / "calls.log"
    catalog = {
        "Sleepy": {
            "script": "sleepy.py",
            "count": 1,
            "options": {"log": str(log), "sleep": 2, "start_timeout": 0.5},
        }
    }
    async with serve_catalog(tmp_path, catalog, Timeouts(stop=5)) as served:
        reservation = await served.broker.reserve("Sleepy")
        async with websockets.connect(served.url(reservation.token)) as ws:
            code, reason = await closed_with(ws)
        assert (code, reason) == (
            1011,
            "session failed to start: start() did not finish within 0.5 s",
        )
        # stop() waits for the hung start() to return, then runs exactly once.
        assert log.read_text() == "start\n"
        await await_until(
            lambda: not served.broker.sessions(), timeout=scaled(10), message="index held"
        )
        assert log.read_text() == "start\nstart returned\nstop\n"
        [ended] = served.broker.history()
        assert ended.end_reason == "start_timeout"
        assert (await served.broker.reserve("Sleepy")).index == 0


@pytest.mark.integration
async def test_a_server_that_exits_at_once_fails_the_readiness_wait(tmp_path: Path) -> None:
    (tmp_path / "exits.py").write_text(EXITS)
    log = tmp_path / "calls.log"
    catalog = {"Exits": {"script": "exits.py", "count": 1, "options": {"log": str(log)}}}
    async with serve_catalog(tmp_path, catalog, Timeouts(ready=0.5, stop=5)) as served:
        reservation = await served.broker.reserve("Exits")
        async with websockets.connect(served.url(reservation.token)) as ws:
            code, reason = await closed_with(ws)
        assert code == 1011
        assert reason.endswith("VNC server did not accept connections within 0.5 s")
        await await_until(
            lambda: not served.broker.sessions(), timeout=scaled(5), message="index held"
        )
        assert log.read_text() == "stop\n"


# ---------------------------------------------------------------------------------------
# Timeouts through the tunnel


async def test_idle_and_max_lifetime_end_sessions_with_their_reasons(tmp_path: Path) -> None:
    idle, aging = unique("Idle"), unique("Aging")
    types = {
        idle: {"behaviour": "starts", "idle_timeout": 0.5},
        aging: {"behaviour": "starts", "max_lifetime": 0.8},
    }
    async with serve(tmp_path, types, Timeouts(stop=5)) as served:
        first = await served.broker.reserve(idle)
        async with websockets.connect(served.url(first.token)) as ws:
            assert await ws.recv() == b"RFB 003.008\n"
            assert await closed_with(ws) == (1001, "no input for 0.5 s")
        second = await served.broker.reserve(aging)
        async with websockets.connect(served.url(second.token)) as ws:
            assert await ws.recv() == b"RFB 003.008\n"

            async def keep_busy() -> None:
                while True:
                    await ws.send(b"x")
                    await asyncio.sleep(0.05)  # a viewer typing, not synchronisation

            busy = asyncio.create_task(keep_busy())
            try:
                code, reason = await closed_with(ws)
            finally:
                busy.cancel()
            assert (code, reason) == (
                1001,
                "the session reached its maximum lifetime of 0.8 s",
            )
        await await_until(
            lambda: not served.broker.sessions(), timeout=scaled(5), message="not stopped"
        )
        reasons = {s.service: s.end_reason for s in served.broker.history()}
        assert reasons == {idle: "idle_timeout", aging: "max_lifetime"}


# ---------------------------------------------------------------------------------------
# Nothing leaks


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_a_storm_of_connections_leaks_nothing_and_stops_once(tmp_path: Path) -> None:
    name = unique("Storm")
    async with serve(tmp_path, {name: {"behaviour": "starts"}}, Timeouts(linger=0.5)) as served:
        reservation = await served.broker.reserve(name)

        async def cycle() -> None:
            async with websockets.connect(served.url(reservation.token)) as ws:
                assert await ws.recv() == b"RFB 003.008\n"
                await ws.send(b"ping")
                assert await ws.recv() == b"ping"

        await cycle()  # the first start creates the instance's worker thread
        fds, threads = open_fds(), threading.active_count()
        tasks = len(asyncio.all_tasks())
        for _ in range(200):
            await cycle()
        [double] = [d for d in instances(name) if d.start_calls]
        await await_until(
            lambda: not served.broker.sessions(), timeout=scaled(10), message="never stopped"
        )
        assert (double.start_calls, double.stop_calls) == (1, 1)
        assert not double.overlapped
        await await_until(
            lambda: open_fds() <= fds and len(asyncio.all_tasks()) <= tasks,
            timeout=scaled(5),
            message=f"leaked: fds {fds} -> {open_fds()}, tasks {tasks} -> "
            f"{len(asyncio.all_tasks())}",
        )
        assert threading.active_count() <= threads


@pytest.mark.integration
async def test_a_session_keeps_the_end_its_script_reported_across_a_killed_gateway(
    vnc_home: VncHome, tmp_path: Path, gateways: list[GatewayProcess]
) -> None:
    require_binaries("vncserver", "Xvnc")
    display = free_display(100)
    limited = seed_desktop_type(
        display, ["800x600"], script=TIME_LIMITED_DESKTOP, time_limit_seconds=600
    )
    config = write_catalog(tmp_path / "config", {SERVICE: limited})
    try:
        first = start_gateway(tmp_path / "first", config, "--linger", str(LINGER))
        gateways.append(first)
        token = first.request("/v1/reserve/" + urllib.parse.quote(SERVICE)).json()["token"]
        _, ws = await connect(first, token)
        [running] = status(first)["sessions"]
        assert running["ends_because"] == "time_limit"

        second = restart(first, tmp_path, config, "second")
        gateways.append(second)
        await ws.close()
        [adopted] = status(second)["sessions"]
        assert adopted["state"] == "running"
        assert (adopted["ends_because"], adopted["ends_at"]) == ("time_limit", running["ends_at"])
    finally:
        if pids_on_display(display):
            subprocess.run(["vncserver", "-kill", f":{display}"], check=False, timeout=60)
        for pid in pids_on_display(display):
            kill_pid_tree(pid)
