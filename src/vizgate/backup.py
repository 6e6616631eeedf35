"""``vizgate backup FILE``: a consistent copy of the gateway's SQLite database, taken while it
runs.

Copying ``vizgate.sqlite3`` with ``cp`` while the gateway writes can catch it mid-transaction,
and misses what still sits in its write-ahead log (``-wal``). SQLite's online backup copies
the database as one transaction sees it, log included. The copy is one self-contained file
(no log of its own), readable by its owner only (it holds password hashes), checked with
``PRAGMA integrity_check`` before it is given its name; an existing file is never replaced.

The source is opened read-only, so a backup run as another account than the gateway's does
not leave files in the data directory that the gateway could not open. PostgreSQL has its own
tools (``pg_dump``). The secret key in the data directory is not in the database: back it up
with the directory, or users log in again after a restore.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BackupError", "BackupSummary", "backup_sqlite"]


class BackupError(Exception):
    """The backup cannot be made; the message says why."""


@dataclass(frozen=True)
class BackupSummary:
    """What a backup holds."""

    path: Path
    size: int
    users: int
    sessions: int


def backup_sqlite(source: Path, destination: Path) -> BackupSummary:
    """Copy the database ``source`` to the new file ``destination`` (see the module's
    documentation).

    Raises:
        BackupError: no database at ``source``, ``destination`` exists or cannot be written,
            or the copy is not sound. Nothing is left at ``destination`` then.
    """
    if not source.is_file():
        raise BackupError(f"there is no database at {source}")
    if destination.exists():
        raise BackupError(f"{destination} exists already; give a new file name")
    temporary = destination.with_name(f".{destination.name}.{secrets.token_hex(6)}.tmp")
    try:
        os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as exc:
        raise BackupError(f"cannot write {destination}: {exc.strerror or exc}") from None
    try:
        with (
            contextlib.closing(
                sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)
            ) as reading,
            contextlib.closing(sqlite3.connect(temporary)) as copy,
        ):
            reading.backup(copy)
            # One file, as the gateway would open it; no log beside it.
            copy.execute("PRAGMA journal_mode=DELETE")
            verdict = copy.execute("PRAGMA integrity_check").fetchone()[0]
            if verdict != "ok":
                raise BackupError(f"the copy is not sound: {verdict}")
            users = copy.execute("SELECT count(*) FROM auth_user").fetchone()[0]
            sessions = copy.execute("SELECT count(*) FROM portal_session").fetchone()[0]
        # A hard link fails when the name is taken meanwhile: an existing file is never replaced.
        os.link(temporary, destination)
    except sqlite3.Error as exc:
        raise BackupError(f"cannot copy {source}: {exc}") from None
    except FileExistsError:
        raise BackupError(f"{destination} exists already; give a new file name") from None
    finally:
        temporary.unlink(missing_ok=True)
    return BackupSummary(destination, destination.stat().st_size, users, sessions)
