"""The WebSocket tunnel served by a real uvicorn on 127.0.0.1, with the broker in the same loop
and the shipped test-double scripts standing in for VNC servers."""

from __future__ import annotations

import asyncio
import os
import random
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import websockets

from gateway import self_signed_certificate
from inprocess import Served, closed_with, handshake, masked_frame, read_frames, serve, unique
from support import await_until, scaled
from vizgate.lifecycle import Timeouts
from vizgate.server import WS_IMPLEMENTATION
from vizgate.testing import instances

LINGER = 0.3


@pytest.fixture(params=["fastpath", "asgi"])
def ws(request: pytest.FixtureRequest) -> type[asyncio.Protocol] | str:
    """uvicorn's WebSocket protocol: the gateway's, whose connections the tunnel takes over,
    and uvicorn's own, with which the tunnel relays through ASGI."""
    return WS_IMPLEMENTATION if request.param == "fastpath" else "websockets-sansio"


@pytest.fixture
async def echo(
    tmp_path: Path, ws: type[asyncio.Protocol] | str
) -> AsyncIterator[tuple[Served, str]]:
    name = unique("Echo")
    async with serve(
        tmp_path, {name: {"behaviour": "starts"}}, Timeouts(linger=LINGER, stop=5), ws=ws
    ) as served:
        yield served, name


async def test_a_made_up_token_is_closed_with_1008(echo: tuple[Served, str]) -> None:
    served, _ = echo
    for token in ("made-up", ""):
        async with websockets.connect(served.url(token)) as ws:
            assert await closed_with(ws) == (1008, "unknown, expired or released token")


async def test_the_path_is_ignored_and_binary_is_accepted(echo: tuple[Served, str]) -> None:
    served, name = echo
    reservation = await served.broker.reserve(name)
    url = served.url(reservation.token, path="/any/path/at/all")
    async with websockets.connect(url, subprotocols=["binary"]) as ws:
        assert ws.subprotocol == "binary"
        assert await ws.recv() == b"RFB 003.008\n"


async def test_twenty_clients_on_two_sessions_each_get_their_own_bytes_back(
    echo: tuple[Served, str],
) -> None:
    served, name = echo
    tokens = [(await served.broker.reserve(name)).token for _ in range(2)]

    async def client(number: int) -> int:
        async with websockets.connect(served.url(tokens[number % 2])) as ws:
            assert await ws.recv() == b"RFB 003.008\n"
            sent = received = b""
            for round_number in range(20):
                payload = os.urandom(1 + (number * 997 + round_number * 131) % 70000)
                await ws.send(payload)
                sent += payload
                while len(received) < len(sent):
                    received += await asyncio.wait_for(ws.recv(), scaled(10))  # type: ignore[operator]
            assert received == sent
            return len(sent)

    moved = await asyncio.gather(*(client(n) for n in range(20)))
    assert all(moved)
    doubles = instances(name)
    assert [d.start_calls for d in doubles] == [1, 1], "one start() per session"

    await await_until(
        lambda: not served.broker.sessions(), timeout=LINGER + scaled(5), message="not stopped"
    )
    assert [d.stop_calls for d in doubles] == [1, 1]
    history = served.broker.history()
    assert sum(s.bytes_to_server for s in history) == sum(moved)
    assert sum(s.bytes_to_client for s in history) == sum(moved) + 20 * len(b"RFB 003.008\n")


async def test_a_viewer_that_stops_reading_holds_the_stream_back_and_loses_nothing(
    echo: tuple[Served, str],
) -> None:
    """Flow control both ways: a viewer that sends much more than every buffer on the way can
    hold, and reads nothing until the gateway has written a lot towards it, gets every byte
    back in order. While it does not read, the gateway stops reading the echo server, which
    stops reading the gateway, which stops reading the viewer. Meanwhile a second viewer, on
    the other session, streams as much through the same gateway and reads as it goes: what
    the gateway holds for the first must not be what it reads the second's stream into."""
    served, name = echo
    await _stalled_and_flowing(served, name, None)


async def test_the_same_over_tls(tmp_path: Path) -> None:
    """The same over wss://, where the gateway's reads and writes pass through TLS."""
    cert, key = self_signed_certificate(tmp_path)
    name = unique("TlsEcho")
    async with serve(
        tmp_path, {name: {"behaviour": "starts"}}, Timeouts(linger=LINGER, stop=5), tls=(cert, key)
    ) as served:
        await _stalled_and_flowing(served, name, ssl.create_default_context(cafile=str(cert)))


async def _stalled_and_flowing(served: Served, name: str, tls: ssl.SSLContext | None) -> None:
    stalled = await _Viewer.open(served, (await served.broker.reserve(name)).token, 1, tls)
    flowing = await _Viewer.open(served, (await served.broker.reserve(name)).token, 2, tls)
    try:
        sending = asyncio.create_task(stalled.send_all())
        try:
            # The first reads nothing until the gateway has written past what its socket and
            # this client's buffers take.
            await await_until(
                lambda: _bytes_to_client(served, stalled.token) >= 256 * 1024 or sending.done(),
                timeout=scaled(20),
                message="nothing relayed to the viewer",
            )
            await asyncio.wait_for(
                asyncio.gather(flowing.send_all(), flowing.read_all()), scaled(60)
            )
            await asyncio.wait_for(stalled.read_all(), scaled(60))
            await asyncio.wait_for(sending, scaled(10))
        finally:
            sending.cancel()
    finally:
        stalled.close()
        flowing.close()


@dataclass
class _Viewer:
    """A raw WebSocket client that sends 24 MiB to the echo double and checks what comes back."""

    token: str
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    frames: list[bytes]

    @classmethod
    async def open(
        cls, served: Served, token: str, seed: int, tls: ssl.SSLContext | None
    ) -> _Viewer:
        block = random.Random(seed).randbytes(1 << 20)
        # Frames of varying sizes, each a different slice of the block.
        frames = [block[(n * 7919) % 4096 :][: 4096 + (n * 52361) % 200_000] for n in range(240)]
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port, ssl=tls)
        writer.write(handshake(served.port, token))
        response = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), scaled(10))
        assert response.startswith(b"HTTP/1.1 101")
        banner, codes = await asyncio.wait_for(read_frames(reader, 1), scaled(10))
        assert (banner, codes) == (b"RFB 003.008\n", [])
        return cls(token, reader, writer, frames)

    async def send_all(self) -> None:
        for frame in self.frames:
            self.writer.write(masked_frame(frame))
            await self.writer.drain()

    async def read_all(self) -> None:
        want = b"".join(self.frames)
        received, codes = await read_frames(self.reader, len(want))
        assert codes == []
        assert received == want

    def close(self) -> None:
        self.writer.close()


def _bytes_to_client(served: Served, token: str) -> int:
    session = served.broker.session_of_token(token)
    return session.bytes_to_client if session is not None else 0


async def test_a_start_that_returns_false_closes_with_1011_and_frees_the_index(
    tmp_path: Path, ws: type[asyncio.Protocol] | str
) -> None:
    name = unique("False")
    async with serve(tmp_path, {name: {"behaviour": "false"}}, Timeouts(stop=5), ws=ws) as served:
        reservation = await served.broker.reserve(name)
        async with websockets.connect(served.url(reservation.token)) as ws:
            code, reason = await closed_with(ws)
        assert code == 1011
        assert reason == "session failed to start: start() returned False"
        double = instances(name)[reservation.index]
        await await_until(lambda: double.stop_calls == 1, timeout=scaled(5), message="no stop()")
        assert double.start_calls == 1
        assert not double.overlapped
        await await_until(
            lambda: not served.broker.sessions(), timeout=scaled(5), message="index still held"
        )
        # Freed; the next reservation passes over it while another instance is free.
        assert (await served.broker.reserve(name)).index != reservation.index
        assert [info.failed_recently for info in served.broker.services()] == [
            {reservation.index: pytest.approx(0, abs=scaled(10))}
        ]


async def test_a_port_that_never_accepts_closes_with_1011_saying_so(
    tmp_path: Path, ws: type[asyncio.Protocol] | str
) -> None:
    name = unique("Deaf")
    async with serve(
        tmp_path, {name: {"behaviour": "not_listening"}}, Timeouts(ready=0.5, stop=5), ws=ws
    ) as served:
        reservation = await served.broker.reserve(name)
        async with websockets.connect(served.url(reservation.token)) as ws:
            code, reason = await closed_with(ws)
        assert code == 1011
        assert reason == (
            "session failed to start: VNC server did not accept connections within 0.5 s"
        )


async def test_release_closes_viewers_with_1001(echo: tuple[Served, str]) -> None:
    served, name = echo
    reservation = await served.broker.reserve(name)
    async with websockets.connect(served.url(reservation.token)) as ws:
        assert await ws.recv() == b"RFB 003.008\n"
        served.broker.release(reservation.token)
        assert await closed_with(ws) == (1001, "the session was released")
    # A released token is refused from then on.
    async with websockets.connect(served.url(reservation.token)) as ws:
        assert (await closed_with(ws))[0] == 1008


async def test_the_vnc_server_going_away_closes_with_1011(echo: tuple[Served, str]) -> None:
    served, name = echo
    reservation = await served.broker.reserve(name)
    async with websockets.connect(served.url(reservation.token)) as ws:
        assert await ws.recv() == b"RFB 003.008\n"
        server = instances(name)[reservation.index].server
        assert server is not None
        server.close()
        assert await closed_with(ws) == (1011, "VNC server closed the connection")


async def test_an_unused_reservation_is_reclaimed_after_the_timeout(
    tmp_path: Path, ws: type[asyncio.Protocol] | str
) -> None:
    name = unique("Reclaim")
    async with serve(
        tmp_path, {name: {"behaviour": "starts"}}, Timeouts(reservation=0.5), ws=ws
    ) as served:
        reservation = await served.broker.reserve(name)
        await await_until(
            lambda: not served.broker.sessions(), timeout=scaled(5), message="not reclaimed"
        )
        assert served.broker.history()[0].end_reason == "reservation_timeout"
        assert instances(name)[reservation.index].start_calls == 0
        async with websockets.connect(served.url(reservation.token)) as ws:
            assert (await closed_with(ws))[0] == 1008


async def test_what_a_client_sends_while_the_session_starts_is_delivered(
    tmp_path: Path, ws: type[asyncio.Protocol] | str
) -> None:
    name = unique("Slow")
    async with serve(
        tmp_path, {name: {"behaviour": "slow", "delay": 0.5}}, Timeouts(stop=5), ws=ws
    ) as served:
        reservation = await served.broker.reserve(name)
        async with websockets.connect(served.url(reservation.token)) as ws:
            await ws.send(b"spoken first")
            received = b""
            while len(received) < len(b"RFB 003.008\nspoken first"):
                received += await asyncio.wait_for(ws.recv(), scaled(10))  # type: ignore[operator]
            assert received == b"RFB 003.008\nspoken first"


async def test_too_much_before_the_session_runs_is_refused(
    tmp_path: Path, ws: type[asyncio.Protocol] | str
) -> None:
    name = unique("Slow")
    async with serve(
        tmp_path, {name: {"behaviour": "slow", "delay": 2}}, Timeouts(stop=5), ws=ws
    ) as served:
        reservation = await served.broker.reserve(name)
        async with websockets.connect(served.url(reservation.token)) as ws:
            for _ in range(3):
                await ws.send(bytes(30 * 1024))
            assert await closed_with(ws) == (1008, "too much data before the session ran")
