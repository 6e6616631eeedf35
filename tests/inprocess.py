"""A gateway's tunnel and broker served in the test's own event loop: a real uvicorn on
127.0.0.1 and real WebSocket clients, with the broker reachable for assertions."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn
import websockets
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode

from support import await_until, scaled
from vizgate.broker import Broker
from vizgate.catalog import load_catalog
from vizgate.lifecycle import Timeouts
from vizgate.server import WS_IMPLEMENTATION
from vizgate.testing import DOUBLE_SESSION_SCRIPT
from vizgate.tunnel import Tunnel

__all__ = [
    "Served",
    "closed_with",
    "handshake",
    "masked_frame",
    "read_frames",
    "serve",
    "serve_catalog",
    "unique",
]


@dataclass
class Served:
    broker: Broker
    port: int

    def url(self, token: str, path: str = "/websockify") -> str:
        return f"ws://127.0.0.1:{self.port}{path}?token={token}"


def serve(
    tmp_path: Path,
    types: dict[str, dict[str, object]],
    timeouts: Timeouts,
    *,
    ws: type[asyncio.Protocol] | str = WS_IMPLEMENTATION,
    tls: tuple[Path, Path] | None = None,
) -> contextlib.AbstractAsyncContextManager[Served]:
    """Serve types of the test-double script (2 instances each) with these options.

    Type names should be unique per test: the doubles' registry is per process. ``ws`` is
    uvicorn's WebSocket protocol: the gateway's (with the fast path) or another.
    """
    return serve_catalog(
        tmp_path,
        {
            name: {"script": str(DOUBLE_SESSION_SCRIPT), "count": 2, "options": options}
            for name, options in types.items()
        },
        timeouts,
        ws=ws,
        tls=tls,
    )


@contextlib.asynccontextmanager
async def serve_catalog(
    tmp_path: Path,
    catalog: dict[str, Any],
    timeouts: Timeouts,
    *,
    ws: type[asyncio.Protocol] | str = WS_IMPLEMENTATION,
    ws_ping_interval: float | None = None,
    tls: tuple[Path, Path] | None = None,
) -> AsyncIterator[Served]:
    """Serve an external_services.json made of ``catalog``; over TLS with ``tls``, a
    (certificate, key) pair."""
    config = tmp_path / "external_services.json"
    config.write_text(json.dumps(catalog))
    broker = Broker(load_catalog(config), timeouts=timeouts)
    await broker.open()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(
        uvicorn.Config(
            Tunnel(broker),
            ws=ws,
            lifespan="off",
            log_config=None,
            ws_per_message_deflate=False,
            ws_ping_interval=ws_ping_interval,
            ws_ping_timeout=ws_ping_interval,
            ssl_certfile=tls[0] if tls else None,
            ssl_keyfile=tls[1] if tls else None,
        )
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    await await_until(lambda: server.started, timeout=scaled(10), message="uvicorn did not start")
    try:
        yield Served(broker, sock.getsockname()[1])
    finally:
        await broker.close()
        server.should_exit = True
        await task
        sock.close()


def handshake(port: int, token: str) -> bytes:
    """A WebSocket upgrade request for the tunnel, as raw bytes."""
    return (
        f"GET /websockify?token={token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


async def read_frames(reader: asyncio.StreamReader, want: int) -> tuple[bytes, list[int]]:
    """Binary payloads (joined) and close codes until ``want`` payload bytes have come."""
    data = b""
    codes: list[int] = []
    while len(data) < want:
        head = await reader.readexactly(2)
        length = head[1] & 0x7F
        if length == 126:
            length = struct.unpack("!H", await reader.readexactly(2))[0]
        elif length == 127:
            length = struct.unpack("!Q", await reader.readexactly(8))[0]
        payload = await reader.readexactly(length)
        if head[0] & 0x0F == 0x8:
            codes.append(struct.unpack("!H", payload[:2])[0])
            break
        data += payload
    return data, codes


def masked_frame(payload: bytes) -> bytes:
    """A final binary client frame (masked, as RFC 6455 requires of clients)."""
    return Frame(Opcode.BINARY, payload).serialize(mask=True, extensions=[])


def unique(name: str) -> str:
    return f"{name} {uuid.uuid4().hex[:8]}"


async def closed_with(ws: websockets.ClientConnection) -> tuple[int, str]:
    """Read until the server closes; its close code and reason."""
    with pytest.raises(ConnectionClosed) as closed:
        await asyncio.wait_for(drain(ws), scaled(10))
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code, closed.value.rcvd.reason


async def drain(ws: websockets.ClientConnection) -> None:
    while True:
        await ws.recv()
