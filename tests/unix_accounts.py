"""Unix accounts for tests that run sessions as their users: made with ``useradd`` as root,
removed with ``userdel`` when the test ends."""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from support import scaled

__all__ = ["UnixAccount", "temporary_account"]


@dataclass(frozen=True)
class UnixAccount:
    name: str
    uid: int
    gid: int
    home: Path


@contextlib.contextmanager
def temporary_account() -> Iterator[UnixAccount]:
    """A fresh account (a random name, the next free uid from 1000) with a home of its own
    (0700) outside the test run's folders, which other users cannot traverse."""
    name = "vzg" + secrets.token_hex(4)
    home = Path(tempfile.mkdtemp(prefix=f"vizgate-home-{name}-"))
    try:
        subprocess.run(
            ["useradd", "--no-create-home", "--home-dir", str(home), "--shell", "/bin/sh", name],
            check=True,
            capture_output=True,
            timeout=scaled(30),
        )
        try:
            entry = pwd.getpwnam(name)
            os.chown(home, entry.pw_uid, entry.pw_gid)
            home.chmod(0o700)
            yield UnixAccount(name, entry.pw_uid, entry.pw_gid, home)
        finally:
            subprocess.run(["userdel", name], check=True, capture_output=True, timeout=scaled(30))
    finally:
        shutil.rmtree(home, ignore_errors=True)
