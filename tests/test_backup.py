"""``vizgate backup`` (:mod:`vizgate.backup`): a copy of a live gateway's SQLite database, the
restore the README describes, and the refusals."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from gateway import run_python, start_gateway, write_config
from portal_client import Account, create_accounts, logged_in

ALICE = Account("alice", "alice-is-in-the-backup-12")
BOB = Account("bob", "bob-came-after-the-backup-9")


def backup(data: Path, destination: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return run_python(
        "-m", "vizgate", "backup", str(destination), "--data-dir", str(data),
        check=False, env=env or None,
    )  # fmt: skip


def rows(path: Path, query: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as database:
        return list(database.execute(query).fetchall())


@pytest.mark.integration
def test_a_live_gateways_database_is_copied_and_the_copy_restores_it(tmp_path: Path) -> None:
    config = write_config(tmp_path / "config", {"Desktop": {"count": 2}})
    data = tmp_path / "run" / "data"
    create_accounts(data, [ALICE])
    gateway = start_gateway(tmp_path / "run", config)
    copy = tmp_path / "backups" / "vizgate-monday.sqlite3"
    copy.parent.mkdir()
    try:
        reserved = gateway.request("/v1/reserve/Desktop").json()
        assert gateway.request("/v1/status").json()["sessions"]
        # The gateway runs, its log holds recent writes: the copy has them.
        assert (data / "vizgate.sqlite3-wal").exists()
        made = backup(data, copy)
        assert made.returncode == 0, made.stderr
        assert made.stdout.startswith(f"backed up 1 user(s) and 1 session(s) to {copy} (")
        assert copy.stat().st_mode & 0o777 == 0o600
        assert not copy.with_name(copy.name + "-wal").exists()
        assert rows(copy, "PRAGMA integrity_check") == [("ok",)]
        assert rows(copy, "SELECT id, state FROM portal_session") == [
            (reserved["session_id"], "reserved")
        ]
        # Nothing is replaced.
        again = backup(data, copy)
        assert again.returncode == 1
        assert "exists already" in again.stderr
        assert list(copy.parent.iterdir()) == [copy]
        create_accounts(data, [BOB])
    finally:
        gateway.stop()

    # The restore the README describes: the gateway stopped, the copy in place, no log beside.
    for leftover in ("vizgate.sqlite3-wal", "vizgate.sqlite3-shm"):
        (data / leftover).unlink(missing_ok=True)
    shutil.copyfile(copy, data / "vizgate.sqlite3")
    restored = start_gateway(tmp_path / "run", config)
    try:
        [adopted] = restored.request("/v1/status").json()["sessions"]
        assert adopted["id"] == reserved["session_id"]
        logged_in(restored, ALICE)
        assert rows(data / "vizgate.sqlite3", "SELECT username FROM auth_user") == [("alice",)]
    finally:
        restored.stop()
    # A stopped gateway's database (no log files) is copied too.
    later = backup(data, tmp_path / "backups" / "stopped.sqlite3")
    assert later.returncode == 0, later.stderr


def test_no_database_and_postgresql_are_refused_with_why(tmp_path: Path) -> None:
    missing = backup(tmp_path / "nothing-here", tmp_path / "copy.sqlite3")
    assert missing.returncode == 1
    assert "there is no database at" in missing.stderr
    postgres = backup(
        tmp_path, tmp_path / "copy.sqlite3", VIZGATE_DATABASE_URL="postgresql://u:p@db/viz"
    )
    assert postgres.returncode == 1
    assert "back it up with pg_dump" in postgres.stderr
    assert not (tmp_path / "copy.sqlite3").exists()
