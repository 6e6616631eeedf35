"""The gateway keeps its database from growing without end (:mod:`vizgate.web.housekeeping`): a
real gateway process sweeps a database prepared with old rows when it starts."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest

from gateway import GatewayProcess, run_python, start_gateway, write_config
from support import scaled, wait_until

pytestmark = pytest.mark.integration

# Runs in a process of its own: Django set up on the data directory, then old and recent rows.
_PREPARE = """
import datetime, sys
from pathlib import Path
from vizgate.web import setup_django
setup_django(Path(sys.argv[1]), allowed_hosts=["localhost"])
from django.contrib.sessions.backends.db import SessionStore
from django.contrib.sessions.models import Session as Login
from vizgate.web.portal.models import Session, SessionEvent, ShareLink

now = datetime.datetime.now(tz=datetime.UTC)
def ago(days):
    return now - datetime.timedelta(days=days)

for key, expires in (("expired-login", ago(1)), ("valid-login", now + datetime.timedelta(days=7))):
    Login.objects.create(session_key=key, session_data="", expire_date=expires)
for session_id, ended in (("old0000000000000", 40), ("recent0000000000", 2)):
    session = Session.objects.create(
        id=session_id, token_hash=session_id * 4, service="Desktop", index=0, user="alice",
        state="ended", created=ago(ended), started=ago(ended), ended=ago(ended),
        end_reason="disconnected",
    )
    for kind in ("reserved", "started", "stopped"):
        SessionEvent.objects.create(session=session, kind=kind, at=ago(ended))
    ShareLink.objects.create(
        session_id=session_id, secret_hash=session_id * 4, created_by="alice",
        created=ago(ended), expires=ago(ended),
    )
"""


def prepare(data_dir: Path) -> None:
    run_python("-c", _PREPARE, str(data_dir))


def rows(data_dir: Path, query: str) -> list[str]:
    database = sqlite3.connect(f"file:{data_dir / 'vizgate.sqlite3'}?mode=ro", uri=True)
    with contextlib.closing(database):
        return sorted(str(row[0]) for row in database.execute(query).fetchall())


def started(tmp_path: Path, *args: str) -> tuple[GatewayProcess, Path]:
    data_dir = tmp_path / "run" / "data"
    prepare(data_dir)
    config = write_config(tmp_path / "config", {"Desktop": {}})
    gateway = start_gateway(tmp_path / "run", config, *args)
    wait_until(
        lambda: "housekeeping removed" in gateway.output(),
        scaled(20),
        message="no housekeeping line in the gateway's log",
    )
    return gateway, data_dir


def test_expired_logins_and_history_older_than_history_days_are_removed(
    tmp_path: Path,
) -> None:
    gateway, data_dir = started(tmp_path, "--history-days", "30")
    try:
        assert (
            "housekeeping removed 1 expired login(s); 1 ended session(s) with 3 event(s) and "
            "1 share link(s)"
        ) in gateway.output()
        assert rows(data_dir, "SELECT session_key FROM django_session") == ["valid-login"]
        assert rows(data_dir, "SELECT id FROM portal_session") == ["recent0000000000"]
        assert (
            rows(data_dir, "SELECT session_id FROM portal_sessionevent") == ["recent0000000000"] * 3
        )
        assert rows(data_dir, "SELECT session_id FROM portal_sharelink") == ["recent0000000000"]
    finally:
        gateway.stop()


def test_without_history_days_the_history_is_kept(tmp_path: Path) -> None:
    gateway, data_dir = started(tmp_path)
    try:
        assert "housekeeping removed 1 expired login(s)\n" in gateway.output()
        assert rows(data_dir, "SELECT session_key FROM django_session") == ["valid-login"]
        assert rows(data_dir, "SELECT id FROM portal_session") == [
            "old0000000000000",
            "recent0000000000",
        ]
        assert len(rows(data_dir, "SELECT id FROM portal_sessionevent")) == 6
    finally:
        gateway.stop()
