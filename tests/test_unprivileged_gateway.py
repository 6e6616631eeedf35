"""The gateway as a site runs it (``examples/systemd``): as an unprivileged account of its own,
with its HOME, its 0700 data directory and the seed's unmodified desktop started as that
account, reached through the tunnel by an RFB client.

The test makes the account (``useradd``), so it runs as root. The account runs this checkout's
code with this run's interpreter when it can reach it, else with the system's Python of the
same version (an interpreter under a private home, as pyenv installs it, is out of its reach).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets

from gateway import (
    GatewayProcess,
    seed_desktop_type,
    wait_listening,
    write_catalog,
)
from rfb_client import RfbClient, WebSocketSource
from support import (
    await_until,
    free_display,
    kill_pid_tree,
    pids_on_display,
    require_binaries,
    scaled,
)
from unix_accounts import UnixAccount, account_env, as_account, python_for, temporary_account

pytestmark = pytest.mark.integration

SERVICE = "Local Software Session"


@pytest.fixture
def service_account() -> Iterator[UnixAccount]:
    if os.geteuid() != 0:
        pytest.skip("making a Unix account needs root")
    require_binaries("useradd", "userdel", "vncserver", "Xvnc", "vncpasswd")
    with temporary_account() as account:
        yield account


async def test_an_unprivileged_gateway_serves_the_seeds_desktop_started_as_its_account(
    service_account: UnixAccount, tmp_path: Path
) -> None:
    account = service_account
    python = python_for(account)
    env = account_env(account)
    # What the site prepares: the account's ~/.vnc (as `vizgate demo` does) and the catalog.
    subprocess.run(
        [python, "-c", "import pathlib; from vizgate.vnc_home import prepare_vnc_home; "
         "prepare_vnc_home(pathlib.Path.home())"],
        env=env, check=True, capture_output=True, timeout=scaled(60), **as_account(account),  # type: ignore[arg-type]
    )  # fmt: skip
    display = free_display(100)
    config = write_catalog(
        account.home / "config", {SERVICE: seed_desktop_type(display, ["1024x768"])}
    )
    os.chown(config.parent, account.uid, account.gid)
    os.chown(config, account.uid, account.gid)
    data = account.home / "data"
    run = tmp_path / "run"
    run.mkdir()
    stdout_path, stderr_path = run / "stdout.txt", run / "stderr.txt"
    with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            [
                python, "-m", "vizgate.server", "--config", str(config), "--port", "0",
                "--data-dir", str(data), "--linger", "1", "--stop-sessions-on-exit",
            ],
            stdout=stdout, stderr=stderr, env=env, cwd=account.home,
            **as_account(account),  # type: ignore[arg-type]
        )  # fmt: skip
    gateway = GatewayProcess(process, stdout_path, stderr_path)
    try:
        wait_listening(gateway)
        assert (data.stat().st_uid, data.stat().st_mode & 0o777) == (account.uid, 0o700)
        assert (data / "secret_key").stat().st_uid == account.uid
        reply = gateway.request("/v1/reserve/" + urllib.parse.quote(SERVICE), {"size": "1024x768"})
        assert reply.status == 200, reply.text
        url = f"ws://127.0.0.1:{gateway.port}/websockify?token={reply.json()['token']}"
        async with websockets.connect(url, subprotocols=["binary"]) as ws:
            client = RfbClient(WebSocketSource(ws))
            await asyncio.wait_for(client.handshake(), scaled(30))
            assert (client.width, client.height) == (1024, 768)
            await client.request_update()
            assert await asyncio.wait_for(client.read_update(), scaled(10))
            owners = {Path(f"/proc/{pid}").stat().st_uid for pid in pids_on_display(display)}
            assert owners == {account.uid}, "the desktop does not run as the gateway's account"
        await await_until(
            lambda: not pids_on_display(display),
            timeout=scaled(15),
            message="the desktop outlived its last viewer",
        )
        assert "Traceback" not in gateway.output()
        assert (account.home / ".vnc").is_dir()
    finally:
        gateway.stop()
        for pid in pids_on_display(display):
            kill_pid_tree(pid)
