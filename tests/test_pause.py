"""Pausing new sessions for maintenance (:mod:`vizgate.pause`): the file, the broker's refusal,
and a real gateway paused from the command line and from its Status page."""

from __future__ import annotations

import html
import os
import re
from pathlib import Path

import pytest

from broker_fixtures import MakeBroker
from gateway import run_python, start_gateway, write_config
from portal_client import Account, create_accounts, logged_in
from vizgate.exceptions import ReservationError
from vizgate.pause import DEFAULT_REASON, MAX_REASON_LENGTH, PauseFile


def test_the_pause_file_holds_one_clean_line_and_is_seen_when_it_changes(
    tmp_path: Path,
) -> None:
    pause = PauseFile(tmp_path / "paused")
    assert pause.reason() is None
    assert pause.pause("  cluster\nupgrade\n until \x1b  18:00 ") == "cluster upgrade until 18:00"
    assert pause.reason() == "cluster upgrade until 18:00"
    assert (tmp_path / "paused").stat().st_mode & 0o777 == 0o600
    # Another process (vizgate pause) changes it: seen at the next question.
    other = PauseFile(tmp_path / "paused")
    other.pause("x" * 1000)
    os.utime(tmp_path / "paused", ns=(1, 1))
    assert pause.reason() == "x" * MAX_REASON_LENGTH
    assert other.pause("\t") == DEFAULT_REASON
    assert pause.resume() is True
    assert pause.reason() is None
    assert pause.resume() is False


async def test_a_paused_broker_refuses_users_but_not_administrators(
    make_broker: MakeBroker, tmp_path: Path
) -> None:
    pause = PauseFile(tmp_path / "paused")
    broker = await make_broker({"Desktop": {}})
    broker.paused = pause.reason
    pause.pause("cluster maintenance")
    with pytest.raises(ReservationError, match="new sessions are paused: cluster maintenance"):
        await broker.reserve("Desktop", user="alice")
    with pytest.raises(ReservationError) as caught:
        await broker.reserve("Desktop")
    assert caught.value.reason == "paused"
    await broker.reserve("Desktop", user="root", unlimited=True)
    pause.resume()
    await broker.reserve("Desktop", user="alice")


@pytest.mark.integration
def test_a_gateway_paused_from_the_command_line_and_resumed_from_its_status_page(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path / "config", {"Desktop": {"count": 3}})
    data = tmp_path / "run" / "data"
    alice = Account("alice", "alice-waits-for-maintenance-5")
    root = Account("root", "root-runs-the-maintenance-77", admin=True)
    create_accounts(data, [alice, root])
    gateway = start_gateway(tmp_path / "run", config)
    try:
        said = run_python("-m", "vizgate", "pause", "upgrade until 18:00", "--data-dir", str(data))
        assert said.stdout == "new sessions are paused: upgrade until 18:00\n"

        # The seed's API: 503 with why.
        refused = gateway.request("/v1/reserve/Desktop")
        assert refused.status == 503
        assert refused.json()["reason"] == "paused"
        assert gateway.request("/v1/status").json()["paused"] == "upgrade until 18:00"
        # The portal: the catalogue says why and offers no launch to a user.
        browser = logged_in(gateway, alice)
        page = browser.get("/")
        assert "New sessions are paused: upgrade until 18:00." in html.unescape(page.text)
        assert re.search(r'<button type="submit" class="primary" disabled>Launch', page.text)
        launched = browser.post(
            "/launch", {"service": "Desktop", "csrfmiddlewaretoken": page.csrf_token()}
        )
        assert launched.status == 400
        assert "new sessions are paused" in html.unescape(launched.text)
        # An administrator still launches, and resumes from the Status page.
        admin = logged_in(gateway, root)
        catalogue = admin.get("/")
        assert "As an administrator you may still launch." in catalogue.text
        own = admin.post(
            "/launch", {"service": "Desktop", "csrfmiddlewaretoken": catalogue.csrf_token()}
        )
        assert own.status == 302, own.text
        status_page = admin.get("/status/")
        assert "Resume new sessions" in status_page.text
        resumed = admin.post("/status/resume", {"csrfmiddlewaretoken": status_page.csrf_token()})
        assert resumed.status == 302
        assert not (data / "paused").exists()
        assert gateway.request("/v1/status").json()["paused"] is None
        assert (
            browser.post(
                "/launch", {"service": "Desktop", "csrfmiddlewaretoken": page.csrf_token()}
            ).status
            == 302
        )
        # Users may not pause.
        assert (
            browser.post("/status/pause", {"csrfmiddlewaretoken": page.csrf_token()}).status == 403
        )
        # And the Status page pauses again, with a reason, for every later start too.
        status_page = admin.get("/status/")
        admin.post(
            "/status/pause",
            {"reason": "node swap", "csrfmiddlewaretoken": status_page.csrf_token()},
        )
        assert (data / "paused").read_text() == "node swap\n"
        assert "root paused new sessions: node swap" in gateway.output()
    finally:
        gateway.stop()
    restarted = start_gateway(tmp_path / "run", config)
    try:
        assert restarted.request("/v1/reserve/Desktop").status == 503
    finally:
        restarted.stop()
