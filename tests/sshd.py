"""A real sshd on 127.0.0.1 for tests: this machine as a node reached over ssh.

The gateway's side is what an admin sets up for the gateway's account: a private key whose
public half is in the node's authorized keys, and a known_hosts file naming the node's host key
(ssh runs with ``BatchMode=yes`` and ``StrictHostKeyChecking=yes``: it never asks).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from support import (
    free_tcp_port,
    kill_pid_tree,
    port_accepts,
    require_binaries,
    scaled,
    wait_until,
)

__all__ = ["SshServer", "running_sshd"]


@dataclass(frozen=True)
class SshServer:
    """A running sshd: its port, the key that logs in, the known_hosts file, its log."""

    port: int
    client_key: Path
    known_hosts: Path
    log: Path


@contextlib.contextmanager
def running_sshd(folder: Path) -> Iterator[SshServer]:
    """Run an sshd on an OS-chosen free port with its files in ``folder`` (created); it lets
    this user in by key only. Stopped by its PID on exit."""
    require_binaries("sshd", "ssh", "ssh-keygen")
    if not Path("/run/sshd").is_dir():
        if os.geteuid() != 0:
            pytest.skip("sshd needs its privilege separation folder /run/sshd")
        # What the ssh service's tmpfiles.d entry creates at boot.
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    folder.mkdir()
    host_key, client_key = folder / "host_key", folder / "client_key"
    for key in (host_key, client_key):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
            check=True,
            timeout=30,
        )
    (folder / "authorized_keys").write_bytes(client_key.with_suffix(".pub").read_bytes())
    port = free_tcp_port()
    known_hosts = folder / "known_hosts"
    known_hosts.write_text(f"[localhost]:{port} {host_key.with_suffix('.pub').read_text()}")
    config = folder / "sshd_config"
    config.write_text(
        f"ListenAddress 127.0.0.1:{port}\n"
        f"HostKey {host_key}\n"
        f"AuthorizedKeysFile {folder / 'authorized_keys'}\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\n"
        "StrictModes no\n"
        "UsePAM no\n"
        "PidFile none\n"
        # bash reads ~/.bashrc for a command run over ssh only as a top-level shell (SHLVL<2).
        # This user's ~/.bashrc is not what these tests are about, and what it runs can hang a
        # login: a `pyenv rehash` killed half-way by a teardown leaves a lock that makes every
        # later login wait in it.
        "SetEnv SHLVL=1\n"
    )
    log = folder / "sshd.log"
    with log.open("wb") as log_file:
        server = subprocess.Popen(
            [shutil.which("sshd") or "/usr/sbin/sshd", "-D", "-e", "-f", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until(
            lambda: port_accepts("127.0.0.1", port) or server.poll() is not None,
            scaled(10),
            message="sshd did not listen",
        )
        assert server.poll() is None, log.read_text()
        yield SshServer(port=port, client_key=client_key, known_hosts=known_hosts, log=log)
    finally:
        kill_pid_tree(server.pid)
        server.wait(timeout=10)
