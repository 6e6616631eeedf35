"""Shared fixtures (nothing here is autouse: a test gets a fixture only by asking for it) and the
event loop async tests run on."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
import uvloop

from gateway import GatewayProcess
from slurm_cluster import SLURM_PROGRAMS, SlurmCluster, processes_mentioning, running_cluster
from support import VncHome, kill_pid_tree, require_binaries, scaled
from vizgate.vnc_home import prepare_vnc_home

# Fixtures that live in modules of their own.
pytest_plugins = ["broker_fixtures"]


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Async tests run on uvloop, the loop ``vizgate serve`` runs on. Its transports, unlike
    asyncio's, keep a reference to what a write could not send at once, and the tunnel's
    fast path depends on noticing that."""
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture
def vnc_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> VncHome:
    """A fresh HOME prepared for TigerVNC's ``vncserver`` (see :mod:`vizgate.vnc_home`).

    ``HOME`` points at it for the test, so ``vncserver`` started by the test (or by a
    session script the test runs) reads its ``.vnc`` folder and writes its logs there.
    ``XAUTHORITY`` is removed so that the wrapper writes ``HOME/.Xauthority`` instead of
    touching the caller's.
    """
    require_binaries("vncpasswd")
    home = tmp_path / "home"
    password = prepare_vnc_home(home)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XAUTHORITY", raising=False)
    return VncHome(path=home, password=password)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """A real one-node Slurm (``tests/slurm_cluster.py``) shared by every test of the run that
    asks for it; started on first use, stopped (and checked for leftovers) at the end.

    Its commands find it through ``SLURM_CONF`` (:attr:`SlurmCluster.env`): give that to the
    processes (or this process's environment) that use it.
    """
    require_binaries(*SLURM_PROGRAMS, "Xvnc")
    if os.geteuid() != 0:
        reason = "a test Slurm cluster needs root (slurmd starts jobs as their users)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI is set: this fails instead of skipping)")
        pytest.skip(reason)
    with running_cluster(tmp_path_factory.mktemp("slurm")) as cluster:
        yield cluster


@pytest.fixture
def gateways() -> Iterator[list[GatewayProcess]]:
    """Gateway processes a test starts; each is stopped by its PID when the test ends."""
    started: list[GatewayProcess] = []
    yield started
    for gateway in started:
        gateway.stop()
        assert gateway.process.poll() is not None


@pytest.fixture
def cluster(slurm_cluster: SlurmCluster, monkeypatch: pytest.MonkeyPatch) -> SlurmCluster:
    """The cluster, with ``SLURM_CONF`` set for this process (the broker's threads use it)."""
    for key, value in slurm_cluster.env.items():
        monkeypatch.setenv(key, value)
    return slurm_cluster


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    """Where the test's session folders go; no process may use it when the test ends."""
    folder = tmp_path / "sessions"
    yield folder
    # The job script stops its Xvnc and xterm from a trap; stop() waited for the job and the
    # port, so anything still running with the folder in its command line or environment
    # (Xvnc's -PasswordFile, xterm's XAUTHORITY) was leaked.
    deadline = time.monotonic() + scaled(10)
    while processes_mentioning(folder) and time.monotonic() < deadline:
        time.sleep(0.05)
    leaked = processes_mentioning(folder)
    # SIGTERM first: Xvnc then removes its X lock files, which SIGKILL would leave behind.
    for pid in leaked:
        kill_pid_tree(pid)
    assert not leaked, f"processes of sessions in {folder} still running: {leaked}"
