"""Beyond one machine, through the real gateway: Slurm jobs and SSH hosts as sessions.

Every integration test here runs ``python -m vizgate.server`` as a process and talks to it as a
browser does: ``/v1/reserve`` over HTTP, then the RFB handshake over a WebSocket carrying the
token, with a client that speaks security type None only. So a handshake that succeeds proves
the gateway answered the VNC server's password challenge itself, with the session's own
password, which the browser side never sees.

* Slurm: the type uses ``builtin:slurm`` against a real one-node Slurm (the session-scoped
  ``slurm_cluster`` fixture of ``conftest.py``; the gateway process gets its ``SLURM_CONF``).
* SSH: the type uses ``examples/x11vnc_desktop_session.py`` against a real ``sshd`` on
  127.0.0.1 that this file starts, logged in to by key with a known_hosts file of its own.

Each test checks that the session's job, port and processes are gone afterwards (by job id,
by port and through ``/proc``), not only that the gateway says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import os
import shutil
import signal
import subprocess
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import websockets

from gateway import GatewayProcess, start_gateway
from rfb_client import RfbClient, WebSocketSource
from slurm_cluster import SlurmCluster, processes_mentioning
from sshd import running_sshd
from support import (
    await_until,
    free_display,
    is_running,
    kill_pid_tree,
    listening_addresses,
    pids_on_display,
    port_accepts,
    require_binaries,
    scaled,
    wait_until,
)
from vizgate.catalog import load_catalog
from vizgate.scripts import realize_instances
from vizgate.vnc_password import read_vnc_password_file

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CLUSTER_EXAMPLE = EXAMPLES / "cluster" / "external_services.json"
X11VNC_SESSION = EXAMPLES / "x11vnc_desktop_session.py"
STOP_X11 = EXAMPLES / "stop_x11_server.sh"

# A type name of its own: the cluster is shared with test_slurm.py, and jobs are found by name.
SLURM_TYPE = "Cluster Gateway Desktop"
SLURM_JOB_NAME = "vizgate-Cluster_Gateway_Desktop-0"
SSH_TYPE = "Render Node Desktop"
SIZE = "1024x768"
# Long enough for a client to come back after a restart (the linger of an adopted session starts
# when the new gateway adopts it); short enough to keep the file fast.
LINGER = 3.0


# ---------------------------------------------------------------------------------------
# The example catalog (no cluster needed)


def test_the_cluster_example_catalog_loads_and_realizes_every_instance() -> None:
    catalog = load_catalog(CLUSTER_EXAMPLE)

    assert not catalog.warnings, catalog.warnings
    scripts = {service.name: service.script for service in catalog}
    assert scripts["Workstation Desktop"] == EXAMPLES / "desktop_session.py"
    assert scripts["Render Node Desktop"] == X11VNC_SESSION
    options = {service.name: service.options_dict() for service in catalog}
    assert options["Workstation Desktop"]["vnc_password_file"] == "~/.vnc/passwd"
    assert {"hosts", "ssh_user", "ssh_key", "group"} <= set(options["Render Node Desktop"])
    slurm = catalog["Cluster GPU Desktop"]
    assert slurm.script.name == "slurm.py"
    assert isinstance(slurm.options["choices"]["gpus"], tuple)  # a list in the file
    assert {"partition", "time_limit", "cpus", "memory", "gpus"} <= set(slurm.options)
    for service in catalog:
        instances = realize_instances(
            service.name, service.script, service.count, service.options_dict()
        )
        assert [instance._index for instance in instances] == list(range(service.count))
        if service.name == "Render Node Desktop":
            # Two desktops on each of the two render nodes, the nodes taken in turn.
            assert [(i.node(), i.display()) for i in instances] == [  # type: ignore[attr-defined]
                ("render01", 200),
                ("render02", 200),
                ("render01", 201),
                ("render02", 201),
            ]


# ---------------------------------------------------------------------------------------
# Helpers


def status(gateway: GatewayProcess) -> dict[str, Any]:
    response = gateway.request("/v1/status")
    assert response.status == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def reserve(gateway: GatewayProcess, service: str) -> str:
    reply = gateway.request(
        "/v1/reserve/" + urllib.parse.quote(service), {"size": SIZE, "username": "alice"}
    )
    assert reply.status == 200, reply.text
    token: str = reply.json()["token"]
    return token


async def connect(
    gateway: GatewayProcess, token: str
) -> tuple[RfbClient, websockets.ClientConnection]:
    """The RFB handshake through the gateway's tunnel, as a None-only browser does it.

    The first connection makes the gateway start the session, so the handshake may wait for a
    whole job submission.
    """
    ws = await websockets.connect(
        f"ws://127.0.0.1:{gateway.port}/websockify?token={token}", subprotocols=["binary"]
    )
    try:
        client = RfbClient(WebSocketSource(ws))
        await asyncio.wait_for(client.handshake(), scaled(40))
    except (TimeoutError, websockets.ConnectionClosed) as exc:
        await ws.close()
        raise AssertionError(
            f"no RFB handshake through the gateway ({exc!r}); its output:\n"
            + gateway.output()[-4000:]
        ) from None
    except BaseException:
        await ws.close()
        raise
    # Offered None only: the gateway answered the VNC server's VncAuth with the session's
    # password. Without that password the server's VncAuth would reach this client, and a
    # None-only client cannot go on.
    assert client.offered_security == [1]
    assert (client.width, client.height) == (1024, 768)
    # Pixels flow through the tunnel, not only the handshake.
    await asyncio.wait_for(client.pixel(0, 0), scaled(10))
    return client, ws


def the_session(gateway: GatewayProcess) -> dict[str, Any]:
    [session] = status(gateway)["sessions"]
    assert isinstance(session, dict)
    return session


def port_closed(host: str, port: int) -> bool:
    return not port_accepts(host, port) and not listening_addresses(port)


def assert_secrets_not_logged(gateway: GatewayProcess, token: str, password: bytes) -> None:
    log = gateway.output()
    assert token not in log
    assert password.decode() not in log


# ---------------------------------------------------------------------------------------
# Slurm


@dataclass(frozen=True)
class SlurmSetup:
    cluster: SlurmCluster
    config: Path
    state_dir: Path


def job_states(cluster: SlurmCluster) -> dict[str, str]:
    """Job id -> state of the cluster's unfinished jobs that are this file's sessions."""
    result = cluster.run("squeue", "-h", "-n", SLURM_JOB_NAME, "-o", "%i %T")
    assert result.returncode == 0, result.stderr
    return dict(line.split() for line in result.stdout.splitlines() if line.strip())


@pytest.fixture
def slurm_setup(slurm_cluster: SlurmCluster, tmp_path: Path) -> Iterator[SlurmSetup]:
    """A catalog with one ``builtin:slurm`` type whose session folders are in ``tmp_path``.

    Afterwards no job of the type may be left and no process may use its session folders.
    """
    state_dir = tmp_path / "sessions"
    config = tmp_path / "config" / "external_services.json"
    config.parent.mkdir()
    config.write_text(
        json.dumps(
            {
                SLURM_TYPE: {
                    "script": "builtin:slurm",
                    "count": 1,
                    "options": {
                        "sizes": [SIZE],
                        "partition": slurm_cluster.partition,
                        "time_limit": 10,
                        "sbatch_args": ["--cpus-per-task=1"],
                        "state_dir": str(state_dir),
                        "start_timeout": 40,
                    },
                }
            }
        )
    )
    assert not job_states(slurm_cluster), "a job of this type is already queued"
    yield SlurmSetup(slurm_cluster, config, state_dir)
    # Whatever a failed test left: its job, then anything still holding its folders (Xvnc's
    # -PasswordFile, xterm's XAUTHORITY). The test itself asserts that nothing was left.
    leftover_jobs = list(job_states(slurm_cluster))
    if leftover_jobs:
        slurm_cluster.run("scancel", *leftover_jobs)
        wait_until(lambda: not job_states(slurm_cluster), scaled(15), message="jobs left")
    for pid in processes_mentioning(state_dir):
        kill_pid_tree(pid)
    assert not leftover_jobs, f"jobs left running: {leftover_jobs}"


def gateway_for(setup: SlurmSetup, directory: Path, *args: str) -> GatewayProcess:
    return start_gateway(
        directory,
        setup.config,
        "--linger",
        str(LINGER),
        *args,
        env=setup.cluster.env,
    )


def running_job(setup: SlurmSetup) -> str:
    """The id of the one session job, which must be RUNNING."""
    states = job_states(setup.cluster)
    assert list(states.values()) == ["RUNNING"], states
    [job_id] = states
    return job_id


def session_password(setup: SlurmSetup) -> bytes:
    """The running session's VNC password, read from its folder as the job reads it."""
    [folder] = [entry for entry in setup.state_dir.iterdir() if entry.is_dir()]
    return read_vnc_password_file(folder / "passwd")


async def assert_slurm_session_ended(
    setup: SlurmSetup, gateway: GatewayProcess, job_id: str, host: str, port: int
) -> None:
    """After the last viewer left: the job leaves the queue, the port closes, nothing of the
    session is left running, and the gateway says it ended because everyone disconnected."""
    cluster = setup.cluster

    def over() -> bool:
        return (
            job_id not in job_states(cluster)
            and port_closed(host, port)
            and not status(gateway)["sessions"]
        )

    await await_until(
        over, LINGER + scaled(15), message=f"job {job_id} or its port outlived the session"
    )
    [ended] = status(gateway)["ended"]
    assert ended["end_reason"] == "disconnected", ended
    assert ended["port"] == port
    result = cluster.run("scontrol", "show", "job", "-o", job_id)
    assert "JobState=CANCELLED" in result.stdout, result.stdout + result.stderr
    await await_until(
        lambda: not processes_mentioning(setup.state_dir),
        scaled(5),
        message="processes of the session are still running",
    )
    assert not any(setup.state_dir.iterdir()), "the session folder was not removed"


@pytest.mark.integration
async def test_a_slurm_session_through_the_gateway_starts_a_job_and_ends_it_when_left(
    slurm_setup: SlurmSetup, tmp_path: Path, gateways: list[GatewayProcess]
) -> None:
    gateway = gateway_for(slurm_setup, tmp_path / "run")
    gateways.append(gateway)
    token = reserve(gateway, SLURM_TYPE)
    assert not job_states(slurm_setup.cluster), "a job before anyone connected"

    _, ws = await connect(gateway, token)
    try:
        job_id = running_job(slurm_setup)
        session = the_session(gateway)
        assert session["state"] == "running"
        assert session["connections"] == 1
        host, port = session["host"], session["port"]
        assert port_accepts(host, port)
        password = session_password(slurm_setup)
    finally:
        await ws.close()

    await assert_slurm_session_ended(slurm_setup, gateway, job_id, host, port)
    assert_secrets_not_logged(gateway, token, password)


@pytest.mark.integration
async def test_a_killed_gateway_re_adopts_the_running_slurm_job(
    slurm_setup: SlurmSetup, tmp_path: Path, gateways: list[GatewayProcess]
) -> None:
    first = gateway_for(slurm_setup, tmp_path / "first")
    gateways.append(first)
    token = reserve(first, SLURM_TYPE)
    _, ws = await connect(first, token)
    job_id = running_job(slurm_setup)
    session = the_session(first)
    host, port = session["host"], session["port"]
    password = session_password(slurm_setup)

    first.process.send_signal(signal.SIGKILL)
    first.wait(10)
    await ws.close()
    # The job does not depend on the gateway process.
    assert running_job(slurm_setup) == job_id
    second = gateway_for(
        slurm_setup, tmp_path / "second", "--data-dir", str(tmp_path / "first" / "data")
    )
    gateways.append(second)

    # The same token reaches the same job; the password came back from the session's state.
    _, ws = await connect(second, token)
    try:
        assert running_job(slurm_setup) == job_id
        adopted = the_session(second)
        assert (adopted["state"], adopted["host"], adopted["port"]) == ("running", host, port)
        assert adopted["connections"] == 1
        assert "adopted after a restart (running)" in second.output()
    finally:
        await ws.close()

    await assert_slurm_session_ended(slurm_setup, second, job_id, host, port)
    assert_secrets_not_logged(first, token, password)
    assert_secrets_not_logged(second, token, password)


# ---------------------------------------------------------------------------------------
# SSH


@dataclass(frozen=True)
class SshNode:
    """This machine as a render node reached over ssh, and the X display its desktop gets."""

    port: int
    client_key: Path
    known_hosts: Path
    log: Path
    display: int


def x11_state_dir(display: int) -> Path:
    return Path(f"/tmp/vizgate-x11-{os.getuid()}-{display}")


def processes_logged_in_through(port: int) -> set[int]:
    """Live processes started through the sshd on ``port``, even those that left its process
    tree (the desktop's processes run in sessions of their own): ssh marks their environment
    with ``SSH_CONNECTION=CLIENT CPORT SERVER PORT``."""
    suffix = f" 127.0.0.1 {port}".encode()
    found: set[int] = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry.name}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        marked = any(v.startswith(b"SSH_CONNECTION=") and v.endswith(suffix) for v in environ)
        if marked and is_running(int(entry.name)):
            found.add(int(entry.name))
    return found


def clean_up_display(display: int) -> None:
    """Whatever a failed test left on ``display`` goes: by the stop script, then by PID."""
    if x11_state_dir(display).exists():
        subprocess.run(["bash", str(STOP_X11), str(display)], check=False, timeout=60)
    for pid in pids_on_display(display):
        kill_pid_tree(pid)
    lock = Path(f"/tmp/.X{display}-lock")
    with contextlib.suppress(OSError, ValueError):
        # Only the files of a server that is gone; never those of a live display.
        if not is_running(int(lock.read_text().strip())):
            lock.unlink(missing_ok=True)
            Path(f"/tmp/.X11-unix/X{display}").unlink(missing_ok=True)
    shutil.rmtree(x11_state_dir(display), ignore_errors=True)


@pytest.fixture
def ssh_node(tmp_path: Path) -> Iterator[SshNode]:
    """A real sshd on 127.0.0.1 (an OS-chosen free port) that lets this user in by key, and a
    free X display.

    The gateway's side is what an admin sets up for the gateway's account: a private key whose
    public half is in the node's authorized keys, and a known_hosts file naming the node's host
    key (ssh runs with ``BatchMode=yes`` and ``StrictHostKeyChecking=yes``: it never asks).

    Afterwards sshd is stopped first (so that no start still on its way can run any more), then
    every process that came in through it and everything on the display is stopped; a process
    of either still running at that point was leaked and fails the test.
    """
    display = free_display(start=200)
    with running_sshd(tmp_path / "sshd") as server:
        yield SshNode(server.port, server.client_key, server.known_hosts, server.log, display)
    # sshd is stopped by now, so no start still on its way can run any more.
    leaked = processes_logged_in_through(server.port) | pids_on_display(display)
    for pid in processes_logged_in_through(server.port):
        kill_pid_tree(pid)
    clean_up_display(display)
    assert not leaked, f"processes of the ssh node were left running: {sorted(leaked)}"


def ssh_gateway(
    ssh_node: SshNode, tmp_path: Path, gateways: list[GatewayProcess], name: str, *args: str
) -> GatewayProcess:
    """A gateway in ``tmp_path / name`` whose catalog has one x11vnc desktop type on the ssh
    node (this machine, logged in to over ssh); stopped by the ``gateways`` fixture."""
    require_binaries("bash", "setsid", "Xvfb", "x11vnc", "xauth")
    gateway = start_gateway(
        tmp_path / name, ssh_catalog(ssh_node, tmp_path), "--linger", str(LINGER), *args
    )
    gateways.append(gateway)
    return gateway


def ssh_catalog(ssh_node: SshNode, tmp_path: Path) -> Path:
    """The catalog of :func:`ssh_gateway`, written once in ``tmp_path / "config"``."""
    config = tmp_path / "config" / "external_services.json"
    if config.exists():
        return config
    config.parent.mkdir()
    config.write_text(
        json.dumps(
            {
                SSH_TYPE: {
                    "script": str(X11VNC_SESSION),
                    "count": 1,
                    "options": {
                        "sizes": [SIZE],
                        "host": "localhost",
                        "display_base": ssh_node.display,
                        # With ssh_user the script logs in over ssh even to this machine.
                        "ssh_user": getpass.getuser(),
                        "ssh_key": str(ssh_node.client_key),
                        "ssh_port": ssh_node.port,
                        "ssh_options": [
                            f"UserKnownHostsFile={ssh_node.known_hosts}",
                            "StrictHostKeyChecking=yes",
                        ],
                    },
                }
            }
        )
    )
    return config


@pytest.mark.integration
async def test_an_ssh_host_session_through_the_gateway_is_stopped_on_the_host_when_left(
    ssh_node: SshNode, tmp_path: Path, gateways: list[GatewayProcess]
) -> None:
    gateway = ssh_gateway(ssh_node, tmp_path, gateways, "run")
    token = reserve(gateway, SSH_TYPE)
    vnc_port = 5900 + ssh_node.display

    _, ws = await connect(gateway, token)
    try:
        session = the_session(gateway)
        assert (session["state"], session["host"], session["port"]) == (
            "running",
            "localhost",
            vnc_port,
        )
        assert "Accepted publickey" in ssh_node.log.read_text(), (
            "the desktop was not started over ssh"
        )
        state = x11_state_dir(ssh_node.display)
        pids = {name: int((state / f"{name}.pid").read_text()) for name in ("xvfb", "x11vnc")}
        assert all(is_running(pid) for pid in pids.values())
        # x11vnc's password file is removed once read; the copy a restarted gateway reads back
        # is this account's alone.
        assert not (state / "passwd").exists()
        assert (state / "vnc-password").stat().st_mode & 0o077 == 0
        assert state.stat().st_mode & 0o077 == 0
    finally:
        await ws.close()

    def over() -> bool:
        return (
            not status(gateway)["sessions"]
            and not pids_on_display(ssh_node.display)
            and port_closed("127.0.0.1", vnc_port)
            and not processes_logged_in_through(ssh_node.port)
        )

    await await_until(
        over, LINGER + scaled(15), message="the desktop on the ssh host outlived the session"
    )
    [ended] = status(gateway)["ended"]
    assert ended["end_reason"] == "disconnected", ended
    assert not any(is_running(pid) for pid in pids.values()), pids
    assert not x11_state_dir(ssh_node.display).exists()
    assert not Path(f"/tmp/.X{ssh_node.display}-lock").exists()
    # Started and stopped over ssh: two logins.
    assert ssh_node.log.read_text().count("Accepted publickey") == 2
    assert token not in gateway.output()


@pytest.mark.integration
async def test_a_killed_gateway_re_adopts_the_desktop_on_the_ssh_host(
    ssh_node: SshNode, tmp_path: Path, gateways: list[GatewayProcess]
) -> None:
    first = ssh_gateway(ssh_node, tmp_path, gateways, "first")
    token = reserve(first, SSH_TYPE)
    _, ws = await connect(first, token)
    state = x11_state_dir(ssh_node.display)
    x11vnc = int((state / "x11vnc.pid").read_text())
    password = (state / "vnc-password").read_bytes().strip()

    first.process.send_signal(signal.SIGKILL)
    first.wait(10)
    await ws.close()
    # The desktop does not depend on the gateway process.
    assert is_running(x11vnc)
    second = ssh_gateway(
        ssh_node, tmp_path, gateways, "second", "--data-dir", str(tmp_path / "first" / "data")
    )

    # The same token reaches the same desktop, and the gateway answers its VNC password again
    # (connect() offers no password of its own): read back from the node over ssh.
    _, ws = await connect(second, token)
    try:
        adopted = the_session(second)
        assert (adopted["state"], adopted["port"]) == ("running", 5900 + ssh_node.display)
        assert adopted["connections"] == 1
        assert "adopted after a restart (running)" in second.output()
        assert int((state / "x11vnc.pid").read_text()) == x11vnc
    finally:
        await ws.close()

    def over() -> bool:
        return not status(second)["sessions"] and not pids_on_display(ssh_node.display)

    await await_until(over, LINGER + scaled(15), message="the adopted desktop outlived its session")
    assert not is_running(x11vnc)
    assert not state.exists()
    for gateway in (first, second):
        assert token not in gateway.output()
        assert password.decode() not in gateway.output()
