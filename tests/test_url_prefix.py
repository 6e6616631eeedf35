"""vizgate served under a path (``--url-prefix``), as behind a reverse proxy that passes the
paths it forwards on unchanged (``location /vizgate/ { proxy_pass http://127.0.0.1:8000; }``) or
strips the prefix (``proxy_pass http://127.0.0.1:8000/;``, Apache's ``ProxyPass``).

A real gateway process: every URL it writes (links, forms, redirects, static files, the viewer's
WebSocket) carries the prefix, its cookies are scoped to it, and the seed's API and the tunnel
work under it; a path without the prefix is served as a stripping proxy forwards it.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets
import websockets.sync.client

from gateway import GatewayProcess, start_gateway, write_config
from portal_client import Account, Browser, Page, create_accounts
from support import scaled
from vizgate.testing.doubles import RFB_GREETING

pytestmark = pytest.mark.integration

PREFIX = "/vizgate"
DESKTOP = "Local Software Session"
ALICE = Account("alice", "alice-behind-the-proxy-31")


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[GatewayProcess]:
    config = write_config(tmp_path / "config", {DESKTOP: {"options": {"behaviour": "starts"}}})
    run = tmp_path / "run"
    create_accounts(run / "data", [ALICE])
    # Given with a trailing slash, as an admin may write it.
    gateway = start_gateway(run, config, "--url-prefix", PREFIX + "/")
    try:
        yield gateway
    finally:
        gateway.stop()


def urls_in(page: Page) -> list[str]:
    """Every URL the page links, loads or posts to."""
    return re.findall(r'(?:href|src|action)="([^"]*)"', page.text)


def test_the_gateway_announces_its_url_with_the_prefix(gateway: GatewayProcess) -> None:
    assert gateway.url == f"http://127.0.0.1:{gateway.port}{PREFIX}/"


def test_paths_a_proxy_stripped_of_the_prefix_are_served_under_it(
    gateway: GatewayProcess,
) -> None:
    # What a stripping proxy forwards for /vizgate/, /vizgate/login/, ...: the same pages.
    home = gateway.request("/")
    assert home.status == 302
    assert home.headers["Location"] == f"{PREFIX}/login/?next={urllib.parse.quote(PREFIX + '/')}"
    stripped, passed = gateway.request("/login/"), gateway.request(PREFIX + "/login/")
    assert stripped.status == passed.status == 200
    assert urls_in(stripped) == urls_in(passed)
    assert all(url.startswith(PREFIX + "/") for url in urls_in(stripped))
    assert gateway.request("/static/portal/portal.css").status == 200
    assert gateway.request("/v1/status").status == 200
    assert gateway.request("/no/such/page/").status == 404


def test_the_prefix_alone_is_redirected_to_itself_with_a_slash(gateway: GatewayProcess) -> None:
    reply = gateway.request(PREFIX)
    assert reply.status == 308
    assert reply.headers["Location"] == PREFIX + "/"
    # ... where the portal asks for a login, under the prefix.
    home = gateway.request(PREFIX + "/")
    assert home.status == 302
    assert home.headers["Location"] == f"{PREFIX}/login/?next={urllib.parse.quote(PREFIX + '/')}"


def test_a_user_logs_in_launches_and_views_a_session_under_the_prefix(
    gateway: GatewayProcess,
) -> None:
    browser = Browser(gateway.port)
    form = browser.get(PREFIX + "/login/")
    assert form.status == 200
    assert all(url.startswith(PREFIX + "/") for url in urls_in(form)), urls_in(form)
    cookie = form.headers["Set-Cookie"]
    assert f"Path={PREFIX}/" in cookie, cookie
    answer = browser.post(
        PREFIX + "/login/",
        {
            "username": ALICE.name,
            "password": ALICE.password,
            "csrfmiddlewaretoken": form.csrf_token(),
        },
    )
    assert answer.status == 302
    assert answer.headers["Location"] == PREFIX + "/"
    assert f"Path={PREFIX}/" in answer.headers["Set-Cookie"]

    catalogue = browser.get(PREFIX + "/")
    assert catalogue.status == 200
    links = urls_in(catalogue)
    assert links
    assert all(url.startswith(PREFIX + "/") for url in links), links
    for url in links:
        if "/static/" in url:
            assert browser.get(url).status == 200, url

    launched = browser.post(
        PREFIX + "/launch",
        {"service": DESKTOP, "size": "", "csrfmiddlewaretoken": catalogue.csrf_token()},
    )
    assert launched.status == 302
    location = launched.headers["Location"]
    match = re.fullmatch(rf"{PREFIX}/sessions/([0-9a-f]+)/", location)
    assert match, location
    viewer = browser.get(location)
    assert viewer.status == 200
    assert all(url.startswith(PREFIX + "/") for url in urls_in(viewer)), urls_in(viewer)
    config_json = re.search(
        r'<script id="viewer-config" type="application/json">(.*?)</script>', viewer.text, re.S
    )
    assert config_json, "no viewer configuration in the page"
    config = json.loads(config_json.group(1))
    assert config["wsPath"] == f"{PREFIX}/websockify?session={match.group(1)}"
    assert config["statusUrl"].startswith(PREFIX + "/")
    assert browser.get(config["statusUrl"]).status == 200

    # The viewer's WebSocket, as the page opens it: the session starts and speaks RFB.
    with websockets.sync.client.connect(
        f"ws://127.0.0.1:{gateway.port}{config['wsPath']}",
        subprotocols=[websockets.Subprotocol("binary")],
        additional_headers={"Cookie": "; ".join(f"{k}={v}" for k, v in browser.cookies.items())},
        origin=websockets.Origin(browser.origin),
        open_timeout=scaled(10),
    ) as ws:
        assert ws.recv(timeout=scaled(20)) == RFB_GREETING


def test_the_seeds_api_is_served_under_the_prefix(gateway: GatewayProcess) -> None:
    reserved = gateway.request(PREFIX + "/v1/reserve/" + urllib.parse.quote(DESKTOP, safe=""))
    assert reserved.status == 200, reserved.text
    token = reserved.json()["token"]
    [session] = gateway.request(PREFIX + "/v1/status").json()["sessions"]
    assert session["service"] == DESKTOP
    # The seed's tunnel takes the token from the query, whatever the path.
    with websockets.sync.client.connect(
        f"ws://127.0.0.1:{gateway.port}{PREFIX}/websockify?token={token}",
        subprotocols=[websockets.Subprotocol("binary")],
        open_timeout=scaled(10),
    ) as ws:
        assert ws.recv(timeout=scaled(20)) == RFB_GREETING
    assert gateway.request(f"{PREFIX}/v1/release/{token}").status == 200
    assert token not in gateway.output()


def test_cookies_are_secure_when_a_trusted_proxy_says_the_browser_came_over_https(
    gateway: GatewayProcess,
) -> None:
    # The proxy terminates TLS and speaks plain http to the gateway, from 127.0.0.1 (which
    # uvicorn trusts by default); the browser's session cookie must never travel over http.
    over_https = {"X-Forwarded-Proto": "https"}
    form = Browser(gateway.port).get(PREFIX + "/login/", headers=over_https)
    assert form.status == 200
    assert "; Secure" in form.headers["Set-Cookie"]
    browser = Browser(gateway.port)
    form = browser.get(PREFIX + "/login/", headers=over_https)
    answer = browser.post(
        PREFIX + "/login/",
        {
            "username": ALICE.name,
            "password": ALICE.password,
            "csrfmiddlewaretoken": form.csrf_token(),
        },
        headers={**over_https, "Origin": f"https://127.0.0.1:{gateway.port}"},
    )
    assert answer.status == 302, answer.text
    cookies = answer.headers.get_all("Set-Cookie") or []
    assert any(cookie.startswith("sessionid=") for cookie in cookies)
    assert all("; Secure" in cookie for cookie in cookies), cookies
    # Plain http, no proxy: not Secure (the browser would drop it).
    assert "; Secure" not in Browser(gateway.port).get(PREFIX + "/login/").headers["Set-Cookie"]
