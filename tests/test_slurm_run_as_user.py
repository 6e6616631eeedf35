"""Slurm sessions that run as their users' own accounts (``"run_as": "user"``,
:mod:`vizgate.launchers.job_owner`): a real Slurm, a real Unix account made for the test, and
the refusals that need neither.
"""

from __future__ import annotations

import asyncio
import json
import os
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import start_gateway
from portal_client import Browser, open_socket
from slurm_cluster import SlurmCluster, processes_mentioning
from slurm_sessions import JOB_NAME_0, SIZE, TYPE, handshake_through_bridge, write_catalog
from support import (
    kill_pid_tree,
    port_accepts,
    require_binaries,
    scaled,
    vnc_authenticate,
    wait_until,
)
from unix_accounts import UnixAccount, temporary_account
from vizgate.broker import Broker
from vizgate.catalog import load_catalog
from vizgate.launchers.job_owner import WITH_SUDO, JobOwner, JobOwnerError, OwnerFiles
from vizgate.launchers.slurm import SlurmSession, realize_service
from vizgate.launchers.slurm_commands import job_status

#: Where the sessions' folders go: in the account's own home.
STATE_DIR = "~/.local/state/vizgate/slurm"


@pytest.fixture
def account(slurm_cluster: SlurmCluster) -> Iterator[UnixAccount]:
    """A Unix account for the test; none of its processes may outlive the test."""
    with temporary_account() as made:
        try:
            yield made
        finally:
            leaked = processes_mentioning(made.home)
            for pid in leaked:
                kill_pid_tree(pid)
            assert not leaked, f"processes of {made.name}'s sessions still running: {leaked}"


def owner_of(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_uid, info.st_mode & 0o777


def squeue_user(cluster: SlurmCluster, job_id: str) -> str:
    result = cluster.run("squeue", "-h", "-t", "all", "-j", job_id, "-o", "%u")
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.mark.integration
async def test_a_session_is_a_job_of_its_users_account_with_files_in_its_home(
    cluster: SlurmCluster, account: UnixAccount, tmp_path: Path
) -> None:
    catalog = write_catalog(tmp_path, Path(STATE_DIR), run_as="user")
    # write_catalog gives state_dir as a path: "~" must reach the launcher as written.
    assert json.loads(catalog.read_text())[TYPE]["options"]["state_dir"] == STATE_DIR
    broker = Broker(load_catalog(catalog))
    await broker.open()
    try:
        reservation = await broker.reserve(TYPE, user=account.name, options={"size": SIZE})
        attachment = await asyncio.wait_for(broker.attach(reservation.token), scaled(30))
        assert attachment.password is not None
        client = await handshake_through_bridge(
            attachment.host, attachment.port, attachment.password
        )
        assert f"{client.width}x{client.height}" == SIZE

        # Slurm sees the user submit the job.
        result = cluster.run("squeue", "-h", "-n", JOB_NAME_0, "-o", "%i %u %T")
        job_id, user, state = result.stdout.split()
        assert (user, state) == (account.name, "RUNNING")
        # The session's folder and files are the user's, in the user's home.
        base = account.home / ".local/state/vizgate/slurm"
        (folder,) = base.iterdir()
        assert owner_of(folder) == (account.uid, 0o700)
        assert owner_of(folder / "passwd") == (account.uid, 0o600)
        assert owner_of(folder / "job.log")[0] == account.uid
        # The VNC server is the user's process, with the user's HOME.
        (server,) = [
            pid
            for pid, cmdline in processes_mentioning(folder).items()
            if Path(cmdline.split()[0]).name in {"Xvnc", "Xtigervnc"}
        ]
        assert Path(f"/proc/{server}").stat().st_uid == account.uid
        environ = Path(f"/proc/{server}/environ").read_bytes().split(b"\0")
        assert f"HOME={account.home}".encode() in environ
        assert f"USER={account.name}".encode() in environ

        broker.detach(attachment)
        await asyncio.wait_for(broker.wait_until_idle(), scaled(20))
        assert squeue_user(cluster, job_id) == account.name
        status = job_status(job_id)
        assert status is not None
        assert status.state == "CANCELLED"
        assert not port_accepts(attachment.host, attachment.port)
        assert list(base.iterdir()) == []
    finally:
        await broker.close()


@pytest.mark.integration
def test_a_users_job_is_re_adopted_and_its_password_read_as_the_user(
    cluster: SlurmCluster, account: UnixAccount
) -> None:
    options = {"state_dir": STATE_DIR, "run_as": "user"}
    first = realize_service(name=TYPE, count=1, index=0, common_options=options)
    assert first.start("token", options={"size": SIZE, "username": account.name}) is True
    state = first.get_state()
    assert state["user"] == account.name

    adopted = realize_service(name=TYPE, count=1, index=0, common_options=options)
    adopted.load_state(json.loads(json.dumps(state)))
    assert adopted.poll() is True
    assert adopted.password() == first.password()
    assert vnc_authenticate(state["host"], state["port"], first.password() or b"")

    adopted.stop()
    assert not port_accepts(state["host"], state["port"])
    assert not Path(state["folder"]).exists()
    assert adopted.get_state() == {}


@pytest.mark.integration
def test_an_account_that_cannot_reach_the_state_dir_fails_with_why(
    cluster: SlurmCluster, account: UnixAccount, tmp_path: Path
) -> None:
    # A folder of root's that the user may not write in.
    barred = tmp_path / "root-only"
    barred.mkdir(mode=0o755)
    session = SlurmSession(TYPE, common_options={"state_dir": str(barred), "run_as": "user"})
    assert session.start("token", options={"size": SIZE, "username": account.name}) is False
    assert session.progress().startswith(f"cannot create a session folder in {barred}")
    assert f"as {account.name}" in session.progress()
    assert list(barred.iterdir()) == []
    assert session.get_state() == {}


@pytest.mark.parametrize(
    ("username", "options", "said"),
    [
        ("", {}, "run as their user's own account: open it from the portal, logged in"),
        ("root", {}, "the account 'root' (uid 0) may not run sessions"),
        ("daemon", {}, "(uid 1) may not run sessions: only accounts from uid 1000 on may"),
        ("no-such-account-here", {}, "there is no account 'no-such-account-here'"),
        ("daemon", {"min_uid": 1}, None),
    ],
)
def test_sessions_of_accounts_that_may_not_run_them_do_not_start(
    tmp_path: Path, username: str, options: dict[str, int], said: str | None
) -> None:
    session = SlurmSession(
        TYPE, common_options={"state_dir": str(tmp_path / "s"), "run_as": "user", **options}
    )
    if said is None:
        # Allowed by a lower min_uid (root never is).
        assert session.job_owner(username).name == username
        return
    assert session.start("token", options={"size": SIZE, "username": username}) is False
    assert said in session.progress()
    assert not (tmp_path / "s").exists()


def test_a_gateway_that_is_neither_root_nor_has_sudo_cannot_run_sessions_as_users(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(JobOwnerError, match="it must run as root, or be allowed to run"):
        JobOwner.of_user("nobody", min_uid=0)


def test_the_gateways_own_files_are_plain_file_operations(tmp_path: Path) -> None:
    owner = JobOwner.of_gateway()
    assert not owner.switch
    assert owner.command(["id"], {"A": "1"}) == (["id"], {"A": "1"}, {})
    assert owner.expand("~/x") == Path(owner.home) / "x"
    assert owner.expand("/abs/~") == Path("/abs/~")
    files = OwnerFiles(owner)
    folder = files.make_folder(tmp_path / "a" / "b", "T-0-")
    assert folder.parent == tmp_path / "a" / "b"
    assert folder.name.startswith("T-0-")
    assert owner_of(folder)[1] == 0o700
    files.write_new(folder / "passwd", b"12345678")
    assert owner_of(folder / "passwd")[1] == 0o600
    with pytest.raises(FileExistsError):
        files.write_new(folder / "passwd", b"again")
    assert files.read(folder / "passwd") == b"12345678"
    assert files.read(folder / "passwd", last=3) == b"678"
    assert files.read(folder / "missing") is None
    files.remove_tree(folder)
    assert not folder.exists()


@pytest.mark.integration
def test_a_users_files_are_handled_as_the_user(account: UnixAccount, tmp_path: Path) -> None:
    owner = JobOwner.of_user(account.name)
    assert owner.switch
    assert owner.environment({"HOME": "/root", "PATH": "/bin"}) == {
        "HOME": str(account.home),
        "USER": account.name,
        "LOGNAME": account.name,
        "PATH": "/bin",
    }
    files = OwnerFiles(owner)
    folder = files.make_folder(owner.expand("~/sessions"), "T-0-")
    assert folder.parent == account.home / "sessions"
    assert owner_of(folder) == (account.uid, 0o700)
    files.write_new(folder / "passwd", b"12345678")
    assert owner_of(folder / "passwd") == (account.uid, 0o600)
    with pytest.raises(OSError, match=f"as {account.name}"):
        files.write_new(folder / "passwd", b"again")
    assert files.read(folder / "passwd") == b"12345678"
    assert files.read(folder / "passwd", last=3) == b"678"
    assert files.read(folder / "missing") is None
    # A link the user plants is read as the user: root's files stay out of reach.
    (folder / "connection").symlink_to("/etc/shadow")
    assert files.read(folder / "connection") is None
    files.remove_tree(folder)
    assert not folder.exists()
    assert Path("/etc/shadow").exists()


# ---------------------------------------------------------------------------------------
# A gateway that is not root: sudo. The tests run as root, which sudo lets switch to anyone
# without a rule; the gateway is told it is not root, so it takes that path.


@pytest.fixture
def not_root(monkeypatch: pytest.MonkeyPatch) -> None:
    require_binaries("sudo")
    monkeypatch.setattr(os, "geteuid", lambda: 4242)


@pytest.mark.integration
def test_without_root_a_users_files_are_handled_through_sudo(
    account: UnixAccount, not_root: None
) -> None:
    owner = JobOwner.of_user(account.name)
    assert owner.how == WITH_SUDO
    argv, environment, ids = owner.command(["id", "-un"], {"PATH": "/usr/bin:/bin"})
    assert argv[:5] == ["sudo", "-n", "-u", account.name, "--"]
    assert f"HOME={account.home}" in argv
    # sudo itself gets no more than where to find programs; env -i sets the rest.
    assert environment == {"PATH": "/usr/bin:/bin"}
    assert ids == {}
    files = OwnerFiles(owner)
    folder = files.make_folder(owner.expand("~/sessions"), "T-0-")
    assert owner_of(folder) == (account.uid, 0o700)
    files.write_new(folder / "passwd", b"12345678")
    assert owner_of(folder / "passwd") == (account.uid, 0o600)
    assert files.read(folder / "passwd") == b"12345678"
    files.remove_tree(folder)
    assert not folder.exists()


@pytest.mark.integration
def test_without_root_a_users_job_is_submitted_and_cancelled_through_sudo(
    cluster: SlurmCluster, account: UnixAccount, not_root: None
) -> None:
    session = realize_service(
        name=TYPE, count=1, index=0, common_options={"state_dir": STATE_DIR, "run_as": "user"}
    )
    assert session.start("token", options={"size": SIZE, "username": account.name}) is True
    state = session.get_state()
    assert squeue_user(cluster, state["job_id"]) == account.name
    assert vnc_authenticate(state["host"], state["port"], session.password() or b"")
    session.stop()
    status = job_status(state["job_id"])
    assert status is not None
    assert status.state == "CANCELLED"
    assert not port_accepts(state["host"], state["port"])
    assert not Path(state["folder"]).exists()


@pytest.mark.integration
def test_the_account_single_sign_on_names_is_the_one_a_gateways_slurm_job_runs_as(
    cluster: SlurmCluster, account: UnixAccount, tmp_path: Path
) -> None:
    (tmp_path / "config").mkdir()
    catalog = write_catalog(tmp_path / "config", Path(STATE_DIR), run_as="user")
    gateway = start_gateway(
        tmp_path / "run", catalog,
        "--remote-user-header", "X-Remote-User",
        "--remote-user-pattern", r"(?P<user>[^@]+)@EXAMPLE\.ORG", "--remote-user-lowercase",
        env=cluster.env,
    )  # fmt: skip
    try:
        # A Kerberos principal, as a user typed it at the identity provider.
        header = {"X-Remote-User": account.name.upper() + "@EXAMPLE.ORG"}
        browser = Browser(gateway.port)
        catalogue = browser.get("/", header)
        assert catalogue.status == 200, catalogue.text
        launched = browser.post(
            "/launch",
            {"service": TYPE, "size": SIZE, "csrfmiddlewaretoken": catalogue.csrf_token()},
            header,
        )
        assert launched.status == 302, launched.text
        query = "session=" + urllib.parse.quote(launched.location.rstrip("/").rsplit("/", 1)[-1])
        greeting = open_socket(gateway, query, browser, headers=header)
        assert isinstance(greeting, bytes), greeting
        assert greeting.startswith(b"RFB "), greeting
        ran_as = cluster.run("squeue", "-h", "-t", "all", "-u", account.name, "-n", JOB_NAME_0)
        assert ran_as.returncode == 0, ran_as.stderr
        assert ran_as.stdout.strip(), f"no job of {account.name}"
        # The viewer left: the job is cancelled and its processes end.
        wait_until(
            lambda: not processes_mentioning(account.home),
            scaled(30),
            message="the session's processes outlived its last viewer",
        )
    finally:
        gateway.stop()
