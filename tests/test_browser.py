"""The portal in a real browser: Chromium driven by Playwright, a real ``vizgate serve`` process,
real TigerVNC started by the seed's unmodified ``desktop_session.py``.

A user logs in, launches a desktop and sees the colours painted on it; closing the page ends
the session; a user outside a type's group neither sees nor reserves it, and cannot open
another user's session; an administrator ends a user's session and the user's viewer says so.
Screenshots of the pages are saved under ``test-artifacts/screenshots/`` for people to look at.
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import socket
import struct
import subprocess
import threading
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway import GatewayProcess, seed_desktop_type, start_gateway, write_catalog
from portal_client import Account, create_accounts
from support import (
    VncHome,
    free_displays,
    kill_pid_tree,
    pids_on_display,
    require_binaries,
    scaled,
    wait_until,
)
from test_portal import ALICE, BOB, GROUP, ROOT
from vizgate.testing import DOUBLE_SESSION_SCRIPT

pytestmark = [pytest.mark.browser, pytest.mark.integration]

playwright_api = pytest.importorskip("playwright.sync_api")

ROOT_DIR = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT_DIR / "examples"
SCREENSHOTS = ROOT_DIR / "test-artifacts" / "screenshots"
DESKTOP = "Local Software Session"
CLUSTER = "Cluster Node Session"
SLOW = "Slow Session"
BROKEN = "Broken Session"
SHORT = "Short Session"
# The short session's maximum lifetime: under a minute, so the viewer warns at once.
SHORT_LIFETIME = 45
SLOW_DELAY = 3
# Long enough for the viewer to reconnect after a dropped connection.
LINGER = 3.0
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
# A pixel of the desktop's root window, away from the terminal the session starts at +10+10.
PROBE = (1000, 740)


class DroppingProxy:
    """A TCP forwarder on 127.0.0.1 in front of the gateway that can drop every connection at
    once with a reset, as a network failure would; new connections are forwarded again.

    One thread serves every connection through a selector; :meth:`drop` asks that thread to
    reset them, so no socket is closed under another thread's feet.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._peers: dict[socket.socket, socket.socket] = {}
        self._dropped = threading.Event()
        self._dropping = False
        self._closing = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def _serve(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self._listener, selectors.EVENT_READ)
        selector.register(self._wake_reader, selectors.EVENT_READ)
        while not self._closing:
            for key, _ in selector.select():
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self._wake_reader:
                    self._wake_reader.recv(64)
                elif sock is self._listener:
                    with contextlib.suppress(BlockingIOError):
                        client, _ = self._listener.accept()
                        upstream = socket.create_connection(("127.0.0.1", self.target_port))
                        self._peers[client], self._peers[upstream] = upstream, client
                        selector.register(client, selectors.EVENT_READ)
                        selector.register(upstream, selectors.EVENT_READ)
                elif sock in self._peers:
                    try:
                        data = sock.recv(65536)
                        if data:
                            self._peers[sock].sendall(data)
                            continue
                    except OSError:
                        pass
                    self._forget(selector, sock, reset=False)
            if self._dropping or self._closing:
                for sock in list(self._peers):
                    self._forget(selector, sock, reset=True)
                self._dropping = False
                self._dropped.set()
        selector.close()

    def _forget(self, selector: selectors.BaseSelector, sock: socket.socket, reset: bool) -> None:
        peer = self._peers.pop(sock, None)
        for each in (sock, peer):
            if each is None:
                continue
            self._peers.pop(each, None)
            with contextlib.suppress(KeyError, ValueError):
                selector.unregister(each)
            with contextlib.suppress(OSError):
                if reset:
                    # SO_LINGER 0: close() sends an RST, as a broken network path would.
                    each.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                each.close()

    def drop(self) -> None:
        """Reset every forwarded connection and wait until that is done."""
        self._dropped.clear()
        self._dropping = True
        self._wake_writer.send(b"x")
        assert self._dropped.wait(scaled(5)), "the proxy did not drop its connections"

    def close(self) -> None:
        self._closing = True
        self._wake_writer.send(b"x")
        self._thread.join(scaled(5))
        self._listener.close()
        self._wake_reader.close()
        self._wake_writer.close()


@dataclass(frozen=True)
class Desktop:
    gateway: GatewayProcess
    display_base: int
    home: Path

    def display_of(self, index: int) -> int:
        return self.display_base + index


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    require_binaries("chromium")
    with playwright_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def desktop(vnc_home: VncHome, tmp_path: Path) -> Iterator[Desktop]:
    """A gateway serving the seed's desktop type (real TigerVNC), a gated type, one that starts
    slowly and one that fails to start; with alice (in the group), bob (in no group) and the
    administrator root."""
    require_binaries("vncserver", "Xvnc", "xsetroot")
    # Above the displays other tests use, so that their servers do not take these ports.
    display_base = free_displays(3, start=400)
    config = write_catalog(
        tmp_path / "config",
        {
            DESKTOP: seed_desktop_type(display_base, ["1024x768", "1600x1200"], count=2),
            CLUSTER: {
                "script": str(DOUBLE_SESSION_SCRIPT),
                "count": 1,
                "options": {"behaviour": "starts", "group": GROUP},
            },
            SLOW: {
                "script": str(DOUBLE_SESSION_SCRIPT),
                "count": 1,
                "options": {"behaviour": "slow", "delay": SLOW_DELAY},
            },
            # A pool of two whose first instance always fails to start.
            BROKEN: {
                "script": str(DOUBLE_SESSION_SCRIPT),
                "count": 2,
                "options": {"behaviour": "starts", "behaviour_by_index": {"0": "false"}},
            },
            SHORT: seed_desktop_type(display_base + 2, ["800x600"], max_lifetime=SHORT_LIFETIME),
        },
    )
    run = tmp_path / "run"
    create_accounts(run / "data", [ALICE, BOB, ROOT], groups=[GROUP])
    with desktop_gateway(
        run, config, vnc_home, display_base, 3,
        "--linger", str(LINGER), "--stop-sessions-on-exit", "--ping-interval", "0",
    ) as desktop:  # fmt: skip
        yield desktop
    log = desktop.gateway.output()
    for account in (ALICE, BOB, ROOT):
        assert account.password not in log
    assert vnc_home.password.decode() not in log


@contextlib.contextmanager
def desktop_gateway(
    run: Path, config: Path, vnc_home: VncHome, display_base: int, displays: int, *args: str
) -> Iterator[Desktop]:
    """A gateway serving desktops on ``displays`` X displays from ``display_base``; when it
    stops, whatever still runs on those displays is stopped too."""
    gateway = start_gateway(run, config, *args)
    try:
        yield Desktop(gateway, display_base, vnc_home.path)
    finally:
        gateway.stop()
        for display in range(display_base, display_base + displays):
            for pid in pids_on_display(display):
                kill_pid_tree(pid)


PROBLEMS: dict[Any, list[str]] = {}


def assert_no_script_problems(page: Any) -> None:
    assert PROBLEMS.get(page) == [], PROBLEMS.get(page)


def screenshot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))


def log_in(
    browser: Any,
    url: str,
    account: Account,
    *,
    screenshot_as: str = "",
    permissions: Sequence[str] = (),
) -> Any:
    """A new browser context with ``account`` logged in at the gateway's ``url``; the page may
    use what ``permissions`` names (e.g. ``clipboard-read``) without asking."""
    context = browser.new_context(
        viewport={"width": 1280, "height": 860}, permissions=list(permissions)
    )
    page = context.new_page()
    problems: list[str] = []
    # Uncaught script errors, and anything the Content-Security-Policy blocked.
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on(
        "console",
        lambda message: (
            problems.append(message.text) if "Content Security Policy" in message.text else None
        ),
    )
    PROBLEMS[page] = problems
    page.goto(url)
    assert page.url.startswith(url + "login/")
    if screenshot_as:
        screenshot(page, screenshot_as)
    page.fill("#id_username", account.name)
    page.fill("#id_password", account.password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(url)
    return page


def launch(page: Any, service: str, size: str) -> str:
    """Launch from the catalogue; returns the session id once the viewer page is open."""
    card = page.locator(f'section.card[data-service="{service}"]')
    card.locator("select").select_option(size)
    card.get_by_role("button", name="Launch").click()
    page.wait_for_url(re.compile(r".*/sessions/[0-9a-f]+/$"))
    match = re.search(r"/sessions/([0-9a-f]+)/$", page.url)
    assert match
    return match.group(1)


def display_env(desktop: Desktop, display: int) -> dict[str, str]:
    return {**os.environ, "DISPLAY": f":{display}", "XAUTHORITY": str(desktop.home / ".Xauthority")}


def paint(desktop: Desktop, display: int, colour: str) -> None:
    env = display_env(desktop, display)
    subprocess.run(["xsetroot", "-solid", colour], env=env, check=True, timeout=scaled(10))


def x_clipboard(desktop: Desktop, display: int) -> str | None:
    """The text of the desktop's CLIPBOARD selection; None while nobody owns it."""
    result = subprocess.run(
        ["xclip", "-selection", "clipboard", "-o"],
        env=display_env(desktop, display),
        capture_output=True,
        timeout=scaled(10),
    )
    return result.stdout.decode() if result.returncode == 0 else None


def browser_clipboard(page: Any) -> str:
    text: str = page.evaluate("navigator.clipboard.readText()")
    return text


def pixel(page: Any) -> list[int] | None:
    result: list[int] | None = page.evaluate(
        """([x, y]) => {
            const canvas = document.querySelector('#screen canvas');
            if (!canvas || canvas.width <= x || canvas.height <= y) { return null; }
            const data = canvas.getContext('2d').getImageData(x, y, 1, 1).data;
            return [data[0], data[1], data[2]];
        }""",
        list(PROBE),
    )
    return result


def wait_for_colour(page: Any, rgb: tuple[int, int, int]) -> None:
    wait_until(
        lambda: pixel(page) == list(rgb),
        scaled(10),
        message=f"the canvas did not show {rgb} (last: {pixel(page)})",
    )


def status(gateway: GatewayProcess) -> dict[str, Any]:
    result: dict[str, Any] = gateway.request("/v1/status").json()
    return result


def ended(gateway: GatewayProcess, session_id: str) -> dict[str, Any] | None:
    return next((s for s in status(gateway)["ended"] if s["id"] == session_id), None)


def connected(page: Any, times: int = 1) -> None:
    """Wait until the viewer has established its connection ``times`` times."""
    playwright_api.expect(page.locator("body")).to_have_attribute(
        "data-connects", str(times), timeout=scaled(30) * 1000
    )
    playwright_api.expect(page.locator("body")).to_have_attribute("data-viewer", "connected")


def launch_desktop(page: Any, desktop: Desktop, size: str) -> tuple[str, int]:
    """Launch the desktop type and wait until the viewer shows it: its session id and the X
    display it runs on (the session being the only one)."""
    session_id = launch(page, DESKTOP, size)
    connected(page)
    [session] = status(desktop.gateway)["sessions"]
    assert session["id"] == session_id
    return session_id, desktop.display_of(session["index"])


def test_a_user_sees_the_desktop_survives_a_drop_and_closing_the_page_ends_it(
    browser: Any, desktop: Desktop
) -> None:
    gateway = desktop.gateway
    # The browser reaches the gateway through a proxy that can break its connections.
    proxy = DroppingProxy(gateway.port)
    try:
        page = log_in(browser, proxy.url, ALICE, screenshot_as="login")
        cards = page.locator("section.card h2").all_inner_texts()
        assert cards == [DESKTOP, CLUSTER, SLOW, BROKEN, SHORT]
        free = page.locator(f'section.card[data-service="{DESKTOP}"] .free')
        playwright_api.expect(free).to_have_text("2 of 2 free")
        screenshot(page, "catalogue")

        session_id = launch(page, DESKTOP, "1024x768")
        connected(page)
        [session] = status(gateway)["sessions"]
        assert (session["id"], session["user"], session["size"]) == (
            session_id,
            "alice",
            "1024x768",
        )
        display = desktop.display_of(session["index"])
        assert page.evaluate("document.querySelector('#screen canvas').width") == 1024

        paint(desktop, display, "#ff0000")
        wait_for_colour(page, (255, 0, 0))
        screenshot(page, "viewer")

        # A network failure: the viewer opens the same session again, on the same desktop.
        servers = pids_on_display(display)
        proxy.drop()
        connected(page, times=2)
        paint(desktop, display, "#0040c0")
        wait_for_colour(page, (0, 0x40, 0xC0))
        [again] = status(gateway)["sessions"]
        assert (again["id"], again["connections"]) == (session_id, 1)
        assert servers <= pids_on_display(display)

        assert_no_script_problems(page)
        page.context.close()
    finally:
        proxy.close()

    def over() -> dict[str, Any] | None:
        record = ended(gateway, session_id)
        return record if record and not pids_on_display(display) else None

    record = wait_until(over, LINGER + scaled(5), message="closing the page did not end it")
    assert record["end_reason"] == "disconnected"


def test_the_clipboard_is_shared_with_the_session_both_ways_until_turned_off(
    browser: Any, desktop: Desktop
) -> None:
    require_binaries("xclip")
    gateway = desktop.gateway
    page = log_in(browser, gateway.url, ALICE, permissions=["clipboard-read", "clipboard-write"])
    page.evaluate("navigator.clipboard.writeText('copied before the session')")
    _, display = launch_desktop(page, desktop, "1024x768")

    # Connecting hands the session what this computer had copied.
    wait_until(
        lambda: x_clipboard(desktop, display) == "copied before the session",
        scaled(10),
        message="the browser's clipboard did not reach the session",
    )

    def copy_in_session(text: str) -> subprocess.Popen[bytes]:
        # xclip owns the selection, and serves it, until another owner takes it.
        owner = subprocess.Popen(
            ["xclip", "-quiet", "-selection", "clipboard", "-i"],
            env=display_env(desktop, display),
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        assert owner.stdin is not None
        owner.stdin.write(text.encode())
        owner.stdin.close()
        return owner

    owners = [copy_in_session("copied in the session \u00e9")]
    try:
        # What the session copies lands in this computer's clipboard, and in the panel.
        wait_until(
            lambda: browser_clipboard(page) == "copied in the session \u00e9",
            scaled(10),
            message=f"the session's clipboard did not arrive ({browser_clipboard(page)!r})",
        )
        assert page.locator("#clipboard-text").input_value() == "copied in the session \u00e9"

        # Something copied in another window reaches the session when the page has the focus
        # back.
        other = page.context.new_page()
        other.goto(gateway.url)
        other.evaluate("navigator.clipboard.writeText('copied in another window')")
        other.close()
        page.bring_to_front()
        # Headless Chromium lets every page keep the focus, so the window gets no focus event
        # of its own: it is sent as a desktop browser sends it when its window is activated.
        page.evaluate("window.dispatchEvent(new FocusEvent('focus'))")
        wait_until(
            lambda: x_clipboard(desktop, display) == "copied in another window",
            scaled(10),
            message="this computer's clipboard did not reach the session",
        )

        # Turned off, the session's copies stay in the panel only.
        page.get_by_role("button", name="Clipboard").click()
        page.locator("#clipboard-auto").uncheck()
        owners.append(copy_in_session("kept in the session"))
        playwright_api.expect(page.locator("#clipboard-text")).to_have_value(
            "kept in the session", timeout=scaled(10) * 1000
        )
        assert browser_clipboard(page) == "copied in another window"
        # ... and the choice is remembered for the next viewer page.
        page.reload()
        connected(page)
        page.get_by_role("button", name="Clipboard").click()
        playwright_api.expect(page.locator("#clipboard-auto")).not_to_be_checked()
        assert x_clipboard(desktop, display) == "kept in the session"
        assert_no_script_problems(page)
    finally:
        for owner in owners:
            if owner.poll() is None:
                owner.kill()
            owner.wait(timeout=10)
        page.context.close()


def test_a_user_outside_the_group_neither_sees_nor_reserves_nor_opens_others_sessions(
    browser: Any, desktop: Desktop
) -> None:
    gateway = desktop.gateway
    alice = log_in(browser, gateway.url, ALICE)
    token = alice.locator("input[name=csrfmiddlewaretoken]").first.input_value()
    launched = alice.context.request.post(
        gateway.url + "launch",
        form={"service": CLUSTER, "size": "1600x1200", "csrfmiddlewaretoken": token},
        headers={"Referer": gateway.url, "Origin": gateway.url.rstrip("/")},
        max_redirects=0,
    )
    assert launched.status == 302, launched.text()
    location = launched.headers["location"]
    session_id = location.strip("/").split("/")[-1]

    bob = log_in(browser, gateway.url, BOB)
    assert bob.locator("section.card h2").all_inner_texts() == [DESKTOP, SLOW, BROKEN, SHORT]
    assert CLUSTER not in bob.content()
    screenshot(bob, "catalogue-without-group")

    refused = bob.context.request.get(
        gateway.url + "v1/reserve/" + urllib.parse.quote(CLUSTER, safe="")
    )
    assert refused.status == 403
    assert refused.json()["reason"] == "forbidden"

    closed = bob.evaluate(
        """(path) => new Promise((resolve) => {
            const socket = new WebSocket(`ws://${location.host}${path}`, ['binary']);
            socket.binaryType = 'arraybuffer';
            socket.onmessage = () => resolve({ message: true });
            socket.onclose = (event) => resolve({ code: event.code, reason: event.reason });
        })""",
        f"/websockify?session={session_id}",
    )
    assert closed == {"code": 1008, "reason": "this session belongs to another user"}
    # Bob's attempt did not start alice's session.
    [session] = [s for s in status(gateway)["sessions"] if s["id"] == session_id]
    assert session["state"] == "reserved"
    assert bob.goto(gateway.url + location.lstrip("/")).status == 404


def test_an_administrator_ends_a_users_session_and_the_viewer_says_so(
    browser: Any, desktop: Desktop
) -> None:
    gateway = desktop.gateway
    alice = log_in(browser, gateway.url, ALICE)
    session_id, display = launch_desktop(alice, desktop, "1600x1200")

    root = log_in(browser, gateway.url, ROOT)
    playwright_api.expect(
        root.locator(f'section.card[data-service="{DESKTOP}"] .free')
    ).to_have_text("1 of 2 free")
    root.goto(gateway.url + "status/")
    row = root.locator(f'tr[data-session="{session_id}"]')
    playwright_api.expect(row).to_contain_text("alice")
    playwright_api.expect(row).to_contain_text("running")
    screenshot(root, "status")
    row.get_by_role("button", name="Terminate").click()
    root.wait_for_url(gateway.url + "status/")

    playwright_api.expect(alice.locator("#overlay-text")).to_have_text(
        "session ended by administrator", timeout=scaled(10) * 1000
    )
    playwright_api.expect(alice.locator("#overlay-title")).to_have_text("Session ended")
    # An ended session cannot be opened again: no Reconnect, no End session.
    playwright_api.expect(alice.locator("#overlay-reconnect")).to_be_hidden()
    playwright_api.expect(alice.locator("#end-form")).to_be_hidden()
    screenshot(alice, "viewer-terminated")
    assert_no_script_problems(alice)
    assert_no_script_problems(root)

    record = wait_until(
        lambda: ended(gateway, session_id), scaled(10), message="the session did not end"
    )
    assert record["end_reason"] == "terminated"
    wait_until(lambda: not pids_on_display(display), scaled(10), message="Xvnc still runs")
    playwright_api.expect(
        root.locator(f'table.ended tr[data-session="{session_id}"] .reason')
    ).to_contain_text("session ended by administrator", timeout=scaled(10) * 1000)


def test_the_viewer_shows_the_start_progress_and_why_a_start_failed(
    browser: Any, desktop: Desktop
) -> None:
    gateway = desktop.gateway
    page = log_in(browser, gateway.url, BOB)

    launch(page, SLOW, "1024x768")
    overlay = page.locator("#overlay")
    playwright_api.expect(page.locator("#overlay-title")).to_have_text(f"Starting {SLOW}…")
    # The script's report_progress(), polled from the session's status URL.
    playwright_api.expect(page.locator("#overlay-text")).to_have_text(
        f"starting slowly ({SLOW_DELAY} s)", timeout=scaled(SLOW_DELAY) * 1000
    )
    playwright_api.expect(overlay).to_be_visible()
    # While the session lives, nothing offers a new one.
    playwright_api.expect(page.get_by_role("button", name="Launch again")).to_be_hidden()
    screenshot(page, "viewer-starting")

    page.goto(gateway.url)
    launch(page, BROKEN, "1024x768")
    playwright_api.expect(page.locator("body")).to_have_attribute(
        "data-viewer", "failed", timeout=scaled(10) * 1000
    )
    playwright_api.expect(page.locator("#overlay-title")).to_have_text("The session failed")
    playwright_api.expect(page.locator("#overlay-text")).to_have_text(
        "session failed to start: start() returned False"
    )
    playwright_api.expect(page.locator("#overlay-reconnect")).to_be_hidden()
    playwright_api.expect(page.locator("#end-form")).to_be_hidden()
    screenshot(page, "viewer-failed")
    # Launch again: a new session of the type and size, on the instance that did not fail.
    failed_id = page.url.rstrip("/").rsplit("/", 1)[-1]
    page.get_by_role("button", name="Launch again").click()
    page.wait_for_url(lambda url: failed_id not in url and "/sessions/" in url)
    again_id = page.url.rstrip("/").rsplit("/", 1)[-1]
    [again] = [s for s in status(gateway)["sessions"] if s["id"] == again_id]
    assert (again["service"], again["index"], again["size"]) == (BROKEN, 1, "1024x768")
    assert_no_script_problems(page)


def warned(page: Any, words: str) -> int:
    """Wait until the viewer warns that the session ends, in ``words``; the seconds it says
    are left."""
    warning = page.locator("#warning")
    playwright_api.expect(warning).to_be_visible(timeout=scaled(15) * 1000)
    playwright_api.expect(warning).to_contain_text(words)
    return int(warning.inner_text().split(" in ", 1)[1].split(" s", 1)[0])


def test_the_viewer_warns_a_minute_before_a_limit_ends_the_session(
    browser: Any, desktop: Desktop
) -> None:
    gateway = desktop.gateway
    page = log_in(browser, gateway.url, BOB)
    session_id = launch(page, SHORT, "800x600")
    connected(page)
    assert 0 < warned(page, "maximum lifetime") <= SHORT_LIFETIME
    screenshot(page, "viewer-warning")
    assert_no_script_problems(page)
    # The viewer asks before it ends a session: accept.
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#end-form button").click()
    record = wait_until(
        lambda: ended(gateway, session_id), scaled(10), message="the session did not end"
    )
    assert record["end_reason"] == "released"


def test_a_share_link_lets_another_user_watch_the_desktop_until_it_is_withdrawn(
    browser: Any, desktop: Desktop
) -> None:
    gateway = desktop.gateway
    owner = log_in(browser, gateway.url, ALICE)
    session_id, display = launch_desktop(owner, desktop, "1024x768")
    paint(desktop, display, "#ff0000")
    wait_for_colour(owner, (255, 0, 0))

    with owner.context.expect_page() as opened:
        owner.get_by_role("link", name="Share").click()
    share = opened.value
    share.get_by_role("button", name="Make a view-only link").click()
    link = share.locator("#share-link").input_value()
    assert re.fullmatch(re.escape(gateway.url) + r"share/[A-Za-z0-9_-]+/", link), link
    screenshot(share, "share")

    watcher = log_in(browser, gateway.url, BOB)
    watcher.goto(link)
    watcher.wait_for_url(re.compile(rf".*/sessions/{session_id}/$"))
    connected(watcher)
    wait_for_colour(watcher, (255, 0, 0))
    playwright_api.expect(watcher.locator("#view-only")).to_contain_text("view only")
    assert watcher.locator("#end-form, #clipboard-button, #ctrl-alt-del, #share").count() == 0
    # What the owner's desktop shows next reaches the watcher too; both are connected.
    paint(desktop, display, "#00c000")
    wait_for_colour(watcher, (0, 0xC0, 0))
    [watched] = status(gateway)["sessions"]
    assert (watched["id"], watched["connections"]) == (session_id, 2)
    # The owner's toolbar says someone watches.
    playwright_api.expect(owner.locator("#watchers")).to_have_text(
        "1 watching", timeout=scaled(15) * 1000
    )
    screenshot(watcher, "watching")
    screenshot(owner, "watched")

    share.goto(share.url)  # a GET: reloading would post the form again
    share.get_by_role("button", name="Withdraw").click()
    playwright_api.expect(watcher.locator("#overlay-title")).to_have_text(
        "You can no longer watch this session", timeout=scaled(10) * 1000
    )
    playwright_api.expect(watcher.locator("#overlay-text")).to_have_text(
        "the share link was withdrawn"
    )
    # The owner watches on, alone.
    playwright_api.expect(owner.locator("body")).to_have_attribute("data-viewer", "connected")
    playwright_api.expect(owner.locator("#watchers")).to_be_hidden(timeout=scaled(15) * 1000)
    wait_until(
        lambda: [s["connections"] for s in status(gateway)["sessions"]] == [1],
        scaled(10),
        message="the watcher's connection is still counted",
    )
    for page in (owner, watcher):
        assert_no_script_problems(page)
    watcher.context.close()
    owner.context.close()


def test_the_admin_pages_work_under_the_content_security_policy(
    browser: Any, desktop: Desktop
) -> None:
    gateway = desktop.gateway
    page = log_in(browser, gateway.url, ROOT)
    for path in ("admin/", "admin/auth/user/", "admin/auth/group/", "admin/auth/user/add/"):
        page.goto(gateway.url + path)
        playwright_api.expect(page.locator("#site-name")).to_contain_text("vizgate")
    # The user list's "select all" checkbox is the admin's own script at work.
    page.goto(gateway.url + "admin/auth/user/")
    page.locator("#action-toggle").check()
    playwright_api.expect(page.locator("tr.selected").first).to_be_visible()
    assert_no_script_problems(page)
    page.context.close()


def test_a_notice_shows_on_every_page_and_over_the_desktop_until_hidden(
    browser: Any, desktop: Desktop
) -> None:
    gateway = desktop.gateway
    admin = log_in(browser, gateway.url, ROOT)
    admin.goto(gateway.url + "status/")

    def post_notice(text: str) -> None:
        admin.goto(gateway.url + "status/")
        admin.fill(".notice-form input[name=notice]", text)
        admin.locator(".notice-form button").click()
        admin.wait_for_url(gateway.url + "status/")

    post_notice("Maintenance on Friday from 18:00")
    banner = admin.locator(".site-notice")
    playwright_api.expect(banner).to_have_text("Maintenance on Friday from 18:00")

    page = log_in(browser, gateway.url, BOB, screenshot_as="login-with-notice")
    playwright_api.expect(page.locator(".site-notice")).to_have_text(
        "Maintenance on Friday from 18:00"
    )
    launch(page, DESKTOP, "1024x768")
    connected(page)
    notice = page.locator("#notice")
    playwright_api.expect(notice).to_contain_text(
        "Maintenance on Friday from 18:00", timeout=scaled(10) * 1000
    )
    screenshot(page, "viewer-notice")
    notice.get_by_role("button", name="Hide").click()
    playwright_api.expect(notice).to_be_hidden()
    # A new text shows again, within a status check; a withdrawn one goes.
    post_notice("Maintenance moved to Saturday")
    playwright_api.expect(notice).to_contain_text(
        "Maintenance moved to Saturday", timeout=scaled(15) * 1000
    )
    admin.goto(gateway.url + "status/")
    admin.get_by_role("button", name="Withdraw the notice").click()
    playwright_api.expect(notice).to_be_hidden(timeout=scaled(15) * 1000)
    page.goto(gateway.url)
    playwright_api.expect(page.locator(".site-notice")).to_have_count(0)
    assert_no_script_problems(page)
    assert_no_script_problems(admin)
