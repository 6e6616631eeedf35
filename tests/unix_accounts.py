"""Unix accounts for tests that run sessions as their users, or the gateway as an account of
its own: made with ``useradd`` as root, removed with ``userdel`` when the test ends; and how to
run this checkout's code as one of them."""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from support import scaled

__all__ = ["UnixAccount", "account_env", "as_account", "python_for", "temporary_account"]

SOURCE = Path(__file__).resolve().parent.parent / "src"


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


def as_account(account: UnixAccount) -> dict[str, object]:
    return {"user": account.uid, "group": account.gid, "extra_groups": []}


def account_env(account: UnixAccount) -> dict[str, str]:
    """A login-like environment for ``account``: nothing of the tests' own (no VIZGATE_*)."""
    return {
        "HOME": str(account.home),
        "USER": account.name,
        "LOGNAME": account.name,
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        # This checkout's code and the packages of this run's environment.
        "PYTHONPATH": os.pathsep.join([str(SOURCE), sysconfig.get_paths()["purelib"]]),
    }


def python_for(account: UnixAccount) -> str:
    """An interpreter ``account`` can run, of this run's Python version."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (sys.executable, shutil.which(version) or "", f"/usr/bin/{version}"):
        if not candidate:
            continue
        try:
            probe = subprocess.run(
                [candidate, "-c", "import uvloop, django, vizgate"],
                env=account_env(account),
                capture_output=True,
                timeout=scaled(60),
                check=False,
                **as_account(account),  # type: ignore[arg-type]
            )
        except OSError:
            continue
        if probe.returncode == 0:
            return candidate
    pytest.fail(f"no {version} that the account {account.name} can run with this checkout")
