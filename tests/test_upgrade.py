"""Upgrading a site: a database an earlier vizgate left (its migrations one behind, a session
reserved and its audit line) is migrated when the new gateway starts, and the reservation it
holds is adopted and used with its token."""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
from pathlib import Path

import pytest
import websockets

from gateway import GatewayProcess, run_python, start_gateway, write_config
from support import scaled
from vizgate.sessions import session_id_of, token_hash
from vizgate.testing.doubles import RFB_GREETING

#: The migration before the newest: the database of the previous release.
PREVIOUS = "0003_session_ends_at"

_EARLIER_DATABASE = """
import datetime, json, pathlib, sys
from vizgate.web import setup_django
setup_django(pathlib.Path(sys.argv[1]), allowed_hosts=["localhost"])
from django.core.management import call_command
from django.db import connection
call_command("migrate", "portal", sys.argv[2], interactive=False, verbosity=0)
now = datetime.datetime.now(datetime.UTC).isoformat()
session_id, digest = sys.argv[3], sys.argv[4]
options = json.dumps({"size": "800x600", "username": ""})
with connection.cursor() as cursor:
    cursor.execute(
        "INSERT INTO portal_session (id, token_hash, service, \\"index\\", user, bound, options,"
        " state, created, end_reason, message, bytes_to_client, bytes_to_server,"
        " stop_timed_out, script_state) VALUES (%s, %s, 'Desktop', 0, '', 0, %s, 'reserved',"
        " %s, '', '', 0, 0, 0, '{}')",
        [session_id, digest, options, now],
    )
    cursor.execute(
        "INSERT INTO portal_sessionevent (session_id, kind, at, user, client, detail)"
        " VALUES (%s, 'reserved', %s, '', '', '')",
        [session_id, now],
    )
"""


def columns(database: Path, table: str) -> list[str]:
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        return [row[1] for row in db.execute(f"PRAGMA table_info({table})")]


async def first_bytes(gateway: GatewayProcess, token: str) -> bytes:
    url = f"ws://127.0.0.1:{gateway.port}/websockify?token={token}"
    async with websockets.connect(url) as ws:
        message = await asyncio.wait_for(ws.recv(), scaled(10))
    assert isinstance(message, bytes)
    return message


@pytest.mark.integration
async def test_a_database_of_the_previous_release_is_migrated_and_its_reservation_adopted(
    tmp_path: Path, gateways: list[GatewayProcess]
) -> None:
    data = tmp_path / "data"
    token = secrets.token_urlsafe(32)
    session_id = session_id_of(token)
    run_python("-c", _EARLIER_DATABASE, str(data), PREVIOUS, session_id, token_hash(token))
    database = data / "vizgate.sqlite3"
    assert "key" not in columns(database, "portal_sessionevent")

    config = write_config(tmp_path / "config", {"Desktop": {"options": {"behaviour": "starts"}}})
    gateway = start_gateway(tmp_path / "run", config, "--data-dir", str(data))
    gateways.append(gateway)

    assert "key" in columns(database, "portal_sessionevent")
    [adopted] = gateway.request("/v1/status").json()["sessions"]
    assert (adopted["id"], adopted["state"], adopted["size"]) == (session_id, "reserved", "800x600")
    assert await first_bytes(gateway, token) == RFB_GREETING
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        events = db.execute(
            "SELECT kind, key IS NOT NULL FROM portal_sessionevent WHERE session_id = ?"
            " ORDER BY id",
            (session_id,),
        ).fetchall()
    # The earlier release's line stays as it was; the new gateway's lines have their keys.
    assert events[0] == ("reserved", 0)
    assert ("adopted", 1) in events
    assert ("connected", 1) in events
