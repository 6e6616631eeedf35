"""The gateway on PostgreSQL (``VIZGATE_DATABASE_URL``): a real server started for the test, the
real gateway process and its commands, rows checked in PostgreSQL itself."""

from __future__ import annotations

import html
import signal
import threading
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from gateway import GatewayProcess, launch_gateway, run_python, start_gateway, write_config
from portal_client import Account, Browser, Page, create_accounts, open_socket
from postgresql_server import postgres_server
from support import scaled, wait_until
from vizgate.testing.doubles import RFB_GREETING
from vizgate.web.database_outage import DATABASE_AWAY_MESSAGE

pytestmark = pytest.mark.integration

DESKTOP = "Desktop"
ALICE = Account("alice", "alice-on-postgres-42")


def session_row(server: object, session_id: str) -> dict[str, object] | None:
    rows = server.rows(  # type: ignore[attr-defined]
        'SELECT state, end_reason, "user", bytes_to_client, started IS NOT NULL '
        "FROM portal_session WHERE id = %s",
        session_id,
    )
    if not rows:
        return None
    state, reason, user, to_client, started = rows[0]
    return {"state": state, "reason": reason, "user": user, "bytes": to_client, "started": started}


def launch_as_alice(browser: Browser) -> str:
    """Log in as alice and launch the desktop from the catalogue: the session's id."""
    assert browser.login(ALICE).status == 302
    catalogue = browser.get("/")
    launched = browser.post(
        "/launch",
        {"service": DESKTOP, "size": "", "csrfmiddlewaretoken": catalogue.csrf_token()},
    )
    assert launched.status == 302, launched.text
    return launched.location.rstrip("/").rsplit("/", 1)[-1]


def waiting_writes(gateway: GatewayProcess) -> int:
    """The gateway's ``vizgate_store_writes_waiting`` gauge."""
    for line in gateway.request("/metrics").text.splitlines():
        if line.startswith("vizgate_store_writes_waiting "):
            return int(float(line.split()[1]))
    raise AssertionError("/metrics has no vizgate_store_writes_waiting")


def test_accounts_sessions_and_history_live_in_postgresql_across_a_killed_gateway(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path / "config", {DESKTOP: {"options": {"behaviour": "starts"}}})
    data = tmp_path / "data"
    gateways: list[GatewayProcess] = []
    with postgres_server() as server:
        env = {"VIZGATE_DATABASE_URL": server.url}
        try:
            create_accounts(data, [ALICE], groups=["viz"], env=env)
            assert server.rows("SELECT username FROM auth_user") == [("alice",)]
            assert not (data / "vizgate.sqlite3").exists(), "the accounts went to SQLite"
            joined = run_python(
                "-m", "vizgate", "group", "add-user", "viz", "alice", "--data-dir", str(data),
                env=env,
            )  # fmt: skip
            assert joined.stdout == "alice joined viz\n"

            first = start_gateway(
                tmp_path / "first", config, "--data-dir", str(data), "--linger", "0", env=env
            )
            gateways.append(first)
            # A session started and ended through the portal: its row and history.
            browser = Browser(first.port)
            session_id = launch_as_alice(browser)
            query = "session=" + urllib.parse.quote(session_id)
            assert open_socket(first, query, browser) == RFB_GREETING

            def ended() -> dict[str, object] | None:
                row = session_row(server, session_id)
                return row if row is not None and row["state"] == "ended" else None

            row = wait_until(ended, scaled(20), message="the session's row never ended")
            assert row["user"] == "alice"
            assert row["started"] is True
            assert row["reason"] == "disconnected"
            assert row["bytes"] == len(RFB_GREETING)
            kinds = server.rows(
                "SELECT kind FROM portal_sessionevent WHERE session_id = %s ORDER BY at, id",
                session_id,
            )
            assert ("connected",) in kinds, kinds

            # A reservation outlives a killed gateway: the next one adopts it from PostgreSQL.
            reserved = first.request("/v1/reserve/" + DESKTOP).json()
            wait_until(
                lambda: session_row(server, reserved["session_id"]),
                scaled(10),
                message="the reservation never reached PostgreSQL",
            )
            first.process.send_signal(signal.SIGKILL)
            first.process.wait(timeout=scaled(10))
            second = start_gateway(
                tmp_path / "second", config, "--data-dir", str(data), "--linger", "0", env=env
            )
            gateways.append(second)
            [adopted] = second.request("/v1/status").json()["sessions"]
            assert (adopted["id"], adopted["state"]) == (reserved["session_id"], "reserved")
            assert second.request(f"/v1/release/{reserved['token']}").status == 200
            released = session_row(server, reserved["session_id"])
            assert released is not None
            assert (released["state"], released["reason"]) == ("ended", "released")
            for gateway in gateways:
                assert server.password not in gateway.output()
                assert "Traceback" not in gateway.output()
        finally:
            for gateway in gateways:
                gateway.stop()


def test_a_wrong_database_password_stops_the_gateway_with_why_and_without_the_password(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path / "config", {DESKTOP: {}})
    with postgres_server() as server:
        wrong = server.url.replace(server.password, "not-the-password-31")
        result = run_python(
            "-m", "vizgate", "user", "list", "--data-dir", str(tmp_path / "data"),
            env={"VIZGATE_DATABASE_URL": wrong}, check=False,
        )  # fmt: skip
        said = result.stdout + result.stderr
        assert result.returncode == 1
        where = f"cannot use the PostgreSQL database vizgate on 127.0.0.1:{server.port} as vizgate"
        assert f"vizgate user list: {where}: connection failed" in said, said
        assert "password authentication failed" in said, said
        assert "not-the-password-31" not in said
        assert "Traceback" not in said
        gateway = launch_gateway(tmp_path / "run", config, env={"VIZGATE_DATABASE_URL": wrong})
        try:
            assert gateway.wait(60) == 1
            said = gateway.output()
            assert where in said, said
            assert "password authentication failed" in said
            assert "not-the-password-31" not in said
            assert "Traceback" not in said
        finally:
            gateway.stop()


def test_sessions_changed_while_postgresql_restarts_are_saved_when_it_is_back(
    tmp_path: Path,
) -> None:
    config = write_config(
        tmp_path / "config", {DESKTOP: {"count": 3, "options": {"behaviour": "starts"}}}
    )
    data = tmp_path / "data"
    with postgres_server() as server:
        env = {"VIZGATE_DATABASE_URL": server.url}
        create_accounts(data, [ALICE], env=env)
        gateway = start_gateway(
            tmp_path / "run", config, "--linger", "0", "--data-dir", str(data), env=env
        )
        try:
            browser = Browser(gateway.port)
            query = "session=" + urllib.parse.quote(launch_as_alice(browser))
            before = gateway.request("/v1/reserve/" + DESKTOP).json()
            wait_until(
                lambda: session_row(server, before["session_id"]),
                scaled(10),
                message="the first reservation never reached PostgreSQL",
            )
            server.stop()
            assert gateway.request("/healthz").status == 503
            # What needs the database says so, and asks to come back.
            page = browser.get("/")
            assert page.status == 503
            assert DATABASE_AWAY_MESSAGE in html.unescape(page.text)
            assert page.headers["Retry-After"] == "30"
            assert open_socket(gateway, query, browser) == (1008, DATABASE_AWAY_MESSAGE)
            # The broker goes on while the database is away; its writes wait.
            during = gateway.request("/v1/reserve/" + DESKTOP).json()
            assert gateway.request(f"/v1/release/{before['token']}").status == 200
            wait_until(
                lambda: "the session store cannot reach the database" in gateway.output(),
                scaled(20),
                message="the outage was not logged",
            )
            # At least the new reservation and the release, each a record and an event.
            assert waiting_writes(gateway) >= 4
            server.start()

            def saved() -> bool:
                first = session_row(server, before["session_id"])
                second = session_row(server, during["session_id"])
                return (
                    first is not None
                    and (first["state"], first["reason"]) == ("ended", "released")
                    and second is not None
                    and second["state"] == "reserved"
                )

            wait_until(saved, scaled(60), message="the writes made during the outage were lost")
            # And the store's connection works again for what comes next.
            after = gateway.request("/v1/reserve/" + DESKTOP).json()
            wait_until(
                lambda: session_row(server, after["session_id"]),
                scaled(10),
                message="a reservation after the outage never reached PostgreSQL",
            )
            assert "the session store reaches the database again" in gateway.output()
            assert gateway.request("/healthz").status == 200
            assert waiting_writes(gateway) == 0
            # The portal login outlived the outage, and so did the way to the desktop.
            assert browser.get("/").status == 200
            assert open_socket(gateway, query, browser) == RFB_GREETING
            output = gateway.output()
            assert "Traceback" not in output
            assert "ERROR django.request" not in output
            assert (
                "Service Unavailable: /: the database is not answering (connection failed" in output
            )
            assert server.password not in gateway.output()
        finally:
            gateway.stop()


def test_the_first_request_after_a_quick_postgresql_restart_is_served(tmp_path: Path) -> None:
    config = write_config(tmp_path / "config", {DESKTOP: {}})
    data = tmp_path / "data"
    with postgres_server() as server:
        env = {"VIZGATE_DATABASE_URL": server.url}
        create_accounts(data, [ALICE], env=env)
        gateway = start_gateway(tmp_path / "run", config, "--data-dir", str(data), env=env)
        try:
            browser = Browser(gateway.port)
            assert browser.login(ALICE).status == 302
            assert browser.get("/").status == 200
            # Restarted while nobody asked anything: the gateway's connections are stale.
            server.stop()
            server.start()
            assert browser.get("/").status == 200
            assert browser.get("/sessions/").status == 200
        finally:
            gateway.stop()


def test_a_login_goes_on_while_the_usage_page_waits_for_the_database(tmp_path: Path) -> None:
    """The Usage page reads a year of sessions in a worker thread, never on the event loop that
    serves every page and relays every desktop: while its query waits, a user logs in. (Run on
    the event loop, the report holds the login until the database answers: checked by hand.)"""
    config = write_config(tmp_path / "config", {DESKTOP: {"options": {"behaviour": "starts"}}})
    data = tmp_path / "data"
    root = Account("root", "root-reads-the-usage-report-7", admin=True)
    with postgres_server() as server:
        env = {"VIZGATE_DATABASE_URL": server.url}
        create_accounts(data, [ALICE, root], env=env)
        gateway = start_gateway(tmp_path / "run", config, "--data-dir", str(data), env=env)
        try:
            admin = Browser(gateway.port)
            assert admin.login(root).status == 302
            locker: Any = server.connect()
            report: dict[str, Page] = {}
            reading = threading.Thread(
                target=lambda: report.update(page=admin.get("/status/usage?days=365"))
            )
            try:
                # Holding the sessions' table makes the report's query wait, for as long as
                # the test likes: no timing decides what runs when.
                locker.execute("BEGIN")
                locker.execute("LOCK TABLE portal_session IN ACCESS EXCLUSIVE MODE")
                reading.start()
                waiting = (
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND position('portal_session' in query) > 0"
                )
                wait_until(
                    lambda: server.rows(waiting)[0][0] > 0,
                    scaled(10),
                    message="the usage report never reached the database",
                )
                assert Browser(gateway.port).login(ALICE).status == 302
                assert reading.is_alive(), "the report did not wait for the lock"
            finally:
                locker.execute("ROLLBACK")
                locker.close()
            reading.join(scaled(20))
            assert not reading.is_alive()
            assert report["page"].status == 200
            assert "By session type" in report["page"].text
        finally:
            gateway.stop()
