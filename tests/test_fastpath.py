"""The tunnel's fast path (vizgate.fastpath): its frame parser, sans-I/O, the uvicorn internals
the takeover relies on, and taken-over connections served by a real uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
import websockets
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode

from inprocess import Served, closed_with, handshake, read_frames, serve, unique
from support import await_until, scaled
from vizgate.fastpath import TAKEOVER_EXTENSION, Takeover, TakeoverProtocol
from vizgate.lifecycle import Timeouts
from vizgate.server import WS_IMPLEMENTATION
from vizgate.wsframes import (
    Close,
    Data,
    Failure,
    FrameParser,
    Ping,
    Pong,
    close_frame,
    frame_header,
)

MASK = b"\x37\xfa\x21\x3d"


def client_frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bytes = MASK) -> bytes:
    """A client frame as RFC 6455 §5.2 lays it out, built here independently of the parser."""
    first = (0x80 if fin else 0) | opcode
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", first, 0x80 | length)
    elif length < 65536:
        header = struct.pack("!BBH", first, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", first, 0x80 | 127, length)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + masked


def parse_in_pieces(parser: FrameParser, stream: bytes, piece: int) -> list[object]:
    events: list[object] = []
    for start in range(0, len(stream), piece):
        events.extend(parser.receive(stream[start : start + piece]))
    return events


def joined(events: list[object]) -> list[object]:
    """Data slices joined into whole messages; other events as they are."""
    result: list[object] = []
    buffer = b""
    for event in events:
        if isinstance(event, Data):
            buffer += event.data
            if event.end:
                result.append(buffer)
                buffer = b""
        else:
            result.append(event)
    return result


@pytest.mark.parametrize("piece", [1, 2, 3, 7, 100, 1 << 20])
def test_masked_frames_of_every_length_form_parse_in_any_pieces(piece: int) -> None:
    payloads = [b"", b"x", os.urandom(125), os.urandom(126), os.urandom(65535), os.urandom(70000)]
    stream = b"".join(client_frame(0x2, p) for p in payloads)
    assert joined(parse_in_pieces(FrameParser(1 << 20), stream, piece)) == payloads


def test_a_small_frame_read_whole_parses_as_it_does_in_pieces() -> None:
    """A whole small binary frame in one read (a pointer or key event) takes a shorter way
    through the parser; it must end the same."""
    for length in (0, 1, 6, 8, 100, 125):
        for mask in (MASK, b"\x00\x00\x00\x00", os.urandom(4)):
            frame = client_frame(0x2, os.urandom(length), mask=mask)
            whole = FrameParser(1 << 20).receive(memoryview(bytearray(frame)))
            assert whole == joined_events(parse_in_pieces(FrameParser(1 << 20), frame, 1))


def test_what_is_not_a_small_binary_frame_is_read_the_general_way() -> None:
    payload = os.urandom(124)
    # A 16-bit length of 124 (not minimal, but a frame): 132 bytes in all, as many as a frame
    # with a 7-bit length of 126 would have.
    frame = struct.pack("!BBH", 0x82, 0x80 | 126, 124) + MASK + client_frame(0x2, payload)[6:]
    assert len(frame) == 132
    assert FrameParser().receive(frame) == [Data(payload, end=True)]
    assert FrameParser(max_size=10).receive(client_frame(0x2, b"x" * 11)) == [
        Failure(1009, "message over the limit of 10 bytes")
    ]
    assert FrameParser().receive(client_frame(0x2, b"x", fin=False)) == [Data(b"x", end=False)]
    unmasked = struct.pack("!BB", 0x82, 4) + b"abcd"
    assert FrameParser().receive(unmasked + b"xx") == [
        Failure(1002, "client frames must be masked")
    ]
    fragmented = FrameParser()
    assert fragmented.receive(client_frame(0x2, b"a", fin=False)) == [Data(b"a", end=False)]
    assert fragmented.receive(client_frame(0x2, b"b")) == [
        Failure(1002, "expected a continuation frame")
    ]


def joined_events(events: list[object]) -> list[object]:
    """Consecutive data slices of one message as one event, as a whole read gives them."""
    result: list[object] = []
    for event in events:
        if (
            isinstance(event, Data)
            and result
            and isinstance(result[-1], Data)
            and not result[-1].end
        ):
            result[-1] = Data(result[-1].data + event.data, event.end)
        else:
            result.append(event)
    return result


def test_payload_slices_come_out_unmasked_as_they_arrive() -> None:
    payload = os.urandom(1000)
    frame = client_frame(0x2, payload)
    parser = FrameParser()
    first = parser.receive(frame[:500])
    assert first == [Data(payload[: 500 - 8], end=False)]
    assert parser.receive(frame[500:]) == [Data(payload[500 - 8 :], end=True)]


def test_websockets_own_client_frames_parse() -> None:
    payloads = [os.urandom(n) for n in (0, 5, 300, 70000)]
    stream = b"".join(Frame(Opcode.BINARY, p).serialize(mask=True, extensions=[]) for p in payloads)
    assert joined(parse_in_pieces(FrameParser(), stream, 4096)) == payloads


def test_fragments_with_control_frames_between_them() -> None:
    stream = (
        client_frame(0x1, "héllo ".encode(), fin=False)
        + client_frame(0x9, b"ping!")
        + client_frame(0x0, b"wor", fin=False)
        + client_frame(0xA, b"pong")
        + client_frame(0x0, b"ld")
        + client_frame(0x8, struct.pack("!H", 1000) + b"bye")
    )
    for piece in (1, 5, len(stream)):
        events = joined(parse_in_pieces(FrameParser(), stream, piece))
        assert events == [
            Ping(b"ping!"),
            Pong(b"pong"),
            "héllo world".encode(),
            Close(1000, "bye"),
        ]


def test_a_close_without_a_code_is_1005_and_nothing_is_read_after_a_close() -> None:
    parser = FrameParser()
    assert parser.receive(client_frame(0x8, b"") + client_frame(0x2, b"late")) == [Close(1005, "")]
    assert parser.done
    assert parser.receive(client_frame(0x2, b"later")) == []


@pytest.mark.parametrize(
    ("stream", "code"),
    [
        (client_frame(0x3, b"x"), 1002),  # a reserved data opcode
        (client_frame(0xB, b"x"), 1002),  # a reserved control opcode
        (client_frame(0x0, b"x"), 1002),  # a continuation with no message begun
        (client_frame(0x2, b"a", fin=False) + client_frame(0x2, b"b"), 1002),
        (client_frame(0x9, b"x", fin=False), 1002),  # a fragmented control frame
        (client_frame(0x9, bytes(126)), 1002),  # a control frame over 125 bytes
        (bytes([0x82, 0x01]) + b"x", 1002),  # unmasked
        (bytes([0xC2, 0x81]) + MASK + b"x", 1002),  # RSV1 without an extension
        (client_frame(0x8, b"\x03"), 1002),  # a close payload of one byte
        (client_frame(0x8, struct.pack("!H", 1005)), 1002),  # a code never sent
        (client_frame(0x8, struct.pack("!H", 1000) + b"\xff"), 1007),
        (client_frame(0x1, b"\xc3\x28"), 1007),  # not UTF-8
        (client_frame(0x2, bytes(101)), 1009),
        (client_frame(0x2, bytes(60), fin=False) + client_frame(0x0, bytes(60)), 1009),
    ],
)
def test_protocol_violations_fail_with_their_close_code(stream: bytes, code: int) -> None:
    events = parse_in_pieces(FrameParser(100), stream, 1)
    assert isinstance(events[-1], Failure)
    assert events[-1].code == code
    assert not any(isinstance(event, Failure) for event in events[:-1])


def test_an_oversize_frame_is_refused_from_its_header() -> None:
    header = struct.pack("!BBQ", 0x82, 0x80 | 127, 1 << 40) + MASK
    assert FrameParser(1 << 20).receive(header) == [
        Failure(1009, "message over the limit of 1048576 bytes")
    ]


def test_text_split_inside_a_character_is_accepted() -> None:
    encoded = "€uro".encode()
    stream = client_frame(0x1, encoded[:1], fin=False) + client_frame(0x0, encoded[1:])
    assert joined(FrameParser().receive(stream)) == [encoded]


def test_a_message_begun_before_the_takeover_continues() -> None:
    parser = FrameParser(10, message="bytes", prefix=b"12345")
    assert joined(parser.receive(client_frame(0x0, b"678"))) == [b"678"]
    parser = FrameParser(10, message="bytes", prefix=b"12345")
    assert isinstance(parser.receive(client_frame(0x0, b"678901"))[0], Failure)


def test_server_frames_are_what_websockets_reads() -> None:
    for length in (0, 125, 126, 65535, 65536):
        payload = os.urandom(length)
        serialized = Frame(Opcode.BINARY, payload).serialize(mask=False, extensions=[])
        assert frame_header(length) + payload == serialized
    assert close_frame(1001, "bye") == Frame(
        Opcode.CLOSE, struct.pack("!H", 1001) + b"bye"
    ).serialize(mask=False, extensions=[])
    assert close_frame(1005, "") == b"\x88\x00"


def test_the_uvicorn_internals_the_takeover_relies_on_are_there() -> None:
    """Fails loudly when an uvicorn (or websockets) upgrade changes what the takeover uses."""
    assert issubclass(TakeoverProtocol, WebSocketsSansIOProtocol)
    assert WS_IMPLEMENTATION is TakeoverProtocol
    for method in (
        "handle_connect",
        "data_received",
        "connection_lost",
        "pause_writing",
        "resume_writing",
        "shutdown",
        "stop_keepalive",
        "handle_events",
        "run_asgi",
    ):
        assert callable(getattr(WebSocketsSansIOProtocol, method)), method
    config = uvicorn.Config(app=lambda *a: None, ws=TakeoverProtocol, lifespan="off")
    config.load()
    from uvicorn.server import ServerState

    protocol = TakeoverProtocol(config, ServerState(), {}, _loop=asyncio.new_event_loop())
    try:
        for attribute in (
            "conn",
            "queue",
            "frames",
            "curr_msg_data_type",
            "read_paused",
            "handshake_complete",
            "close_sent",
            "close_timer",
            "close_timeout",
            "transport",
            "config",
            "loop",
            "writable",
            "disconnected",
        ):
            assert hasattr(protocol, attribute), attribute
        assert isinstance(protocol.queue, asyncio.Queue)
        assert protocol.frames == []
        assert protocol.curr_msg_data_type in ("bytes", "text")
        assert isinstance(protocol.conn.reader.buffer, bytearray)
        assert protocol.close_timer is None
        assert isinstance(protocol.writable, asyncio.Event)
        assert config.ws_ping_interval is not None
    finally:
        protocol.loop.close()


# A taken-over connection, served by a real uvicorn.


@pytest.fixture
async def echo(tmp_path: Path) -> AsyncIterator[tuple[Served, str]]:
    name = unique("FastEcho")
    async with serve(
        tmp_path, {name: {"behaviour": "starts"}}, Timeouts(linger=0.3, stop=5)
    ) as served:
        yield served, name


async def test_bytes_the_parser_holds_at_the_takeover_are_not_lost(tmp_path: Path) -> None:
    """A whole frame and half of the next arrive while the session starts (before the
    takeover): the whole one waits in uvicorn's queue, the half in the protocol's own buffer.

    (uvicorn's httptools protocol drops what follows the upgrade request in its own TCP
    segment, before any WebSocket protocol sees it; so the frames come after the 101.)
    """
    name = unique("FastSlow")
    async with serve(
        tmp_path, {name: {"behaviour": "slow", "delay": 0.5}}, Timeouts(stop=5)
    ) as served:
        token = (await served.broker.reserve(name)).token
        first, second = os.urandom(3000), os.urandom(5000)
        second_frame = client_frame(0x2, second)
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        try:
            writer.write(handshake(served.port, token))
            response = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), scaled(10))
            assert response.startswith(b"HTTP/1.1 101")
            writer.write(client_frame(0x2, first) + second_frame[:1000])
            await writer.drain()
            banner = b"RFB 003.008\n"
            # The half frame's payload is relayed as it arrives: read past the first one.
            got, _ = await asyncio.wait_for(read_frames(reader, len(banner) + 3000), scaled(10))
            writer.write(second_frame[1000:])
            want = len(banner) + 8000 - len(got)
            rest, _ = await asyncio.wait_for(read_frames(reader, want), scaled(10))
            assert got + rest == banner + first + second
        finally:
            writer.close()


async def test_a_taken_over_connection_relays_and_answers_pings(
    echo: tuple[Served, str],
) -> None:
    served, name = echo
    token = (await served.broker.reserve(name)).token
    async with websockets.connect(served.url(token), max_size=None) as ws:
        assert await ws.recv() == b"RFB 003.008\n"
        pong = await ws.ping(b"are you there")
        await asyncio.wait_for(pong, scaled(5))
        await ws.send("text is relayed as UTF-8: é")
        await ws.send([b"frag", b"mented"])
        big = os.urandom(3 * 1024 * 1024)
        await ws.send(big)
        want = "text is relayed as UTF-8: é".encode() + b"fragmented" + big
        received = b""
        while len(received) < len(want):
            received += await asyncio.wait_for(ws.recv(), scaled(10))  # type: ignore[operator]
        assert received == want


async def test_an_oversize_message_is_refused_with_1009(tmp_path: Path) -> None:
    name = unique("FastBig")
    async with serve(tmp_path, {name: {"behaviour": "starts"}}, Timeouts(stop=5)) as served:
        token = (await served.broker.reserve(name)).token
        async with websockets.connect(served.url(token), max_size=None) as ws:
            assert await ws.recv() == b"RFB 003.008\n"
            with contextlib.suppress(ConnectionClosed):
                await ws.send(bytes(17 * 1024 * 1024))
            code, reason = await closed_with(ws)
        # The fast path's own reason (websockets words it otherwise): the takeover happened.
        assert (code, reason) == (1009, "message over the limit of 16777216 bytes")


async def test_keepalive_pings_after_the_takeover(tmp_path: Path) -> None:
    from inprocess import serve_catalog
    from vizgate.testing import DOUBLE_SESSION_SCRIPT

    name = unique("FastPing")
    catalog = {name: {"script": str(DOUBLE_SESSION_SCRIPT), "count": 1, "options": {}}}
    async with serve_catalog(tmp_path, catalog, Timeouts(stop=5), ws_ping_interval=0.2) as served:
        token = (await served.broker.reserve(name)).token
        pings = 0
        async with websockets.connect(served.url(token), ping_interval=None) as ws:
            assert await ws.recv() == b"RFB 003.008\n"
            transport = ws.transport

            original = ws.protocol.receive_data

            def counting(data: bytes) -> None:
                nonlocal pings
                pings += data.count(b"\x89\x04")
                original(data)

            ws.protocol.receive_data = counting  # type: ignore[method-assign]
            await await_until(lambda: pings >= 3, timeout=scaled(5), message="no pings")
            assert not transport.is_closing()


@pytest.mark.parametrize("deflate", [False, True])
async def test_uvicorn_hands_the_application_a_scope_with_the_takeover(deflate: bool) -> None:
    """Offered unless permessage-deflate was negotiated (compressed frames are websockets')."""
    seen: list[object] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["extensions"].get(TAKEOVER_EXTENSION))
        await receive()
        await send({"type": "websocket.close", "code": 1000})

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        app,
        ws=WS_IMPLEMENTATION,
        lifespan="off",
        log_config=None,
        ws_per_message_deflate=deflate,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await await_until(lambda: server.started, timeout=scaled(10), message="not started")
        url = f"ws://127.0.0.1:{sock.getsockname()[1]}/"
        with contextlib.suppress(websockets.InvalidStatus, ConnectionClosed):
            async with websockets.connect(url) as ws:
                await ws.recv()
    finally:
        server.should_exit = True
        await task
        sock.close()
    assert len(seen) == 1
    if deflate:
        assert seen[0] is None
    else:
        assert isinstance(seen[0], Takeover)
