"""Tests of the seed's ``/v1`` REST API through a real server over real HTTP on 127.0.0.1.

One gateway serves most tests of this module (with a security token, given through the
environment); tests that stop the server start their own. Every test releases what it reserved,
so the shared gateway's pools are free again when it ends.
"""

from __future__ import annotations

import signal
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets.exceptions
import websockets.sync.client

from gateway import GatewayProcess, Response, start_gateway, write_config
from support import scaled, wait_until

SECURITY_TOKEN = "gateway-admin-secret-8u4PqX2wZ"

TYPES: dict[str, dict[str, Any]] = {
    "Desktop": {
        "count": 2,
        "options": {"behaviour": "false", "sizes": ["1024x768", "1600x1200"]},
    },
    # Markup in a type's name: the status page must show it as text.
    "Cluster <Node>": {"count": 1, "options": {"behaviour": "false", "group": "ClusterRendering"}},
    "Echo": {"count": 1, "options": {"behaviour": "starts"}},
}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    directory = tmp_path_factory.mktemp("api")
    config = write_config(directory / "config", TYPES)
    started = start_gateway(
        directory / "run", config, env={"VIZGATE_SECURITY_TOKEN": SECURITY_TOKEN}
    )
    yield started
    started.stop()


def authorized(**query: str) -> dict[str, str]:
    return {"security_token": SECURITY_TOKEN, **query}


def reserve_path(service: str) -> str:
    return "/v1/reserve/" + urllib.parse.quote(service, safe="")


def in_use(gateway: GatewayProcess, service: str) -> int:
    services = gateway.request("/v1/status", authorized()).json()["services"]
    counts: dict[str, int] = {s["name"]: s["in_use"] for s in services}
    return counts[service]


def release(gateway: GatewayProcess, token: str) -> Response:
    return gateway.request(f"/v1/release/{token}", authorized())


def assert_error(response: Response, status: int, reason: str) -> dict[str, Any]:
    assert response.status == status, response.body
    body: dict[str, Any] = response.json()
    assert body["reason"] == reason
    assert isinstance(body["error"], str)
    assert body["error"]
    return body


# ---------------------------------------------------------------------------------------
# The security token


ENDPOINTS = [
    "/v1/status",
    "/v1/status_view",
    "/v1/reserve/Desktop",
    "/v1/release/some-token",
    "/v1/stop",
]


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize(
    "query",
    [
        {},
        {"security_token": ""},
        {"security_token": "wrong"},
        # Right length, wrong content.
        {"security_token": "X" * len(SECURITY_TOKEN)},
        # A prefix of the right one.
        {"security_token": SECURITY_TOKEN[:-1]},
    ],
    ids=["missing", "empty", "wrong", "same-length", "prefix"],
)
def test_every_v1_call_without_the_security_token_is_401(
    gateway: GatewayProcess, path: str, query: dict[str, str]
) -> None:
    body = assert_error(gateway.request(path, query), 401, "unauthorized")
    assert "security_token" in body["error"]
    assert SECURITY_TOKEN not in str(body)
    assert gateway.process.poll() is None, "a refused /v1/stop must not stop the server"


def test_with_the_security_token_status_lists_every_type(gateway: GatewayProcess) -> None:
    response = gateway.request("/v1/status", authorized())
    assert response.status == 200
    assert "no-cache" in response.headers.get("Cache-Control", "")
    status = response.json()
    assert status["services"] == [
        {
            "name": "Desktop",
            "count": 2,
            "in_use": 0,
            "sizes": ["1024x768", "1600x1200"],
            "group": None,
            "choices": {},
            "failed_recently": [],
            "paused": None,
            "free_on_paused_nodes": 0,
        },
        {
            "name": "Cluster <Node>",
            "count": 1,
            "in_use": 0,
            "sizes": ["1024x768", "1280x1024", "1600x1200", "1920x1080"],
            "group": "ClusterRendering",
            "choices": {},
            "failed_recently": [],
            "paused": None,
            "free_on_paused_nodes": 0,
        },
        {
            "name": "Echo",
            "count": 1,
            "in_use": 0,
            "sizes": ["1024x768", "1280x1024", "1600x1200", "1920x1080"],
            "group": None,
            "choices": {},
            "failed_recently": [],
            "paused": None,
            "free_on_paused_nodes": 0,
        },
    ]
    assert status["sessions"] == []


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
@pytest.mark.parametrize("path", ["/v1/status", "/v1/reserve/Desktop", "/v1/stop"])
def test_methods_other_than_get_are_405(gateway: GatewayProcess, method: str, path: str) -> None:
    response = gateway.request(path, authorized(), method=method)
    assert_error(response, 405, "method_not_allowed")
    assert response.headers["Allow"] == "GET"
    assert in_use(gateway, "Desktop") == 0
    assert gateway.process.poll() is None


# ---------------------------------------------------------------------------------------
# Reserve and release


def test_reserve_answers_a_token_and_status_shows_the_session_without_it(
    gateway: GatewayProcess,
) -> None:
    response = gateway.request(
        "/v1/reserve/Desktop", authorized(username="alice", size="1600x1200", file="a.evsn")
    )
    assert response.status == 200, response.body
    reserved = response.json()
    token = reserved["token"]
    try:
        assert set(reserved) == {"token", "session_id", "service", "index"}
        assert (reserved["service"], reserved["index"]) == ("Desktop", 0)
        assert len(token) >= 32

        status = gateway.request("/v1/status", authorized())
        assert token not in status.text
        (session,) = status.json()["sessions"]
        assert session["id"] == reserved["session_id"]
        assert session["token_prefix"] == token[:6]
        assert (session["service"], session["index"]) == ("Desktop", 0)
        assert (session["user"], session["size"], session["state"]) == (
            "alice",
            "1600x1200",
            "reserved",
        )
        assert session["connections"] == 0
        assert (session["host"], session["port"]) == (None, None)
        assert session["since"].endswith("+00:00")
        assert in_use(gateway, "Desktop") == 1
    finally:
        released = release(gateway, token)
    assert released.status == 200
    assert released.json() == {
        "session_id": reserved["session_id"],
        "service": "Desktop",
        "index": 0,
        "state": "ended",
        "already_ending": False,
    }
    assert token not in released.text
    assert in_use(gateway, "Desktop") == 0
    assert gateway.request("/v1/status", authorized()).json()["sessions"] == []


def test_one_reservation_more_than_count_is_409(gateway: GatewayProcess) -> None:
    tokens = []
    try:
        for index in range(2):
            reserved = gateway.request("/v1/reserve/Desktop", authorized()).json()
            assert reserved["index"] == index
            tokens.append(reserved["token"])
        body = assert_error(
            gateway.request("/v1/reserve/Desktop", authorized()), 409, "no_free_instance"
        )
        assert "Desktop" in body["error"]
        assert in_use(gateway, "Desktop") == 2
    finally:
        for token in tokens:
            assert release(gateway, token).status == 200
    assert in_use(gateway, "Desktop") == 0


def test_a_size_the_type_does_not_offer_is_400_with_the_allowed_sizes(
    gateway: GatewayProcess,
) -> None:
    response = gateway.request("/v1/reserve/Desktop", authorized(size="12080x1024"))
    body = assert_error(response, 400, "bad_option")
    assert body["allowed_sizes"] == ["1024x768", "1600x1200"]
    assert "12080x1024" in body["error"]
    assert in_use(gateway, "Desktop") == 0


def test_an_unknown_type_is_404(gateway: GatewayProcess) -> None:
    body = assert_error(gateway.request("/v1/reserve/Nowhere", authorized()), 404, "unknown_type")
    assert "Nowhere" in body["error"]
    assert body["services"] == ["Desktop", "Cluster <Node>", "Echo"]


def test_a_type_name_with_markup_and_spaces_is_reserved_by_its_quoted_name(
    gateway: GatewayProcess,
) -> None:
    response = gateway.request(reserve_path("Cluster <Node>"), authorized())
    assert response.status == 200, response.body
    reserved = response.json()
    assert reserved["service"] == "Cluster <Node>"
    assert release(gateway, reserved["token"]).status == 200


def test_releasing_an_unknown_or_released_token_is_404(gateway: GatewayProcess) -> None:
    assert_error(release(gateway, "never-issued"), 404, "unknown_token")
    token = gateway.request("/v1/reserve/Desktop", authorized()).json()["token"]
    assert release(gateway, token).status == 200
    assert_error(release(gateway, token), 404, "unknown_token")


def test_release_stops_a_started_session_and_closes_its_viewers(gateway: GatewayProcess) -> None:
    reserved = gateway.request("/v1/reserve/Echo", authorized(username="bob")).json()
    token = reserved["token"]
    url = f"ws://127.0.0.1:{gateway.port}/websockify?token={token}"
    with websockets.sync.client.connect(
        url, subprotocols=["binary"], open_timeout=scaled(10)
    ) as viewer:
        # The test double greets like a VNC server once the tunnel reached it.
        assert viewer.recv(timeout=scaled(10)) == b"RFB 003.008\n"
        (session,) = gateway.request("/v1/status", authorized()).json()["sessions"]
        assert (session["state"], session["connections"]) == ("running", 1)
        assert session["host"] == "127.0.0.1"
        assert isinstance(session["port"], int)

        released = release(gateway, token)
        assert released.status == 200
        assert released.json()["already_ending"] is False
        with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
            viewer.recv(timeout=scaled(10))
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1001

    wait_until(
        lambda: in_use(gateway, "Echo") == 0,
        scaled(10),
        message="the released session did not end",
    )


# ---------------------------------------------------------------------------------------
# The status page


def test_status_view_is_an_html_table_with_every_type_and_no_token(
    gateway: GatewayProcess,
) -> None:
    token = gateway.request("/v1/reserve/Desktop", authorized(username="<carol>")).json()["token"]
    try:
        response = gateway.request("/v1/status_view", authorized())
    finally:
        release(gateway, token)
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/html")
    page = response.text
    assert "<table>" in page
    assert "<td>Desktop</td>" in page
    assert "<td>Echo</td>" in page
    # Autoescaped: names and user names are text, not markup.
    assert "Cluster &lt;Node&gt;" in page
    assert "Cluster <Node>" not in page
    assert "&lt;carol&gt;" in page
    assert "<carol>" not in page
    assert token[:6] in page
    assert token not in page
    assert SECURITY_TOKEN not in page


def test_the_front_page_asks_an_anonymous_visitor_to_log_in(gateway: GatewayProcess) -> None:
    response = gateway.request("/")
    assert response.status == 302
    assert response.headers["Location"] == "/login/?next=/"
    login = gateway.request("/login/")
    assert login.status == 200
    assert "vizgate" in login.text


def test_a_host_header_the_server_does_not_serve_is_400(gateway: GatewayProcess) -> None:
    response = gateway.request("/v1/status", authorized(), headers={"Host": "evil.example"})
    assert response.status == 400


# ---------------------------------------------------------------------------------------
# Stopping, and what the log holds (servers of their own)


def test_stop_with_the_security_token_ends_the_process_with_status_0(tmp_path: Path) -> None:
    config = write_config(tmp_path / "config", TYPES)
    gateway = start_gateway(
        tmp_path / "run", config, "--security-token", SECURITY_TOKEN, "--stop-sessions-on-exit"
    )
    try:
        token = gateway.request("/v1/reserve/Desktop", authorized()).json()["token"]
        assert_error(gateway.request("/v1/stop", {"security_token": "no"}), 401, "unauthorized")
        assert gateway.process.poll() is None

        response = gateway.request("/v1/stop", authorized())
        assert response.status == 200
        assert response.json() == {"stopping": True}
        assert gateway.wait(10) == 0
        output = gateway.output()
        assert "ended (shutdown)" in output
        assert token not in output
        assert SECURITY_TOKEN not in output
    finally:
        gateway.stop()


def test_without_a_security_token_the_api_is_open_but_stop_is_403(tmp_path: Path) -> None:
    config = write_config(tmp_path / "config", TYPES)
    gateway = start_gateway(tmp_path / "run", config)
    try:
        assert gateway.request("/v1/status").status == 200
        body = assert_error(gateway.request("/v1/stop"), 403, "forbidden")
        assert "security token" in body["error"]
        # Even a token the server does not have changes nothing.
        assert_error(gateway.request("/v1/stop", {"security_token": "x"}), 403, "forbidden")
        assert gateway.request("/v1/status").status == 200
        assert gateway.process.poll() is None
    finally:
        gateway.stop()
    assert gateway.process.returncode == 0


def test_the_server_log_never_holds_a_token_or_the_security_token(tmp_path: Path) -> None:
    config = write_config(tmp_path / "config", TYPES)
    gateway = start_gateway(
        tmp_path / "run",
        config,
        "--log-level",
        "debug",
        env={"VIZGATE_SECURITY_TOKEN": SECURITY_TOKEN},
    )
    tokens: list[str] = []
    try:
        for service in ("Desktop", "Echo", "Desktop"):
            tokens.append(gateway.request(reserve_path(service), authorized()).json()["token"])
        # A viewer: uvicorn logs the WebSocket request with its query string.
        with websockets.sync.client.connect(
            f"ws://127.0.0.1:{gateway.port}/websockify?token={tokens[1]}",
            open_timeout=scaled(10),
        ) as viewer:
            assert viewer.recv(timeout=scaled(10)) == b"RFB 003.008\n"
        # A session whose start fails, and an unknown token over the tunnel.
        for token in (tokens[0], "not-a-token-at-all-0123456789"):
            with (
                websockets.sync.client.connect(
                    f"ws://127.0.0.1:{gateway.port}/websockify?token={token}",
                    open_timeout=scaled(10),
                ) as viewer,
                pytest.raises(websockets.exceptions.ConnectionClosed),
            ):
                viewer.recv(timeout=scaled(10))
        assert release(gateway, tokens[2]).status == 200
        assert release(gateway, tokens[2]).status == 404
        assert (
            gateway.request("/v1/status", {"security_token": "guess-" + SECURITY_TOKEN}).status
            == 401
        )
        assert gateway.request("/v1/status_view", authorized()).status == 200
        gateway.process.send_signal(signal.SIGTERM)
        assert gateway.wait(15) == 0
    finally:
        gateway.stop()

    output = gateway.output()
    # The log is there and names the requests, with the secrets taken out.
    assert "GET /v1/release/[redacted]?security_token=[redacted]" in output
    assert "WebSocket /websockify?token=[redacted]" in output
    assert "failed to start" in output
    for secret in (*tokens, SECURITY_TOKEN):
        assert secret not in output
    # Not even a large piece of one.
    for token in tokens:
        assert token[:16] not in output


def test_a_reservation_nobody_uses_is_reclaimed_after_timeout(tmp_path: Path) -> None:
    config = write_config(tmp_path / "config", TYPES)
    gateway = start_gateway(tmp_path / "run", config, "--timeout", "2")
    try:
        reply = gateway.request("/v1/reserve/Desktop")
        assert reply.status == 200
        token = reply.json()["token"]

        def reclaimed() -> Any:
            current = gateway.request("/v1/status").json()
            return not current["sessions"] and current["ended"]

        [ended] = wait_until(reclaimed, scaled(2 + 5), message="the reservation was not reclaimed")
        assert ended["end_reason"] == "reservation_timeout"
        assert ended["message"] == "nobody connected within 2 s"
        # The token is spent: a release of it is 404, a WebSocket with it 1008.
        assert gateway.request(f"/v1/release/{token}").status == 404
        url = f"ws://127.0.0.1:{gateway.port}/websockify?token={token}"
        with (
            websockets.sync.client.connect(url) as ws,
            pytest.raises(websockets.exceptions.ConnectionClosed) as closed,
        ):
            ws.recv(timeout=scaled(10))
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1008
    finally:
        gateway.stop()


# ---------------------------------------------------------------------------------------
# The security token as a header, and /metrics


def test_the_security_token_may_come_as_a_bearer_header(gateway: GatewayProcess) -> None:
    bearer = {"Authorization": f"Bearer {SECURITY_TOKEN}"}
    assert gateway.request("/v1/status", headers=bearer).status == 200
    wrong = {"Authorization": f"Bearer {SECURITY_TOKEN[:-1]}"}
    assert_error(gateway.request("/v1/status", headers=wrong), 401, "unauthorized")
    basic = {"Authorization": f"Basic {SECURITY_TOKEN}"}
    assert_error(gateway.request("/v1/status", headers=basic), 401, "unauthorized")


def scrape(gateway: GatewayProcess) -> dict[str, float]:
    """The samples of /metrics, by name and labels."""
    reply = gateway.request("/metrics", headers={"Authorization": f"Bearer {SECURITY_TOKEN}"})
    assert reply.status == 200, reply.text
    assert reply.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    samples: dict[str, float] = {}
    for line in reply.text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {SECURITY_TOKEN}"}],
    ids=["none", "wrong", "not bearer"],
)
def test_metrics_need_the_security_token(gateway: GatewayProcess, headers: dict[str, str]) -> None:
    reply = gateway.request("/metrics", headers=headers)
    assert reply.status == 401
    assert reply.headers["WWW-Authenticate"] == 'Bearer realm="vizgate"'
    assert "vizgate_" not in reply.text


def test_metrics_follow_a_session_from_reservation_to_its_end(gateway: GatewayProcess) -> None:
    echo = 'type="Echo"'
    before = scrape(gateway)
    assert before['vizgate_instances{type="Desktop"}'] == 2
    assert before[f'vizgate_sessions{{{echo},state="running"}}'] == 0

    token = gateway.request(reserve_path("Echo"), authorized()).json()["token"]
    reserved = scrape(gateway)
    assert reserved[f'vizgate_sessions{{{echo},state="reserved"}}'] == 1
    # The token came once its reservation was saved: a transaction with its record and event.
    assert reserved["vizgate_store_transactions_total"] > before["vizgate_store_transactions_total"]
    assert reserved["vizgate_store_changes_total"] >= before["vizgate_store_changes_total"] + 2
    assert reserved["vizgate_store_write_seconds_total"] > 0

    with websockets.sync.client.connect(
        f"ws://127.0.0.1:{gateway.port}/websockify?token={token}", open_timeout=scaled(10)
    ) as ws:
        assert ws.recv(timeout=scaled(10)) == b"RFB 003.008\n"
        ws.send(b"hello")
        assert ws.recv(timeout=scaled(10)) == b"hello"
        running = scrape(gateway)
        assert running[f'vizgate_sessions{{{echo},state="reserved"}}'] == 0
        assert running[f'vizgate_sessions{{{echo},state="running"}}'] == 1
        assert running[f"vizgate_viewers{{{echo}}}"] == 1
        assert running[f"vizgate_watchers{{{echo}}}"] == 0
        started = f"vizgate_session_start_seconds_count{{{echo}}}"
        assert running[started] == before[started] + 1
        assert (
            running[f'vizgate_session_start_seconds_bucket{{{echo},le="+Inf"}}']
            == (running[started])
        )
    assert release(gateway, token).status == 200

    ended = f'vizgate_sessions_ended_total{{{echo},reason="released"}}'

    def after_the_end() -> dict[str, float] | None:
        samples = scrape(gateway)
        return samples if samples.get(ended, 0) == before.get(ended, 0) + 1 else None

    after = wait_until(after_the_end, scaled(10), message="the session's end was not counted")
    assert after[f'vizgate_sessions{{{echo},state="running"}}'] == 0
    assert after[f"vizgate_viewers{{{echo}}}"] == 0
    to_viewer = f'vizgate_relayed_bytes_total{{{echo},direction="to_viewer"}}'
    to_server = f'vizgate_relayed_bytes_total{{{echo},direction="to_server"}}'
    # The greeting and the echo one way, the message the other: counted once the session ended.
    assert after[to_viewer] - before[to_viewer] == len(b"RFB 003.008\n") + len(b"hello")
    assert after[to_server] - before[to_server] == len(b"hello")
    metrics_text = gateway.request("/metrics", authorized()).text
    assert token not in metrics_text
