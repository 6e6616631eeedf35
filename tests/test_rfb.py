"""Tests for vizgate.rfb: the sans-I/O RFB handshake bridge.

The bridge is tested by feeding it byte sequences recorded from real servers (TigerVNC's Xvnc
and x11vnc; see tests/data/rfb/record_rfb.py, which wrote tests/data/rfb/recordings.json), with
every chunking from "all at once" to "byte by byte", plus a few hand-made sequences for cases no
installed server produces. One integration test drives the bridge against a live Xvnc.
"""

from __future__ import annotations

import itertools
import json
import random
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vizgate.rfb import BridgeState, RfbBridge
from vizgate.vnc_password import write_vnc_password_file

DATA = Path(__file__).parent / "data" / "rfb"
RECORDINGS = json.loads((DATA / "recordings.json").read_text())
PASSWORD: bytes = RECORDINGS["password"].encode()
WRONG_PASSWORD: bytes = RECORDINGS["wrong_password"].encode()
WIDTH, HEIGHT = RECORDINGS["geometry"]

# What a browser (noVNC) sends for each version it may choose, up to but not including ClientInit
# (RFC 6143 §7.1.1-7.1.2), and what the gateway must answer it as an RFB server offering None.
BROWSER_HANDSHAKE = {
    (3, 8): b"RFB 003.008\n" + b"\x01",
    (3, 7): b"RFB 003.007\n" + b"\x01",
    (3, 3): b"RFB 003.003\n",
}
GATEWAY_TO_BROWSER = {
    (3, 8): b"RFB 003.008\n" + b"\x01\x01" + b"\x00\x00\x00\x00",
    (3, 7): b"RFB 003.008\n" + b"\x01\x01",
    (3, 3): b"RFB 003.008\n" + b"\x00\x00\x00\x01",
}
CLIENT_INIT_SHARED = b"\x01"
BROWSER_VERSIONS = sorted(BROWSER_HANDSHAKE)


# --------------------------------------------------------------------------------------------
# Helpers


@dataclass(frozen=True)
class Recording:
    """One recorded connection, split into what each side sent in each phase."""

    server_handshake: bytes
    client_handshake: bytes
    server_after: bytes  # from ServerInit on (RFC 6143 §7.3.2)
    client_after: bytes  # from ClientInit on (RFC 6143 §7.3.1)


def recording(name: str) -> Recording:
    session = RECORDINGS["sessions"][name]

    def joined(chunks: list[list[str]], who: str) -> bytes:
        return b"".join(bytes.fromhex(data) for side, data in chunks if side == who)

    return Recording(
        server_handshake=joined(session["handshake"], "s"),
        client_handshake=joined(session["handshake"], "c"),
        server_after=joined(session["initialisation"], "s"),
        client_after=joined(session["initialisation"], "c"),
    )


Event = tuple[str, bytes]  # ("s", bytes from the server) or ("c", bytes from the browser)


def replay(bridge: RfbBridge, events: Sequence[Event]) -> tuple[bytes, bytes]:
    """Feed ``events`` in order, draining both outputs after each; return (to_server, to_client)."""
    to_server = bytearray(bridge.data_to_server())
    to_client = bytearray(bridge.data_to_client())
    for side, chunk in events:
        if side == "s":
            bridge.receive_from_server(chunk)
        else:
            bridge.receive_from_client(chunk)
        to_server += bridge.data_to_server()
        to_client += bridge.data_to_client()
    return bytes(to_server), bytes(to_client)


def whole(server: bytes, client: bytes) -> list[Event]:
    return [("c", client), ("s", server)]


def server_first(server: bytes, client: bytes) -> list[Event]:
    return [("s", server), ("c", client)]


def byte_by_byte(server: bytes, client: bytes) -> list[Event]:
    """One byte at a time, alternating sides while both have bytes left."""
    events: list[Event] = []
    for i in range(max(len(server), len(client))):
        if i < len(client):
            events.append(("c", client[i : i + 1]))
        if i < len(server):
            events.append(("s", server[i : i + 1]))
    return events


def random_chunks(server: bytes, client: bytes, seed: int = 6143) -> list[Event]:
    """A few random cuts on each side, the chunks of both sides shuffled (order kept per side)."""
    rng = random.Random(seed)

    def split(data: bytes) -> list[bytes]:
        cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, 7))) if data else []
        bounds = [0, *cuts, len(data)]
        return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]

    server_chunks, client_chunks = split(server), split(client)
    sides = ["s"] * len(server_chunks) + ["c"] * len(client_chunks)
    rng.shuffle(sides)
    chunks = {"s": iter(server_chunks), "c": iter(client_chunks)}
    return [(side, next(chunks[side])) for side in sides]


CHUNKINGS: dict[str, Callable[[bytes, bytes], list[Event]]] = {
    "whole": whole,
    "server-first": server_first,
    "byte-by-byte": byte_by_byte,
    "random": random_chunks,
}


def assert_no_secret(message: str | None) -> None:
    assert message is not None
    for secret in (PASSWORD, WRONG_PASSWORD):
        assert secret.decode() not in message
        assert secret.hex() not in message


def reason(text: bytes) -> bytes:
    """An RFB reason string: u32 length, then the bytes (RFC 6143 §7.1.2)."""
    return struct.pack("!I", len(text)) + text


# --------------------------------------------------------------------------------------------
# The bridge: successful handshakes replayed from real servers

SUCCESSFUL = {
    # recording name: (password the bridge holds, server version, security type)
    "xvnc-vncauth-3.8-ok": (PASSWORD, (3, 8), 2),
    "x11vnc-vncauth-3.7-ok": (PASSWORD, (3, 7), 2),
    "x11vnc-vncauth-3.3-ok": (PASSWORD, (3, 3), 2),
    "xvnc-none-3.8": (PASSWORD, (3, 8), 1),
    "x11vnc-none-3.7": (PASSWORD, (3, 7), 1),
    "x11vnc-none-3.3": (PASSWORD, (3, 3), 1),
}


def test_banner_is_ready_at_once() -> None:
    bridge = RfbBridge(PASSWORD)
    assert bridge.state is BridgeState.HANDSHAKING
    assert bridge.data_to_client() == b"RFB 003.008\n"
    assert bridge.data_to_client() == b""
    assert bridge.data_to_server() == b""
    assert not bridge.established
    assert bridge.failure is None


@pytest.mark.parametrize("chunking", sorted(CHUNKINGS))
@pytest.mark.parametrize("browser_version", BROWSER_VERSIONS)
@pytest.mark.parametrize("name", sorted(SUCCESSFUL))
def test_recorded_handshake_succeeds(
    name: str, browser_version: tuple[int, int], chunking: str
) -> None:
    password, server_version, security_type = SUCCESSFUL[name]
    rec = recording(name)
    bridge = RfbBridge(password)
    browser = BROWSER_HANDSHAKE[browser_version] + rec.client_after
    to_server, to_client = replay(
        bridge, CHUNKINGS[chunking](rec.server_handshake + rec.server_after, browser)
    )
    assert bridge.failure is None
    assert bridge.established
    assert bridge.state is BridgeState.ESTABLISHED
    assert bridge.server_version == server_version
    assert bridge.client_version == browser_version
    assert bridge.security_type == security_type
    # Towards the server the bridge said exactly what the recording client said, the browser's
    # ClientInit (and anything after it) included; the browser got our handshake, then the
    # server's ServerInit and everything after it.
    assert to_server == rec.client_handshake + rec.client_after
    assert to_client == GATEWAY_TO_BROWSER[browser_version] + rec.server_after


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_any_chunking_and_interleaving_gives_the_same_bytes(data: st.DataObject) -> None:
    rec = recording("xvnc-vncauth-3.8-ok")
    server = rec.server_handshake + rec.server_after
    browser = BROWSER_HANDSHAKE[(3, 8)] + rec.client_after

    def chunks(stream: bytes) -> list[bytes]:
        cuts = data.draw(st.lists(st.integers(1, len(stream) - 1), max_size=12, unique=True))
        bounds = [0, *sorted(cuts), len(stream)]
        return [stream[a:b] for a, b in itertools.pairwise(bounds)]

    server_chunks, browser_chunks = chunks(server), chunks(browser)
    order = data.draw(st.permutations(["s"] * len(server_chunks) + ["c"] * len(browser_chunks)))
    server_iter, browser_iter = iter(server_chunks), iter(browser_chunks)
    events = [("s", next(server_iter)) if s == "s" else ("c", next(browser_iter)) for s in order]
    to_server, to_client = replay(RfbBridge(PASSWORD), events)
    assert to_server == rec.client_handshake + rec.client_after
    assert to_client == GATEWAY_TO_BROWSER[(3, 8)] + rec.server_after


def test_client_init_is_held_until_the_server_accepted_the_password() -> None:
    rec = recording("xvnc-vncauth-3.8-ok")
    security_result = rec.server_handshake[-4:]
    bridge = RfbBridge(PASSWORD)
    bridge.data_to_client()
    # The browser finishes its whole handshake, ClientInit and a first request included, first.
    bridge.receive_from_client(BROWSER_HANDSHAKE[(3, 8)] + rec.client_after)
    assert bridge.data_to_client() == GATEWAY_TO_BROWSER[(3, 8)][12:]
    assert bridge.data_to_server() == b""
    bridge.receive_from_server(rec.server_handshake[:-4])
    assert bridge.data_to_server() == rec.client_handshake
    assert not bridge.established
    # SecurityResult, ServerInit and the first FramebufferUpdate arrive in one read.
    bridge.receive_from_server(security_result + rec.server_after)
    assert bridge.established
    assert bridge.data_to_server() == rec.client_after
    assert bridge.data_to_client() == rec.server_after


def test_server_bytes_after_security_result_wait_for_the_client_init() -> None:
    rec = recording("xvnc-vncauth-3.8-ok")
    bridge = RfbBridge(PASSWORD)
    bridge.receive_from_client(BROWSER_HANDSHAKE[(3, 8)])
    bridge.receive_from_server(rec.server_handshake + rec.server_after)
    assert bridge.data_to_server() == rec.client_handshake
    assert bridge.data_to_client() == GATEWAY_TO_BROWSER[(3, 8)]
    assert not bridge.established
    bridge.receive_from_client(CLIENT_INIT_SHARED)
    assert bridge.established
    assert bridge.data_to_server() == CLIENT_INIT_SHARED
    assert bridge.data_to_client() == rec.server_after


def test_after_establishment_input_passes_through() -> None:
    rec = recording("xvnc-none-3.8")
    bridge = RfbBridge(PASSWORD)
    replay(bridge, whole(rec.server_handshake, BROWSER_HANDSHAKE[(3, 8)] + CLIENT_INIT_SHARED))
    assert bridge.established
    bridge.receive_from_server(b"\x00\x00\x00\x00")
    bridge.receive_from_client(b"\x03\x01\x00\x00")
    assert bridge.data_to_client() == b"\x00\x00\x00\x00"
    assert bridge.data_to_server() == b"\x03\x01\x00\x00"
    bridge.receive_eof_from_server()
    bridge.receive_eof_from_client()
    assert bridge.established
    assert bridge.failure is None


def test_a_watchers_bridge_asks_to_share_and_filters_both_ways() -> None:
    rec = recording("xvnc-vncauth-3.8-ok")
    bridge = RfbBridge(
        PASSWORD,
        force_shared=True,
        client_filter=lambda data: b"<" + data + b">",
        server_filter=lambda data: b"[" + data + b"]",
    )
    bridge.receive_from_client(BROWSER_HANDSHAKE[(3, 8)])
    bridge.receive_from_server(rec.server_handshake + rec.server_after)
    assert bridge.data_to_server() == rec.client_handshake
    assert bridge.data_to_client() == GATEWAY_TO_BROWSER[(3, 8)]
    # The browser asks not to share, and sends a first request with its ClientInit.
    bridge.receive_from_client(b"\x00" + rec.client_after)
    assert bridge.established
    assert bridge.data_to_server() == b"\x01<" + rec.client_after + b">"
    # What the server sent from its ServerInit on, and everything after, is filtered.
    assert bridge.data_to_client() == b"[" + rec.server_after + b"]"
    bridge.receive_from_server(b"later")
    bridge.receive_from_client(b"more")
    assert bridge.data_to_client() == b"[later]"
    assert bridge.data_to_server() == b"<more>"


# --------------------------------------------------------------------------------------------
# The bridge: failures replayed from real servers

FAILING = {
    # recording name: (password the bridge holds, the failure)
    "xvnc-vncauth-3.8-failed": (
        WRONG_PASSWORD,
        "authentication at the VNC server failed: Authentication failure",
    ),
    "x11vnc-vncauth-3.3-failed": (
        WRONG_PASSWORD,
        "authentication at the VNC server failed: the password was not accepted",
    ),
    "xvnc-refused-3.8": (
        PASSWORD,
        "VNC server refused the connection: Client needs protocol version 4.0, server has 3.8",
    ),
    "xvnc-blacklisted": (PASSWORD, "VNC server refused the connection: Too many security failures"),
    "xvnc-tls-only-3.8": (
        PASSWORD,
        "VNC server offers no supported security type (offered: 19 (VeNCrypt))",
    ),
}


@pytest.mark.parametrize("chunking", sorted(CHUNKINGS))
@pytest.mark.parametrize("name", sorted(FAILING))
def test_recorded_handshake_fails(name: str, chunking: str) -> None:
    password, failure = FAILING[name]
    rec = recording(name)
    bridge = RfbBridge(password)
    browser = BROWSER_HANDSHAKE[(3, 8)] + CLIENT_INIT_SHARED
    to_server, _ = replay(bridge, CHUNKINGS[chunking](rec.server_handshake, browser))
    assert bridge.failure == failure
    assert bridge.state is BridgeState.FAILED
    assert not bridge.established
    assert_no_secret(bridge.failure)
    # Nothing beyond the bridge's own handshake (version, choice, response) reached the server:
    # the browser's ClientInit is never forwarded to a server that did not accept us.
    assert len(to_server) <= 12 + 1 + 16
    assert bridge.security_type is None
    # After a failure nothing more is sent and input is ignored.
    bridge.receive_from_server(b"\x00" * 64)
    bridge.receive_from_client(b"\x01" * 64)
    bridge.receive_eof_from_server()
    assert bridge.data_to_server() == b""
    assert bridge.data_to_client() == b""
    assert bridge.failure == failure


@pytest.mark.parametrize("name", ["xvnc-vncauth-3.8-failed", "x11vnc-vncauth-3.3-failed"])
def test_failed_authentication_sent_what_the_recording_client_sent(name: str) -> None:
    rec = recording(name)
    bridge = RfbBridge(WRONG_PASSWORD)
    to_server, _ = replay(bridge, byte_by_byte(rec.server_handshake, b""))
    assert to_server == rec.client_handshake
    assert bridge.failure is not None


def test_failure_discards_output_not_yet_drained() -> None:
    bridge = RfbBridge(PASSWORD)  # the banner for the browser is pending, never drained
    bridge.receive_from_server(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")
    assert bridge.failure == "not an RFB server (got b'SSH-2.0-Open')"
    assert bridge.data_to_client() == b""
    assert bridge.data_to_server() == b""


# --------------------------------------------------------------------------------------------
# The bridge: hand-made server sequences for cases the installed servers do not produce


def fail_with(server: bytes, password: bytes = PASSWORD) -> str:
    """Feed ``server`` byte by byte with a 3.8 browser; return the failure."""
    bridge = RfbBridge(password)
    replay(bridge, byte_by_byte(server, BROWSER_HANDSHAKE[(3, 8)] + CLIENT_INIT_SHARED))
    assert bridge.failure is not None
    assert not bridge.established
    assert_no_secret(bridge.failure)
    return bridge.failure


def test_non_rfb_banner_is_quoted_truncated() -> None:
    failure = fail_with(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    assert failure == "not an RFB server (got b'HTTP/1.1 400')"


def test_malformed_rfb_banner() -> None:
    assert fail_with(b"RFB 3.8\nxxxxxxxx") == "not an RFB server (got b'RFB 3.8\\nxxxx')"


def test_unsupported_security_types_are_listed() -> None:
    failure = fail_with(b"RFB 003.008\n" + bytes([2, 19, 18]))
    assert (
        failure == "VNC server offers no supported security type (offered: 19 (VeNCrypt), 18 (TLS))"
    )


def test_unknown_security_types_are_listed_by_number() -> None:
    failure = fail_with(b"RFB 003.008\n" + bytes([2, 99, 113]))
    assert failure == "VNC server offers no supported security type (offered: 99, 113)"


@pytest.mark.parametrize(
    ("banner", "reply"),
    [
        (b"RFB 003.889\n", b"RFB 003.008\n"),  # Apple Remote Desktop
        (b"RFB 004.001\n", b"RFB 003.008\n"),  # RealVNC 4+/5+
        (b"RFB 003.008\n", b"RFB 003.008\n"),
        (b"RFB 003.007\n", b"RFB 003.007\n"),
        (b"RFB 003.006\n", b"RFB 003.003\n"),  # RFC 6143 §7.1.1: other 3.x is 3.3
        (b"RFB 003.005\n", b"RFB 003.003\n"),
        (b"RFB 003.003\n", b"RFB 003.003\n"),
    ],
)
def test_server_version_negotiation(banner: bytes, reply: bytes) -> None:
    bridge = RfbBridge(PASSWORD)
    bridge.receive_from_server(banner)
    assert bridge.data_to_server() == reply
    assert bridge.failure is None


def test_server_older_than_3_3_is_refused() -> None:
    assert fail_with(b"RFB 002.000\n") == "VNC server speaks RFB 2.0, older than 3.3"


def test_vnc_authentication_is_preferred_over_none() -> None:
    bridge = RfbBridge(PASSWORD)
    bridge.receive_from_server(b"RFB 003.008\n" + bytes([3, 1, 16, 2]))
    assert bridge.data_to_server() == b"RFB 003.008\n" + b"\x02"


def test_without_a_password_none_is_chosen() -> None:
    bridge = RfbBridge(b"")
    bridge.receive_from_server(b"RFB 003.008\n" + bytes([2, 2, 1]))
    assert bridge.data_to_server() == b"RFB 003.008\n" + b"\x01"


def test_without_a_password_vnc_authentication_only_fails() -> None:
    expected = "VNC server requires a password and none is set for this session"
    assert fail_with(b"RFB 003.008\n" + bytes([1, 2]), password=b"") == expected
    assert fail_with(b"RFB 003.003\n" + struct.pack("!I", 2), password=b"") == expected


def test_v33_unsupported_type() -> None:
    failure = fail_with(b"RFB 003.003\n" + struct.pack("!I", 16))
    assert failure == "VNC server requires an unsupported security type (16)"


def test_v33_too_many_attempts() -> None:
    server = b"RFB 003.003\n" + struct.pack("!I", 2) + bytes(16) + struct.pack("!I", 2)
    assert fail_with(server) == "authentication at the VNC server failed: too many attempts"


def test_v38_none_with_failed_security_result() -> None:
    server = b"RFB 003.008\n" + bytes([1, 1]) + struct.pack("!I", 1) + reason(b"go away")
    assert fail_with(server) == "VNC server refused the connection: go away"


def test_long_reason_is_not_read_and_not_shown() -> None:
    server = b"RFB 003.008\n" + b"\x00" + struct.pack("!I", 1 << 30)
    bridge = RfbBridge(PASSWORD)
    bridge.receive_from_server(server)
    assert (
        bridge.failure == "VNC server refused the connection: a 1073741824-byte reason, not shown"
    )


def test_reason_is_made_printable_and_shortened() -> None:
    failure = fail_with(b"RFB 003.008\n" + b"\x00" + reason(b"bad\x1b[31m\nthing " + b"z" * 400))
    assert failure.startswith("VNC server refused the connection: bad [31m thing zzz")
    assert failure.endswith("...")
    assert len(failure) < 300
    assert fail_with(b"RFB 003.008\n" + b"\x00" + reason(b"")).endswith(": no reason given")


def test_server_eof() -> None:
    bridge = RfbBridge(PASSWORD)
    bridge.receive_eof_from_server()
    assert bridge.failure == "VNC server closed the connection without sending anything"

    bridge = RfbBridge(PASSWORD)
    bridge.receive_from_server(b"<html>")
    bridge.receive_eof_from_server()
    assert bridge.failure == "not an RFB server (got b'<html>', then it closed the connection)"

    bridge = RfbBridge(PASSWORD)
    bridge.receive_from_server(b"RFB 00")
    bridge.receive_eof_from_server()
    assert bridge.failure == "VNC server closed the connection during the RFB handshake"

    bridge = RfbBridge(PASSWORD)
    bridge.receive_from_server(b"RFB 003.008\n\x01\x02" + bytes(8))
    bridge.receive_eof_from_server()
    assert bridge.failure == "VNC server closed the connection during the RFB handshake"
    assert bridge.data_to_server() == b""


# --------------------------------------------------------------------------------------------
# The bridge: the browser side


@pytest.mark.parametrize(
    "answer", [b"RFB 003.005\n", b"RFB 003.009\n", b"RFB 004.000\n", b"GET / HTTP/1.1\r\n"]
)
def test_unsupported_browser_version(answer: bytes) -> None:
    bridge = RfbBridge(PASSWORD)
    replay(bridge, byte_by_byte(b"", answer))
    assert bridge.failure == f"unsupported RFB version from browser (got {answer[:12]!r})"
    assert bridge.data_to_client() == b""


@pytest.mark.parametrize("choice", [0, 2, 16])
def test_browser_must_choose_none(choice: int) -> None:
    bridge = RfbBridge(PASSWORD)
    bridge.receive_from_client(b"RFB 003.008\n" + bytes([choice]))
    assert bridge.failure == f"browser chose security type {choice}, only 1 (None) was offered"
    assert bridge.data_to_client() == b""


def test_browser_eof_during_handshake() -> None:
    bridge = RfbBridge(PASSWORD)
    bridge.receive_from_client(b"RFB 003.008\n")
    bridge.receive_eof_from_client()
    assert bridge.failure == "browser closed the connection during the RFB handshake"


@pytest.mark.parametrize("browser_version", BROWSER_VERSIONS)
def test_browser_handshake_alone(browser_version: tuple[int, int]) -> None:
    bridge = RfbBridge(PASSWORD)
    to_server, to_client = replay(
        bridge, byte_by_byte(b"", BROWSER_HANDSHAKE[browser_version] + CLIENT_INIT_SHARED)
    )
    assert to_client == GATEWAY_TO_BROWSER[browser_version]
    assert to_server == b""
    assert bridge.client_version == browser_version
    assert not bridge.established


# --------------------------------------------------------------------------------------------
# Integration: a real Xvnc with a password file


@dataclass
class LiveServer:
    port: int
    password: bytes


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _free_displays() -> Iterator[int]:
    # Random numbers keep concurrent test runs from racing for the same display; a race that
    # still happens makes Xvnc exit at once ("Server is already active") and the next is tried.
    candidates = random.sample(range(300, 900), 40)
    for number in candidates:
        if not (
            Path(f"/tmp/.X11-unix/X{number}").exists() or Path(f"/tmp/.X{number}-lock").exists()
        ):
            yield number


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@pytest.fixture
def xvnc(tmp_path: Path) -> Iterator[LiveServer]:
    if shutil.which("Xvnc") is None:
        pytest.skip("TigerVNC's Xvnc is not installed")
    password = b"gw-pass1"
    password_file = tmp_path / "passwd"
    write_vnc_password_file(password_file, password)
    for display in _free_displays():
        port = _free_port()
        with (tmp_path / f"Xvnc-{display}.log").open("wb") as log:
            process = subprocess.Popen(
                ["Xvnc", f":{display}", "-rfbport", str(port), "-localhost",
                 "-SecurityTypes", "VncAuth", "-PasswordFile", str(password_file),
                 "-geometry", f"{WIDTH}x{HEIGHT}", "-depth", "24"],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        try:
            deadline = time.monotonic() + 10
            while process.poll() is None and time.monotonic() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                except OSError:
                    time.sleep(0.01)  # poll the condition "port open" with a deadline
                    continue
                yield LiveServer(port=port, password=password)
                return
            if process.poll() is None:
                pytest.fail(f"Xvnc :{display} did not open port {port} within 10 s")
        finally:
            _stop(process)
    pytest.fail("no free X display found for Xvnc")


class BrowserOverBridge:
    """Plays the browser through a bridge whose server side is a real TCP connection."""

    def __init__(self, bridge: RfbBridge, sock: socket.socket, timeout: float = 10) -> None:
        self.bridge = bridge
        self.sock = sock
        self.received = bytearray()
        self.deadline = time.monotonic() + timeout

    def send(self, data: bytes) -> None:
        self.bridge.receive_from_client(data)

    def pump(self, done: Callable[[], bool]) -> None:
        while True:
            if out := self.bridge.data_to_server():
                self.sock.sendall(out)
            self.received += self.bridge.data_to_client()
            if done() or self.bridge.failure is not None:
                return
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError("timed out waiting for the VNC server")
            self.sock.settimeout(remaining)
            data = self.sock.recv(65536)
            if not data:
                self.bridge.receive_eof_from_server()
                if self.bridge.failure is None:
                    raise AssertionError("the VNC server closed the connection")
                continue
            self.bridge.receive_from_server(data)

    def read(self, n: int) -> bytes:
        self.pump(lambda: len(self.received) >= n)
        assert self.bridge.failure is None, self.bridge.failure
        data = bytes(self.received[:n])
        del self.received[:n]
        return data


@pytest.mark.integration
def test_live_xvnc_through_the_bridge(xvnc: LiveServer) -> None:
    bridge = RfbBridge(xvnc.password)
    with socket.create_connection(("127.0.0.1", xvnc.port), timeout=10) as sock:
        browser = BrowserOverBridge(bridge, sock)
        assert browser.read(12) == b"RFB 003.008\n"
        browser.send(b"RFB 003.008\n")
        assert browser.read(2) == b"\x01\x01"  # one security type: None
        browser.send(b"\x01")
        assert browser.read(4) == b"\x00\x00\x00\x00"  # SecurityResult OK
        browser.send(CLIENT_INIT_SHARED)
        server_init = browser.read(24)  # RFC 6143 §7.3.2
        width, height = struct.unpack("!HH", server_init[:4])
        bits_per_pixel = server_init[4]
        (name_length,) = struct.unpack("!I", server_init[20:24])
        browser.read(name_length)
        assert (width, height) == (WIDTH, HEIGHT)
        assert bridge.established
        assert bridge.server_version == (3, 8)
        assert bridge.security_type == 2
        # RFC 6143 §7.5.3 FramebufferUpdateRequest for the whole screen, non-incremental.
        browser.send(struct.pack("!BBHHHH", 3, 0, 0, 0, width, height))
        message_type, _, rectangles = struct.unpack("!BBH", browser.read(4))
        assert message_type == 0  # §7.6.1 FramebufferUpdate
        covered = 0
        for _ in range(rectangles):
            _x, _y, w, h, encoding = struct.unpack("!HHHHi", browser.read(12))
            assert encoding == 0  # Raw (§7.7.1): no SetEncodings was sent
            browser.read(w * h * bits_per_pixel // 8)
            covered += w * h
        assert covered == width * height


@pytest.mark.integration
def test_live_xvnc_wrong_password(xvnc: LiveServer) -> None:
    bridge = RfbBridge(b"not-it!!")
    with socket.create_connection(("127.0.0.1", xvnc.port), timeout=10) as sock:
        browser = BrowserOverBridge(bridge, sock)
        browser.send(BROWSER_HANDSHAKE[(3, 8)] + CLIENT_INIT_SHARED)
        browser.pump(lambda: False)
    assert bridge.failure is not None
    assert bridge.failure.startswith("authentication at the VNC server failed: ")
    assert "not-it" not in bridge.failure
    assert bridge.data_to_client() == b""
    assert bridge.data_to_server() == b""
