"""View-only share links through a real gateway process, over real HTTP and WebSockets.

The session type's script points at a VNC server this test runs: it speaks the RFB handshake
with security None and records every byte a viewer sends after its ClientInit, so the test sees
exactly what the gateway let through.
"""

from __future__ import annotations

import html
import re
import socket
import sqlite3
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets.exceptions
import websockets.sync.client

from gateway import GatewayProcess, start_gateway, write_catalog
from portal_client import Account, Browser, Page, create_accounts, logged_in
from support import scaled, wait_until
from vizgate.web.portal.auth import OWNER_REFUSAL, SHARE_ENDED_REFUSAL

SERVICE = "Shared Desktop"
OWNER = Account("olga", "olga-owns-the-desktop-7")
WATCHER = Account("wanda", "wanda-watches-only-8")
LATECOMER = Account("lars", "lars-logs-in-later-9")
STRANGER = Account("sven", "sven-has-no-link-10")
ADMIN = Account("ada", "ada-administers-it-11", admin=True)

SCRIPT = """
from nexus_remote_service import RemoteServiceScript


class FixedPort(RemoteServiceScript):
    def start(self, token, timestamp=None, options=None):
        self.set_host_port("127.0.0.1", int(self._common_options["port"]))
        return super().start(token, timestamp=timestamp, options=options)

    def stop(self):
        return super().stop()


def realize_service(name="", count=1, index=0, common_options=None):
    return FixedPort(name, count=count, index=index, common_options=common_options)
"""

# What viewers send after their handshake: SetEncodings (raw, DesktopSize), a
# FramebufferUpdateRequest, a key press, a pointer move, a clipboard text, a SetDesktopSize,
# and another FramebufferUpdateRequest.
SET_ENCODINGS = struct.pack(">BBHii", 2, 0, 2, 0, -223)
UPDATE_REQUEST = struct.pack(">BBHHHH", 3, 0, 0, 0, 64, 48)
KEY_PRESS = struct.pack(">BBHI", 4, 1, 0, 0x61)
POINTER_MOVE = struct.pack(">BBHH", 5, 1, 10, 20)
CUT_TEXT = struct.pack(">BxxxI", 6, 5) + b"hello"
SET_DESKTOP_SIZE = struct.pack(">BxHHBx", 251, 800, 600, 1) + struct.pack(
    ">IHHHHI", 0, 0, 0, 800, 600, 0
)
LAST_REQUEST = struct.pack(">BBHHHH", 3, 1, 0, 0, 64, 48)
EVERYTHING = (
    SET_ENCODINGS + UPDATE_REQUEST + KEY_PRESS + POINTER_MOVE + CUT_TEXT + SET_DESKTOP_SIZE
) + LAST_REQUEST
WATCHABLE = SET_ENCODINGS + UPDATE_REQUEST + LAST_REQUEST

SERVER_INIT = (
    struct.pack(">HH", 64, 48)
    + bytes([32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0])
    + struct.pack(">I", 4)
    + b"test"
)


# What the VNC server sends each client after its ServerInit: a bell, the session's clipboard
# (RFC 6143 §7.6.4) and another bell.
BELL = bytes([2])
CLIPBOARD = b"the owner copied a password"
SERVER_CUT_TEXT = struct.pack(">BxxxI", 3, len(CLIPBOARD)) + CLIPBOARD
AFTER_INIT = BELL + SERVER_CUT_TEXT + BELL


class RecordingVncServer:
    """RFB 3.8 with security None on 127.0.0.1; records each client's ClientInit and what it
    sends afterwards, and sends it :data:`AFTER_INIT` after its ServerInit."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.clients: list[tuple[bytes, bytearray]] = []
        self.threads: list[threading.Thread] = []
        self.closing = False
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    def _accept(self) -> None:
        while not self.closing:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(client,), daemon=True)
            self.threads.append(thread)
            thread.start()

    @staticmethod
    def _read(client: socket.socket, count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = client.recv(count - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data

    def _serve(self, client: socket.socket) -> None:
        with client:
            try:
                client.sendall(b"RFB 003.008\n")
                self._read(client, 12)
                client.sendall(bytes([1, 1]))
                self._read(client, 1)
                client.sendall(struct.pack(">I", 0))
                client_init = self._read(client, 1)
            except (ConnectionError, OSError):
                return  # the gateway's readiness probe connects and leaves
            received = bytearray()
            with self.lock:
                self.clients.append((client_init, received))
            client.sendall(SERVER_INIT + AFTER_INIT)
            while True:
                try:
                    data = client.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                with self.lock:
                    received += data

    def received(self, index: int) -> tuple[bytes, bytes] | None:
        with self.lock:
            if index >= len(self.clients):
                return None
            client_init, received = self.clients[index]
            return client_init, bytes(received)

    def close(self) -> None:
        self.closing = True
        self.listener.close()
        self.acceptor.join(5)


@pytest.fixture(scope="module")
def vnc_server() -> Iterator[RecordingVncServer]:
    server = RecordingVncServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("shares") / "run" / "data"


@pytest.fixture(scope="module")
def gateway(data_dir: Path, vnc_server: RecordingVncServer) -> Iterator[GatewayProcess]:
    directory = data_dir.parent.parent
    script = directory / "fixed_port_session.py"
    script.write_text(SCRIPT, encoding="utf-8")
    config = write_catalog(
        directory / "config",
        {SERVICE: {"script": str(script), "count": 4, "options": {"port": vnc_server.port}}},
    )
    create_accounts(data_dir, [OWNER, WATCHER, LATECOMER, STRANGER, ADMIN])
    started = start_gateway(directory / "run", config, "--linger", "0.5")
    yield started
    started.stop()


def launch(gateway: GatewayProcess) -> tuple[Browser, str]:
    owner = logged_in(gateway, OWNER)
    launched = owner.launch(SERVICE)
    assert launched.status == 302, launched.text
    match = re.fullmatch(r"/sessions/([0-9a-f]+)/", launched.location)
    assert match, launched.location
    return owner, match.group(1)


def share_form(page: Page) -> dict[str, str]:
    """The fields a share page's form sends, but the lifetime."""
    match = re.search(r'name="form" value="([^"]+)"', page.text)
    assert match, "no share form in the page"
    return {"form": match.group(1), "csrfmiddlewaretoken": page.csrf_token()}


def make_link(owner: Browser, session_id: str, minutes: str = "60") -> str:
    """A new share link's path (``/share/SECRET/``)."""
    form = owner.get(f"/sessions/{session_id}/share")
    assert form.status == 200, form.text
    page = owner.post(f"/sessions/{session_id}/share", {"minutes": minutes, **share_form(form)})
    assert page.status == 200, page.text
    match = re.search(r'id="share-link" type="text" readonly value="([^"]+)"', page.text)
    assert match, "the new link is not on the page"
    link = html.unescape(match.group(1))
    path = "/" + link.split("/", 3)[3]
    assert re.fullmatch(r"/share/[A-Za-z0-9_-]{20,}/", path), link
    return path


class Viewer:
    """A viewer's WebSocket that has done both RFB handshakes through the gateway."""

    def __init__(self, gateway: GatewayProcess, browser: Browser, session_id: str) -> None:
        cookies = "; ".join(f"{k}={v}" for k, v in browser.cookies.items())
        self._connection = websockets.sync.client.connect(
            f"ws://127.0.0.1:{gateway.port}/websockify?session={session_id}",
            subprotocols=[websockets.Subprotocol("binary")],
            additional_headers={"Cookie": cookies},
            origin=websockets.Origin(browser.origin),
            open_timeout=scaled(10),
        )
        self.ws = self._connection.__enter__()
        self.buffer = b""

    def read(self, count: int) -> bytes:
        while len(self.buffer) < count:
            message = self.ws.recv(timeout=scaled(10))
            assert isinstance(message, bytes)
            self.buffer += message
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def handshake(self) -> None:
        assert self.read(12) == b"RFB 003.008\n"
        self.ws.send(b"RFB 003.008\n")
        assert self.read(2) == bytes([1, 1])
        self.ws.send(bytes([1]))
        assert self.read(4) == bytes(4)
        self.ws.send(bytes([0]))  # ClientInit: not shared
        assert self.read(len(SERVER_INIT)) == SERVER_INIT

    def closed(self) -> tuple[int, str]:
        """Wait for the gateway to close the WebSocket; its code and reason."""
        try:
            while True:
                self.ws.recv(timeout=scaled(10))
        except websockets.exceptions.ConnectionClosed as closed:
            frame = closed.rcvd
            return (frame.code, frame.reason) if frame is not None else (1006, "")

    def close(self) -> None:
        self._connection.__exit__(None, None, None)


def refused(gateway: GatewayProcess, browser: Browser, session_id: str) -> tuple[int, str]:
    viewer = Viewer(gateway, browser, session_id)
    try:
        return viewer.closed()
    finally:
        viewer.close()


def recorded_after(server: RecordingVncServer, before: int, expected: bytes) -> tuple[bytes, bytes]:
    """What the VNC server's next client got, once its record ends with ``LAST_REQUEST``."""

    def done() -> tuple[bytes, bytes] | None:
        record = server.received(before)
        return record if record is not None and record[1].endswith(LAST_REQUEST) else None

    return wait_until(done, scaled(10), message=f"the VNC server did not receive {expected!r}")


def test_a_share_link_lets_another_user_watch_but_not_control(
    gateway: GatewayProcess, vnc_server: RecordingVncServer
) -> None:
    owner, session_id = launch(gateway)
    watcher = logged_in(gateway, WATCHER)
    assert refused(gateway, watcher, session_id) == (1008, OWNER_REFUSAL)

    link = make_link(owner, session_id)
    opened = watcher.get(link)
    assert opened.status == 302
    assert opened.location == f"/sessions/{session_id}/"
    assert opened.headers["Referrer-Policy"] == "no-referrer"
    page = watcher.get(opened.location)
    assert page.status == 200
    assert '"viewOnly": true' in page.text
    assert "End session" not in page.text

    # The owner controls: everything reaches the VNC server, as sent, and the owner gets the
    # session's clipboard.
    before = len(vnc_server.clients)
    full = Viewer(gateway, owner, session_id)
    full.handshake()
    assert full.read(len(AFTER_INIT)) == AFTER_INIT
    full.ws.send(EVERYTHING)
    client_init, received = recorded_after(vnc_server, before, EVERYTHING)
    assert (client_init, received) == (bytes([0]), EVERYTHING)

    # The watcher sends the same, in pieces that cut messages apart: only what asks for
    # pictures reaches the server, and its ClientInit asks to share the desktop.
    watching = Viewer(gateway, watcher, session_id)
    watching.handshake()
    # The watcher sees the bells, not the clipboard.
    assert watching.read(2) == BELL + BELL
    for start in range(0, len(EVERYTHING), 7):
        watching.ws.send(EVERYTHING[start : start + 7])
    client_init, received = recorded_after(vnc_server, before + 1, WATCHABLE)
    assert (client_init, received) == (bytes([1]), WATCHABLE)
    # The owner sees who watches.
    owners_view = owner.get(f"/sessions/{session_id}/status").json()
    assert (owners_view["connections"], owners_view["watchers"]) == (2, 1)
    assert f'data-watcher="{WATCHER.name}"' in owner.get(f"/sessions/{session_id}/share").text

    # The administrator's page of the session tells who did what, with which access.
    admin = logged_in(gateway, ADMIN)

    def audit() -> list[tuple[str, str, str]] | None:
        page = admin.get(f"/status/{session_id}/")
        assert page.status == 200, page.status
        rows = re.findall(
            r'<tr data-kind="([^"]+)">\s*<td>[^<]*</td>\s*<td>[^<]*</td>\s*<td>([^<]*)</td>'
            r"\s*<td>[^<]*</td>\s*<td>([^<]*)</td>",
            page.text,
        )
        found = [(kind, html.unescape(who), html.unescape(detail)) for kind, who, detail in rows]
        return (
            found
            if ("connected", WATCHER.name, "view only (share")
            in [(kind, who, detail[:16]) for kind, who, detail in found]
            else None
        )

    trail = wait_until(audit, scaled(10), message="the watcher's connection is not in the trail")
    kinds = [kind for kind, _, _ in trail]
    assert kinds[0] == "reserved"
    assert ("connected", OWNER.name, "") in trail
    [shared] = [entry for entry in trail if entry[0] == "shared"]
    assert shared[1] == OWNER.name
    assert shared[2].startswith("share ")
    assert logged_in(gateway, WATCHER).get(f"/status/{session_id}/").status == 403

    # A user without the link, and one who did not log in, are still refused.
    assert refused(gateway, logged_in(gateway, STRANGER), session_id) == (1008, OWNER_REFUSAL)
    assert watcher.get(f"/sessions/{session_id}/status").status == 200
    assert logged_in(gateway, STRANGER).get(f"/sessions/{session_id}/status").status == 404
    watching.close()
    full.close()


def test_a_link_opened_before_logging_in_works_after_it(gateway: GatewayProcess) -> None:
    owner, session_id = launch(gateway)
    link = make_link(owner, session_id, minutes="15")
    latecomer = Browser(gateway.port)
    opened = latecomer.get(link)
    assert opened.status == 302
    # The login page is told where to go next, and that is not the link itself.
    assert opened.location.startswith("/login/?next=")
    secret = link.split("/")[2]
    assert secret not in opened.location
    assert latecomer.login(LATECOMER).status == 302
    redeemed = latecomer.get("/share/")
    assert redeemed.status == 302
    assert redeemed.location == f"/sessions/{session_id}/"
    assert latecomer.get(redeemed.location).status == 200


def test_withdrawing_a_link_disconnects_whoever_watches_through_it(
    gateway: GatewayProcess, vnc_server: RecordingVncServer
) -> None:
    owner, session_id = launch(gateway)
    link = make_link(owner, session_id)
    watcher = logged_in(gateway, WATCHER)
    assert watcher.get(link).status == 302
    watching = Viewer(gateway, watcher, session_id)
    watching.handshake()
    owners_index = len(vnc_server.clients)
    full = Viewer(gateway, owner, session_id)
    full.handshake()

    page = owner.get(f"/sessions/{session_id}/share")
    match = re.search(r'data-share="(\d+)"', page.text)
    assert match, page.text
    withdrawn = owner.post(
        f"/sessions/{session_id}/share/{match.group(1)}/withdraw",
        {"csrfmiddlewaretoken": page.csrf_token()},
    )
    assert withdrawn.status == 302
    assert watching.closed() == (1008, "the share link was withdrawn")
    wait_until(
        lambda: owner.get(f"/sessions/{session_id}/status").json()["watchers"] == 0,
        scaled(10),
        message="the withdrawn watcher is still counted",
    )
    assert refused(gateway, watcher, session_id) == (1008, SHARE_ENDED_REFUSAL)
    assert watcher.get(link).status == 404
    assert 'data-share="' not in owner.get(f"/sessions/{session_id}/share").text

    # The owner's own connection goes on.
    full.ws.send(LAST_REQUEST)
    assert recorded_after(vnc_server, owners_index, LAST_REQUEST) == (bytes([0]), LAST_REQUEST)
    full.close()
    watching.close()


def test_a_watcher_is_disconnected_when_the_link_expires(
    gateway: GatewayProcess, data_dir: Path
) -> None:
    owner, session_id = launch(gateway)
    link = make_link(owner, session_id, minutes="15")
    watcher = logged_in(gateway, WATCHER)
    assert watcher.get(link).status == 302
    # Bring the link's end close, as if its 15 minutes were nearly over.
    database = data_dir / "vizgate.sqlite3"
    with sqlite3.connect(database) as db:
        moment = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(time.time() + scaled(2)))
        db.execute(
            "UPDATE portal_sharelink SET expires = ? WHERE session_id = ?", (moment, session_id)
        )
    watching = Viewer(gateway, watcher, session_id)
    watching.handshake()
    assert watching.closed() == (1008, "the access has expired")
    assert refused(gateway, watcher, session_id) == (1008, SHARE_ENDED_REFUSAL)
    watching.close()


def test_share_secrets_are_neither_stored_nor_logged(
    gateway: GatewayProcess, data_dir: Path
) -> None:
    owner, session_id = launch(gateway)
    link = make_link(owner, session_id)
    secret = link.split("/")[2]
    assert logged_in(gateway, WATCHER).get(link).status == 302
    for path in data_dir.iterdir():
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    assert secret not in gateway.output()


def test_only_the_owner_may_share_a_session(gateway: GatewayProcess) -> None:
    _, session_id = launch(gateway)
    stranger = logged_in(gateway, STRANGER)
    assert stranger.get(f"/sessions/{session_id}/share").status == 404
    form = stranger.get("/")
    answer = stranger.post(
        f"/sessions/{session_id}/share",
        {"minutes": "60", "csrfmiddlewaretoken": form.csrf_token()},
    )
    assert answer.status == 404


def test_a_share_form_makes_one_link_however_often_it_is_sent(gateway: GatewayProcess) -> None:
    _, session_id = launch(gateway)
    owner = logged_in(gateway, OWNER)
    page = owner.get(f"/sessions/{session_id}/share")
    fields = {"minutes": "60", **share_form(page)}
    first = owner.post(f"/sessions/{session_id}/share", fields)
    assert first.status == 200
    assert 'id="share-link"' in first.text
    # Reloading the answer sends the same form again: no second link, and the page says why.
    again = owner.post(f"/sessions/{session_id}/share", fields)
    assert again.status == 409
    assert 'id="share-link"' not in again.text
    assert "This form was sent before" in again.text
    assert again.text.count("data-share=") == 1
    # A form never given, or given for another session, makes nothing either.
    forged = owner.post(f"/sessions/{session_id}/share", {**fields, "form": "made-up"})
    assert forged.status == 409
    # The page that answered gives a fresh form, which makes a second link.
    second = owner.post(f"/sessions/{session_id}/share", {"minutes": "15", **share_form(again)})
    assert second.status == 200
    assert second.text.count("data-share=") == 2
