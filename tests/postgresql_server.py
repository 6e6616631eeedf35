"""A throwaway PostgreSQL server for the tests: its own cluster in a temporary folder, on a free
port of 127.0.0.1, with a password (SCRAM) for the gateway's account, stopped by its PID.

The server refuses to run as root: a test run by root starts it as the ``postgres`` account
the Debian package creates.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from support import scaled, wait_until

ACCOUNT = "vizgate"
DATABASE = "vizgate"


@dataclass
class PostgresServer:
    """A running server and how to reach it."""

    command: list[str]
    account: pwd.struct_passwd | None
    folder: Path
    port: int
    password: str
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        as_account = _as_account(self.account)
        with (self.folder / "server.log").open("ab") as log:
            self.process = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT, cwd=self.folder, **as_account
            )

        def accepts() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"PostgreSQL exited:\n{self.log()}")
            try:
                with self.connect("postgres"):  # type: ignore[attr-defined]
                    return True
            except Exception:
                return False

        wait_until(accepts, scaled(60), message="PostgreSQL did not accept connections")

    def stop(self) -> None:
        """Stop the server by its PID; its clients' connections are cut."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        # SIGINT is PostgreSQL's fast shutdown: clients are disconnected, nothing is lost.
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=scaled(30))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    @property
    def url(self) -> str:
        """The gateway's ``VIZGATE_DATABASE_URL``."""
        return (
            f"postgresql://{ACCOUNT}:{quote(self.password, safe='')}@127.0.0.1:{self.port}/"
            f"{DATABASE}"
        )

    def connect(self, database: str = DATABASE) -> object:
        """A psycopg connection as the gateway's account (autocommit)."""
        import psycopg

        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user=ACCOUNT,
            password=self.password,
            dbname=database,
            autocommit=True,
            connect_timeout=5,
        )

    def rows(self, query: str, *params: object) -> list[tuple[object, ...]]:
        """What ``query`` returns in the gateway's database."""
        with self.connect() as connection:  # type: ignore[attr-defined]
            return list(connection.execute(query, params).fetchall())

    def log(self) -> str:
        path = self.folder / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _binaries() -> Path | None:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/postgres"),
        key=lambda path: int(Path(path).parts[-3]),
    )
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    # PostgreSQL cannot be told to take a port the OS picks; ask for one and hand it over.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _server_account() -> pwd.struct_passwd | None:
    """The account the server runs as: ``postgres`` when the tests run as root, else none
    (the tests' own)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        pytest.fail("the tests run as root and there is no postgres account to run PostgreSQL as")


def _as_account(account: pwd.struct_passwd | None) -> dict[str, Any]:
    """``subprocess`` arguments that run a program as ``account`` (none: as the tests)."""
    if account is None:
        return {}
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """Start a PostgreSQL server with the database ``vizgate`` owned by the account ``vizgate``;
    stop it (fast shutdown, by its PID) and remove its folder afterwards."""
    binaries = _binaries()
    if binaries is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed (CI is set: a missing program fails)")
        pytest.skip("PostgreSQL is not installed")
    account = _server_account()
    folder = Path(tempfile.mkdtemp(prefix="vizgate-postgres-"))
    password = "pg-" + os.urandom(12).hex()
    server: PostgresServer | None = None
    try:
        password_file = folder / "password"
        password_file.write_text(password + "\n")
        (folder / "server.log").touch()
        if account is not None:
            for path in (folder, password_file, folder / "server.log"):
                os.chown(path, account.pw_uid, account.pw_gid)
        subprocess.run(
            [
                str(binaries / "initdb"), "-D", str(folder / "data"), "-U", ACCOUNT,
                "--pwfile", str(password_file), "--auth-local", "scram-sha-256",
                "--auth-host", "scram-sha-256", "-E", "UTF8", "--no-sync",
            ],
            check=True, capture_output=True, timeout=scaled(120), cwd=folder,
            **_as_account(account),
        )  # fmt: skip
        password_file.unlink()
        port = _free_port()
        command = [
            str(binaries / "postgres"), "-D", str(folder / "data"), "-p", str(port),
            "-k", str(folder), "-c", "listen_addresses=127.0.0.1",
            "-c", "fsync=off", "-c", "full_page_writes=off",
        ]  # fmt: skip
        server = PostgresServer(command, account, folder, port, password)
        server.start()
        with server.connect("postgres") as connection:  # type: ignore[attr-defined]
            connection.execute(f"CREATE DATABASE {DATABASE} OWNER {ACCOUNT}")
        yield server
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(folder, ignore_errors=True)
