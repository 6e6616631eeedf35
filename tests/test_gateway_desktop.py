"""The whole path with real things: ``vizgate serve`` as a process, the seed's unmodified
desktop_session.py starting real TigerVNC with VNC authentication on, and an RFB client that
speaks only security type None, over ws and over wss.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets

from gateway import (
    GatewayProcess,
    seed_desktop_type,
    self_signed_certificate,
    start_gateway,
    write_catalog,
)
from rfb_client import RfbClient, RfbRefused, StreamSource, WebSocketSource
from support import (
    VncHome,
    await_until,
    free_display,
    kill_pid_tree,
    pids_on_display,
    port_accepts,
    require_binaries,
    scaled,
)

pytestmark = pytest.mark.integration

SERVICE = "Local Software Session"
LINGER = 1.0


@pytest.fixture
def desktop_config(vnc_home: VncHome, tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """The seed's type with the unmodified script and the VNC password file the gateway answers
    with; sizes include the one the tests ask for. A desktop a failed test left is killed."""
    require_binaries("vncserver", "Xvnc")
    display_base = free_display(100)
    config = write_catalog(
        tmp_path / "config", {SERVICE: seed_desktop_type(display_base, ["1024x768", "1600x1200"])}
    )
    yield config, display_base
    for pid in pids_on_display(display_base):
        kill_pid_tree(pid)


def status(gateway: GatewayProcess) -> dict[str, object]:
    response = gateway.request("/v1/status")
    assert response.status == 200
    result: dict[str, object] = response.json()
    return result


@pytest.mark.parametrize("scheme", ["ws", "wss"])
async def test_a_desktop_through_the_gateway_with_the_password_kept_at_the_gateway(
    scheme: str,
    desktop_config: tuple[Path, int],
    vnc_home: VncHome,
    tmp_path: Path,
    gateways: list[GatewayProcess],
) -> None:
    config, display = desktop_config
    args = ["--linger", str(LINGER)]
    client_tls: ssl.SSLContext | None = None
    if scheme == "wss":
        cert, key = self_signed_certificate(tmp_path)
        args += ["--cert", str(cert), "--key", str(key)]
        client_tls = ssl.create_default_context(cafile=str(cert))
    gateway = start_gateway(tmp_path / "run", config, *args, "--stop-sessions-on-exit")
    gateway.ssl_context = client_tls
    gateways.append(gateway)

    reply = gateway.request(
        "/v1/reserve/" + urllib.parse.quote(SERVICE), {"size": "1024x768", "username": "alice"}
    )
    assert reply.status == 200, reply.text
    token = reply.json()["token"]

    url = f"{scheme}://127.0.0.1:{gateway.port}/websockify?token={token}"
    async with websockets.connect(url, subprotocols=["binary"], ssl=client_tls) as ws:
        assert ws.subprotocol == "binary"
        client = RfbClient(WebSocketSource(ws))
        await asyncio.wait_for(client.handshake(), scaled(30))
        # The browser is offered None only; the gateway answered VncAuth for it.
        assert client.offered_security == [1]
        assert (client.width, client.height) == (1024, 768)
        await client.request_update()
        rects = await asyncio.wait_for(client.read_update(), scaled(10))
        assert rects, "an update with no rectangle"

        [session] = status(gateway)["sessions"]  # type: ignore[misc]
        assert session["state"] == "running"
        assert session["connections"] == 1
        assert session["user"] == "alice"
        assert token not in json.dumps(status(gateway))

        # The same None-only client straight at the VNC port is refused: it needs the password.
        reader, writer = await asyncio.open_connection("127.0.0.1", 5900 + display)
        try:
            with pytest.raises(RfbRefused, match="no usable security type"):
                await asyncio.wait_for(RfbClient(StreamSource(reader, writer)).handshake(), 10)
        finally:
            writer.close()

    def ended() -> bool:
        current = status(gateway)
        return not current["sessions"] and not pids_on_display(display)

    await await_until(ended, timeout=LINGER + scaled(5), message="the session did not end")
    [last] = status(gateway)["ended"]  # type: ignore[misc]
    assert last["end_reason"] == "disconnected"
    assert not port_accepts("127.0.0.1", 5900 + display)

    log = gateway.output()
    assert token not in log
    assert vnc_home.password.decode() not in log
