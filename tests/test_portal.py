"""The portal through a real gateway process over real HTTP and WebSockets on 127.0.0.1: login,
CSRF, group gating in the catalogue, the reserve API and the tunnel's authorizer, a user's
sessions, the administrators' status page, and the static files.

Accounts are made with ``vizgate user add`` / ``vizgate group add`` (in one subprocess) against
the gateway's data directory before the gateway starts. The session types use vizgate's test
doubles: a started session is a TCP server that greets like a VNC server and echoes.
"""

from __future__ import annotations

import html
import re
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway import GatewayProcess, gateway_env, start_gateway, wait_listening, write_config
from portal_client import (
    Account,
    Browser,
    Page,
    create_accounts,
    logged_in,
    open_socket,
)
from snapshots import session_info
from support import require_binaries, scaled, wait_until
from vizgate.sessions import SessionInfo
from vizgate.testing.doubles import RFB_GREETING
from vizgate.web.portal.assets import content_type_of, is_safe_path
from vizgate.web.portal.auth import (
    CROSS_ORIGIN_REFUSAL,
    LOGIN_REFUSAL,
    OWNER_REFUSAL,
    Viewer,
    origin_allowed,
    refusal,
)

GROUP = "ClusterRendering"
DESKTOP = "Local Software Session"
CLUSTER = "Cluster Node Session"
NOVNC_INSTALLED = (
    Path(__file__).resolve().parent.parent / "src/vizgate/web/portal/static/novnc/core/rfb.js"
).is_file()

TYPES: dict[str, dict[str, Any]] = {
    DESKTOP: {"count": 3, "options": {"behaviour": "starts", "sizes": ["1024x768", "1600x1200"]}},
    CLUSTER: {"count": 1, "options": {"behaviour": "starts", "group": GROUP}},
}


ALICE = Account("alice", "alice-in-the-cluster-42", groups=(GROUP,))
BOB = Account("bob", "bob-outside-groups-17")
ROOT = Account("root", "administrator-pass-99", admin=True)


def status(gateway: GatewayProcess) -> dict[str, Any]:
    result: dict[str, Any] = gateway.request("/v1/status").json()
    return result


def live_session(gateway: GatewayProcess, session_id: str) -> dict[str, Any] | None:
    return next((s for s in status(gateway)["sessions"] if s["id"] == session_id), None)


def ended_session(gateway: GatewayProcess, session_id: str) -> dict[str, Any] | None:
    return next((s for s in status(gateway)["ended"] if s["id"] == session_id), None)


def session_id_of_viewer(location: str) -> str:
    match = re.fullmatch(r"/sessions/([0-9a-f]+)/", location)
    assert match, location
    return match.group(1)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    directory = tmp_path_factory.mktemp("portal")
    config = write_config(directory / "config", TYPES)
    create_accounts(directory / "run" / "data", [ALICE, BOB, ROOT], groups=[GROUP])
    started = start_gateway(directory / "run", config, "--linger", "0.5")
    yield started
    started.stop()
    log = started.output()
    for account in (ALICE, BOB, ROOT):
        assert account.password not in log


@pytest.fixture
def bob_session(gateway: GatewayProcess) -> Iterator[tuple[Browser, str]]:
    """Bob logged in, with a session of the desktop type reserved through the portal."""
    bob = logged_in(gateway, BOB)
    launched = bob.launch(DESKTOP, "1600x1200")
    assert launched.status == 302, launched.text
    session_id = session_id_of_viewer(launched.location)
    yield bob, session_id
    if live_session(gateway, session_id) is not None:
        root = logged_in(gateway, ROOT)
        root.post(
            f"/status/{session_id}/terminate",
            {"csrfmiddlewaretoken": root.get("/status/").csrf_token()},
        )


# ---------------------------------------------------------------------------------------
# Logging in, CSRF


def test_pages_need_a_login(gateway: GatewayProcess) -> None:
    anonymous = Browser(gateway.port)
    for path in ("/", "/sessions/", "/status/", "/sessions/0123456789abcdef/"):
        page = anonymous.get(path)
        assert page.status == 302, path
        assert page.location == "/login/?next=" + urllib.parse.quote(path), page.location
    page = anonymous.get("/sessions/0123456789abcdef/status")
    assert page.status == 401
    assert page.json()["reason"] == "unauthorized"


def test_every_page_has_a_content_security_policy(gateway: GatewayProcess) -> None:
    anonymous = Browser(gateway.port)
    root = logged_in(gateway, ROOT)
    pages = {
        "/login/": anonymous.get("/login/"),
        "/": root.get("/"),
        "a missing page": root.get("/no/such/page/"),
        "/admin/login/": anonymous.get("/admin/login/"),
        "/admin/auth/user/": root.get("/admin/auth/user/"),
    }
    for name, page in pages.items():
        policy = page.headers.get("Content-Security-Policy", "")
        assert "frame-ancestors 'none'" in policy, name
        assert "script-src 'self';" in policy, name
        assert "style-src 'self';" in policy, name


def test_the_login_form_refuses_a_wrong_password(gateway: GatewayProcess) -> None:
    browser = Browser(gateway.port)
    page = browser.login(Account(ALICE.name, "not-her-password"))
    assert page.status == 200
    assert "Please enter a correct username and password" in page.text
    assert "sessionid" not in browser.cookies
    assert browser.get("/").status == 302

    page = browser.login(ALICE)
    assert page.status == 302
    assert page.location == "/"
    catalogue = browser.get("/")
    assert catalogue.status == 200
    assert "alice" in catalogue.text


def test_failed_logins_lock_an_account_out_at_that_address_for_a_while(tmp_path: Path) -> None:
    config = write_config(tmp_path / "config", TYPES)
    create_accounts(tmp_path / "run" / "data", [ALICE, ROOT], groups=[GROUP])
    window = 4.0
    gateway = start_gateway(
        tmp_path / "run", config, "--login-failures", "3", "--login-window", f"{window:g}"
    )
    wrong = Account(ALICE.name, "wrong-guess-7731")
    try:
        guesser = Browser(gateway.port)
        for _ in range(3):
            page = guesser.login(wrong)
            assert "Please enter a correct username and password" in page.text
        locked_at = time.monotonic()
        # Now her own password is refused from this address too, saying why.
        page = guesser.login(ALICE)
        assert page.status == 200
        assert "Too many failed logins for this account from your address" in page.text
        assert "sessionid" not in guesser.cookies
        # The admin's login form is behind the same throttle.
        admin_form = guesser.get("/admin/login/")
        page = guesser.post(
            "/admin/login/",
            {
                "username": ALICE.name,
                "password": ALICE.password,
                "csrfmiddlewaretoken": admin_form.csrf_token(),
            },
        )
        assert page.status == 200
        assert "Too many failed logins" in page.text
        # Other accounts at this address are not locked, nor is hers elsewhere (a proxy that
        # uvicorn trusts names the client's address).
        logged_in(gateway, ROOT)
        elsewhere = Browser(gateway.port)
        forwarded = {"X-Forwarded-For": "192.0.2.44"}
        form = elsewhere.get("/login/", headers=forwarded)
        page = elsewhere.post(
            "/login/",
            {
                "username": ALICE.name,
                "password": ALICE.password,
                "csrfmiddlewaretoken": form.csrf_token(),
            },
            headers=forwarded,
        )
        assert page.status == 302, page.text
        # Once the first failure is out of the window, she logs in here too.
        wait_until(
            lambda: Browser(gateway.port).login(ALICE).status == 302,
            timeout=window + scaled(10),
            interval=0.5,
            message="still locked out after the window",
        )
        assert time.monotonic() - locked_at >= window - 1
    finally:
        gateway.stop()
    log = gateway.output()
    assert "logins of 'alice' from 127.0.0.1 refused" in log
    assert wrong.password not in log
    assert ALICE.password not in log


def test_a_user_may_have_only_so_many_sessions_at_once(tmp_path: Path) -> None:
    capped = "Capped Session"
    types = {
        capped: {"count": 3, "options": {"behaviour": "starts", "max_per_user": 1}},
        DESKTOP: TYPES[DESKTOP],
    }
    config = write_config(tmp_path / "config", types)
    create_accounts(tmp_path / "run" / "data", [BOB, ROOT])
    gateway = start_gateway(tmp_path / "run", config, "--max-sessions-per-user", "2")
    try:
        bob = logged_in(gateway, BOB)
        assert bob.launch(capped).status == 302
        page = bob.launch(capped)
        assert page.status == 409
        assert (
            f"bob already has 1 session of '{capped}', the most one user may have of it at once"
            in html.unescape(page.text)
        )
        assert bob.launch(DESKTOP).status == 302
        page = bob.launch(DESKTOP)
        assert page.status == 409
        assert "bob already has 2 sessions, the most one user may have at once" in html.unescape(
            page.text
        )
        # The API holds a named user to the same limits.
        answer = gateway.request(f"/v1/reserve/{urllib.parse.quote(DESKTOP)}", {"username": "bob"})
        assert answer.status == 409
        assert answer.json()["reason"] == "user_limit"
        # Administrators are not held to them.
        root = logged_in(gateway, ROOT)
        for _ in range(2):
            assert root.launch(capped).status == 302
        assert len([s for s in status(gateway)["sessions"] if s["user"] == "root"]) == 2
    finally:
        gateway.stop()


def test_posts_without_the_csrf_token_are_refused(gateway: GatewayProcess) -> None:
    browser = Browser(gateway.port)
    browser.get("/login/")  # the CSRF cookie, but not the form's token
    page = browser.post("/login/", {"username": ALICE.name, "password": ALICE.password})
    assert page.status == 403
    assert "sessionid" not in browser.cookies

    alice = logged_in(gateway, ALICE)
    before = len(status(gateway)["sessions"])
    page = alice.post("/launch", {"service": DESKTOP, "size": "1024x768"})
    assert page.status == 403
    assert len(status(gateway)["sessions"]) == before

    # A forged form from another site: a token that is not the cookie's.
    page = alice.post("/logout/", {"csrfmiddlewaretoken": "x" * 64})
    assert page.status == 403
    assert alice.get("/").status == 200, "a refused logout logged the user out"

    page = alice.post("/logout/", {"csrfmiddlewaretoken": alice.get("/").csrf_token()})
    assert page.status == 302
    assert alice.get("/").status == 302


# ---------------------------------------------------------------------------------------
# Group gating: catalogue, launch, the reserve API


def card_names(page: Page) -> list[str]:
    return re.findall(r'<section class="card" data-service="([^"]+)">', page.text)


def test_the_catalogue_shows_only_the_types_a_user_may_use(gateway: GatewayProcess) -> None:
    assert card_names(logged_in(gateway, ALICE).get("/")) == [DESKTOP, CLUSTER]
    assert card_names(logged_in(gateway, ROOT).get("/")) == [DESKTOP, CLUSTER]
    bob_page = logged_in(gateway, BOB).get("/")
    assert card_names(bob_page) == [DESKTOP]
    assert CLUSTER not in bob_page.text
    assert re.search(r"\d of 3 free", bob_page.text)
    assert '<option value="1600x1200">1600x1200</option>' in bob_page.text


def test_launching_a_gated_type_is_refused_to_non_members(gateway: GatewayProcess) -> None:
    bob = logged_in(gateway, BOB)
    page = bob.launch(CLUSTER)
    assert page.status == 400
    assert not [s for s in status(gateway)["sessions"] if s["service"] == CLUSTER]


def test_the_reserve_api_refuses_gated_types_with_403(gateway: GatewayProcess) -> None:
    path = "/v1/reserve/" + urllib.parse.quote(CLUSTER, safe="")
    # Anonymous, and this server has no security token: refused.
    page = Browser(gateway.port).get(path)
    assert page.status == 403
    assert page.json()["reason"] == "forbidden"
    assert GROUP in page.json()["error"]

    page = logged_in(gateway, BOB).get(path)
    assert page.status == 403
    assert page.json() == {
        "error": f"the session type {CLUSTER!r} is only for members of the group {GROUP!r}",
        "reason": "forbidden",
        "group": GROUP,
    }

    alice = logged_in(gateway, ALICE)
    page = alice.get(path + "?username=mallory")
    assert page.status == 200, page.text
    token = page.json()["token"]
    [session] = [s for s in status(gateway)["sessions"] if s["id"] == page.json()["session_id"]]
    # A logged-in caller reserves for itself, whatever the username field says.
    assert session["user"] == "alice"
    assert gateway.request(f"/v1/release/{token}").status == 200

    # Ungated types stay open to anonymous callers, as the seed's API is.
    page = Browser(gateway.port).get("/v1/reserve/" + urllib.parse.quote(DESKTOP, safe=""))
    assert page.status == 200
    assert gateway.request(f"/v1/release/{page.json()['token']}").status == 200


# ---------------------------------------------------------------------------------------
# The tunnel's authorizer


def test_a_portal_session_opens_only_for_its_owner(
    gateway: GatewayProcess, bob_session: tuple[Browser, str]
) -> None:
    bob, session_id = bob_session
    query = f"session={session_id}"
    alice = logged_in(gateway, ALICE)

    assert open_socket(gateway, query, None) == (1008, LOGIN_REFUSAL)
    assert open_socket(gateway, query, alice) == (1008, OWNER_REFUSAL)
    # Bob's own cookie, sent by a page of another site or another port of this host.
    assert open_socket(gateway, query, bob, origin="http://evil.example") == (
        1008,
        CROSS_ORIGIN_REFUSAL,
    )
    other_port = f"http://127.0.0.1:{gateway.port + 1}"
    assert open_socket(gateway, query, bob, origin=other_port) == (1008, CROSS_ORIGIN_REFUSAL)
    assert open_socket(gateway, query, bob, origin="") == (1008, CROSS_ORIGIN_REFUSAL)
    # None of the refusals started the session.
    session = live_session(gateway, session_id)
    assert session is not None
    assert session["state"] == "reserved"

    assert open_socket(gateway, query, bob) == RFB_GREETING
    # The administrator may open every session.
    assert open_socket(gateway, query, logged_in(gateway, ROOT)) == RFB_GREETING


def test_gated_bearer_tokens_are_refused_to_logged_in_non_members(
    gateway: GatewayProcess,
) -> None:
    alice = logged_in(gateway, ALICE)
    page = alice.get("/v1/reserve/" + urllib.parse.quote(CLUSTER, safe=""))
    assert page.status == 200
    token = page.json()["token"]
    try:
        query = f"token={token}"
        expected = f"the session type {CLUSTER!r} is only for members of the group {GROUP!r}"
        assert open_socket(gateway, query, logged_in(gateway, BOB)) == (1008, expected)
        # The seed's bearer token: whoever holds it, not logged in, may connect.
        assert open_socket(gateway, query, None) == RFB_GREETING
        assert open_socket(gateway, query, alice) == RFB_GREETING
    finally:
        gateway.request(f"/v1/release/{token}")


# ---------------------------------------------------------------------------------------
# The viewer, a user's sessions, the status page


def test_the_viewer_and_its_status_are_for_the_owner_and_administrators(
    gateway: GatewayProcess, bob_session: tuple[Browser, str]
) -> None:
    bob, session_id = bob_session
    page = bob.get(f"/sessions/{session_id}/")
    assert page.status == 200
    assert f"session={session_id}" in page.text
    assert "Content-Security-Policy" in page.headers
    assert "/static/portal/viewer.js" in page.text
    # The page names the session by its id; no token anywhere.
    assert "token" not in page.text.lower().replace("csrfmiddlewaretoken", "")

    state = bob.get(f"/sessions/{session_id}/status")
    assert state.status == 200
    assert state.json()["state"] == "reserved"
    assert state.json()["size"] == "1600x1200"

    alice = logged_in(gateway, ALICE)
    assert alice.get(f"/sessions/{session_id}/").status == 404
    assert alice.get(f"/sessions/{session_id}/status").status == 404
    root = logged_in(gateway, ROOT)
    assert root.get(f"/sessions/{session_id}/").status == 200
    assert root.get(f"/sessions/{session_id}/status").status == 200


def test_my_sessions_lists_and_ends_the_users_sessions(
    gateway: GatewayProcess, bob_session: tuple[Browser, str]
) -> None:
    bob, session_id = bob_session
    alice = logged_in(gateway, ALICE)
    assert session_id not in alice.get("/sessions/").text

    page = bob.get("/sessions/")
    assert page.status == 200
    assert f'data-session="{session_id}"' in page.text
    assert DESKTOP in page.text

    # Another user cannot end it, even with a valid form.
    refused = alice.post(
        f"/sessions/{session_id}/end",
        {"csrfmiddlewaretoken": alice.get("/sessions/").csrf_token()},
    )
    assert refused.status == 404
    assert live_session(gateway, session_id) is not None

    ended = bob.post(f"/sessions/{session_id}/end", {"csrfmiddlewaretoken": page.csrf_token()})
    assert ended.status == 302
    assert ended.location == "/sessions/"
    record = wait_until(
        lambda: ended_session(gateway, session_id), scaled(10), message="the session did not end"
    )
    assert record["end_reason"] == "released"
    assert record["message"] == "session ended by its user"
    assert bob.get(f"/sessions/{session_id}/status").json()["state"] == "ended"


def test_the_status_page_is_for_administrators_who_may_terminate(
    gateway: GatewayProcess, bob_session: tuple[Browser, str]
) -> None:
    _, session_id = bob_session
    alice = logged_in(gateway, ALICE)
    assert alice.get("/status/").status == 403
    token = alice.get("/").csrf_token()
    refused = alice.post(f"/status/{session_id}/terminate", {"csrfmiddlewaretoken": token})
    assert refused.status == 403
    assert live_session(gateway, session_id) is not None

    root = logged_in(gateway, ROOT)
    page = root.get("/status/")
    assert page.status == 200
    assert f'data-session="{session_id}" data-user="bob"' in page.text
    # bob's reservation was saved before its token was handed out: a write was timed.
    assert re.search(r"Database: writes take \d+\.\d ms on average \(\d+ since", page.text)
    done = root.post(f"/status/{session_id}/terminate", {"csrfmiddlewaretoken": page.csrf_token()})
    assert done.status == 302
    assert done.location == "/status/"
    ended = wait_until(
        lambda: ended_session(gateway, session_id), scaled(10), message="not terminated"
    )
    assert ended["end_reason"] == "terminated"
    assert ended["message"] == "session ended by administrator"
    status_page = root.get("/status/").text
    assert "session ended by administrator" in status_page
    # Each session's page keeps its audit trail after it ended.
    assert f'href="/status/{session_id}/"' in status_page
    assert alice.get(f"/status/{session_id}/").status == 403
    assert root.get("/status/0123456789abcdef/").status == 404

    def trail() -> list[tuple[str, str]] | None:
        rows = re.findall(
            r'<tr data-kind="([^"]+)">\s*<td>[^<]*</td>\s*<td>[^<]*</td>\s*<td>([^<]*)</td>',
            root.get(f"/status/{session_id}/").text,
        )
        return rows if ("stopped", "bob") in rows else None

    rows = wait_until(trail, scaled(10), message="the session's trail did not end")
    assert rows[0] == ("reserved", "bob")
    # The administrator who ended it, not its owner.
    assert ("terminated", "root") in rows


def test_the_django_admin_manages_users_and_groups_for_administrators(
    gateway: GatewayProcess,
) -> None:
    root = logged_in(gateway, ROOT)
    users = root.get("/admin/auth/user/")
    assert users.status == 200
    assert "vizgate administration" in users.text
    # Each user's groups are listed.
    rows = re.findall(r"<tr.*?</tr>", users.text, re.DOTALL)
    [alice_row] = [row for row in rows if ">alice</a>" in row]
    assert GROUP in alice_row
    [bob_row] = [row for row in rows if ">bob</a>" in row]
    assert GROUP not in bob_row
    groups = root.get("/admin/auth/group/")
    assert groups.status == 200
    assert GROUP in groups.text
    stylesheet = re.search(r'href="(/static/admin/css/[^"]+\.css)"', users.text)
    assert stylesheet
    assert gateway.request(stylesheet.group(1)).status == 200

    bob = logged_in(gateway, BOB)
    page = bob.get("/admin/auth/user/")
    assert page.status == 302
    assert page.location.startswith("/admin/login/")


# ---------------------------------------------------------------------------------------
# Static files


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/static/portal/viewer.js", "text/javascript; charset=utf-8"),
        ("/static/portal/portal.css", "text/css; charset=utf-8"),
        ("/static/admin/css/base.css", "text/css; charset=utf-8"),
        ("/static/novnc/core/rfb.js", "text/javascript; charset=utf-8"),
        ("/static/novnc/vendor/pako/lib/zlib/inflate.js", "text/javascript; charset=utf-8"),
    ],
)
def test_static_files_have_their_content_types(
    gateway: GatewayProcess, path: str, content_type: str
) -> None:
    if path.startswith("/static/novnc/") and not NOVNC_INSTALLED:
        pytest.fail("noVNC is not installed: run scripts/install")
    page = gateway.request(path)
    assert page.status == 200
    assert page.headers["Content-Type"] == content_type
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert int(page.headers["Content-Length"]) == len(page.body) > 0

    again = gateway.request(path, headers={"If-Modified-Since": page.headers["Last-Modified"]})
    assert again.status == 304
    assert again.body == b""


@pytest.mark.parametrize(
    "path",
    [
        "/static/portal/../views.py",
        "/static/portal/%2e%2e/views.py",
        "/static/portal/%2E%2E/%2E%2E/settings.py",
        "/static/%2e%2e/portal/views.py",
        "/static/..%2fviews.py",
        "/static/portal/..%5Cviews.py",
        "/static//etc/passwd",
        "/static/%2fetc/passwd",
        "/static/portal/",
        "/static/portal",
        "/static/novnc/core/",
        "/static/novnc/core",
        "/static/portal/.hidden",
        "/static/portal/viewer.js%00.css",
        "/static/nothing-here.js",
    ],
)
def test_static_serving_refuses_traversal_and_folders(gateway: GatewayProcess, path: str) -> None:
    page = gateway.request(path)
    assert page.status == 404, page.body[:200]
    assert b"import" not in page.body
    assert b"SECRET_KEY" not in page.body


def test_static_files_answer_get_and_head_only(gateway: GatewayProcess) -> None:
    page = gateway.request("/static/portal/viewer.js", method="HEAD")
    assert page.status == 200
    assert page.body == b""
    assert page.headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert gateway.request("/static/portal/viewer.js", method="DELETE").status == 405


def test_safe_static_paths_and_content_types() -> None:
    assert is_safe_path("novnc/core/rfb.js")
    for bad in ("", "/etc/passwd", "a/../b", "./a", "a//b", "a/.b", "a\\b", "a\0b", "a/"):
        assert not is_safe_path(bad), bad
    assert content_type_of("x.mjs") == "text/javascript; charset=utf-8"
    assert content_type_of("x.wasm") == "application/wasm"
    assert content_type_of("x.png") == "image/png"
    assert content_type_of("x.unknown-suffix") == "application/octet-stream"


# ---------------------------------------------------------------------------------------
# The authorizer's rules, without a server


def info(*, user: str = "bob", bound: bool = True, service: str = DESKTOP) -> SessionInfo:
    return session_info(user=user, bound=bound, service=service)


def test_refusal_rules() -> None:
    bob = Viewer(username="bob")
    alice = Viewer(username="alice", groups=frozenset({GROUP}))
    staff = Viewer(username="root", staff=True)
    nobody = Viewer()
    cross = Viewer(cookie_refused=CROSS_ORIGIN_REFUSAL)

    assert refusal(bob, info(), None) is None
    assert refusal(alice, info(), None) == OWNER_REFUSAL
    assert refusal(nobody, info(), None) == LOGIN_REFUSAL
    assert refusal(cross, info(), None) == CROSS_ORIGIN_REFUSAL
    assert refusal(staff, info(), None) is None

    gated = info(user="", bound=False, service=CLUSTER)
    assert refusal(nobody, gated, GROUP) is None  # a bearer token
    assert refusal(alice, gated, GROUP) is None
    assert refusal(staff, gated, GROUP) is None
    assert refusal(bob, gated, GROUP) is not None
    # The owner of a portal session of a gated type who left the group meanwhile.
    assert refusal(bob, info(service=CLUSTER), GROUP) is not None


def test_origin_rules() -> None:
    hosts = ["localhost", "127.0.0.1", "[::1]"]

    def from_page(origin: str) -> bool:
        return origin_allowed(origin, host="127.0.0.1:8000", secure=False, allowed_hosts=hosts)

    assert from_page("http://127.0.0.1:8000")
    assert not from_page("https://127.0.0.1:8000")
    assert not from_page("http://127.0.0.1:8001")
    assert not from_page("http://localhost:8000")
    assert not from_page("http://evil.example")
    assert not from_page("")
    assert not from_page("null")
    assert origin_allowed("https://[::1]:8443", host="[::1]:8443", secure=True, allowed_hosts=hosts)
    # The Host header itself must be one the server answers to.
    assert not origin_allowed(
        "http://evil.example:8000", host="evil.example:8000", secure=False, allowed_hosts=hosts
    )
    assert origin_allowed(
        "https://portal.example",
        host="127.0.0.1:8000",
        secure=False,
        allowed_hosts=hosts,
        trusted_origins=["https://portal.example"],
    )


# ---------------------------------------------------------------------------------------
# vizgate demo


def run_demo(home: Path, data_dir: Path, directory: Path) -> GatewayProcess:
    """Start ``vizgate demo`` on a free port and wait until it serves."""
    directory.mkdir(parents=True, exist_ok=True)
    stdout_path, stderr_path = directory / "stdout.txt", directory / "stderr.txt"
    with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "vizgate", "demo", "--port", "0", "--data-dir", str(data_dir)],
            stdout=stdout,
            stderr=stderr,
            env=gateway_env({"HOME": str(home)}),
        )
    demo = GatewayProcess(process, stdout_path, stderr_path)
    try:
        return wait_listening(demo)
    except BaseException:
        demo.stop()
        raise


@pytest.mark.integration
def test_the_demo_creates_an_administrator_once_and_serves_the_examples(tmp_path: Path) -> None:
    require_binaries("vncpasswd")
    home, data_dir = tmp_path / "home", tmp_path / "data"
    home.mkdir()
    demo = run_demo(home, data_dir, tmp_path / "first")
    try:
        out = demo.stdout_path.read_text()
        match = re.search(r"Created the administrator 'admin' with the password: (\S+)\n", out)
        assert match, out
        password = match.group(1)
        assert "vizgate user passwd admin" in out
        assert (home / ".vnc" / "passwd").stat().st_mode & 0o777 == 0o600
        assert "Open the URL printed below in a browser and log in as admin" in out

        admin = Browser(demo.port)
        assert admin.login(Account("admin", password)).status == 302
        catalogue = admin.get("/")
        assert card_names(catalogue) == [DESKTOP, CLUSTER]
        assert admin.get("/status/").status == 200
    finally:
        demo.process.send_signal(signal.SIGINT)
        assert demo.wait(15) == 0
    assert password not in demo.stderr_path.read_text()
    passwd = (home / ".vnc" / "passwd").read_bytes()

    again = run_demo(home, data_dir, tmp_path / "second")
    try:
        out = again.stdout_path.read_text()
        assert "The administrator 'admin' exists already" in out
        assert "vizgate user passwd admin" in out
        assert password not in out
        assert "as it is" in out
        # The VNC password was kept, and the administrator's still works.
        assert (home / ".vnc" / "passwd").read_bytes() == passwd
        assert Browser(again.port).login(Account("admin", password)).status == 302
    finally:
        again.process.send_signal(signal.SIGINT)
        assert again.wait(15) == 0
