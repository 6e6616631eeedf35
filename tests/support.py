"""Plain helpers for tests: polling with deadlines, free ports and displays, processes.

Import them with ``from support import wait_until`` (pytest puts ``tests/`` on ``sys.path``).
None of them is a fixture, so using one forces nothing on a test. Nothing here sleeps to
synchronise: every wait polls a condition until a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import shutil
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

__all__ = [
    "TIME_SCALE",
    "VncHome",
    "await_until",
    "free_display",
    "free_displays",
    "free_tcp_port",
    "is_running",
    "kill_pid_tree",
    "listening_addresses",
    "pids_of",
    "pids_on_display",
    "port_accepts",
    "read_rfb_banner",
    "require_binaries",
    "scaled",
    "vnc_authenticate",
    "wait_until",
]

T = TypeVar("T")

#: Multiplies the timeouts of tests that use :func:`scaled`, for slow machines:
#: ``VIZGATE_TEST_TIME_SCALE=3 pytest ...``
TIME_SCALE = float(os.environ.get("VIZGATE_TEST_TIME_SCALE") or "1")


def scaled(seconds: float) -> float:
    """``seconds`` multiplied by ``VIZGATE_TEST_TIME_SCALE`` (default 1)."""
    return seconds * TIME_SCALE


@dataclass(frozen=True)
class VncHome:
    """A home folder prepared by :func:`vizgate.vnc_home.prepare_vnc_home`.

    Attributes:
        path: the folder; ``HOME`` points at it while the ``vnc_home`` fixture is active.
        password: the VNC password written to ``path/.vnc/passwd``.
    """

    path: Path
    password: bytes


# ---------------------------------------------------------------------------------------
# Waiting


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    interval: float = 0.05,
    message: str = "condition not met",
) -> T:
    """Poll ``predicate`` until it returns something truthy; return that value.

    Raises:
        AssertionError: ``timeout`` seconds passed first (the message says how long).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{message} (waited {timeout:g} s)")
        time.sleep(interval)


async def await_until(
    predicate: Callable[[], T] | Callable[[], Awaitable[T]],
    timeout: float,
    interval: float = 0.05,
    message: str = "condition not met",
) -> T:
    """Like :func:`wait_until` for async tests; ``predicate`` may be a coroutine function.

    Raises:
        AssertionError: ``timeout`` seconds passed first.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{message} (waited {timeout:g} s)")
        await asyncio.sleep(interval)


# ---------------------------------------------------------------------------------------
# Ports and displays


def free_tcp_port() -> int:
    """A TCP port on 127.0.0.1 that the OS reports free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _port_is_free(port: int) -> bool:
    # Binding a wildcard address fails when any address of that family holds the port.
    # Bound only, never listening: no server is opened.
    families = [(socket.AF_INET, "0.0.0.0")]
    if socket.has_ipv6:
        families.append((socket.AF_INET6, "::"))
    for family, address in families:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind((address, port))
            except OSError:
                return False
    return True


_handed_out_displays: set[int] = set()


def free_display(start: int = 100) -> int:
    """An X display number >= ``start`` that looks unused; never the same one twice.

    Unused means: no ``/tmp/.X<n>-lock``, no ``/tmp/.X11-unix/X<n>``, and VNC port
    ``5900 + n`` and X11 port ``6000 + n`` free on every interface. Numbers handed out
    earlier in this process are skipped, so two fixtures do not collide before either has
    started its server.

    Raises:
        RuntimeError: none of the 1000 numbers from ``start`` on is free.
    """
    for display in range(start, start + 1000):
        if display in _handed_out_displays or 5900 + display > 65535:
            continue
        if Path(f"/tmp/.X{display}-lock").exists() or Path(f"/tmp/.X11-unix/X{display}").exists():
            continue
        # TigerVNC's vncserver also calls a display busy when X11's TCP port 6000 + n is taken
        # (by anything: an x11vnc on display n - 100 listens on 5900 + n - 100).
        if not _port_is_free(5900 + display) or not _port_is_free(6000 + display):
            continue
        _handed_out_displays.add(display)
        return display
    raise RuntimeError(f"no free X display between {start} and {start + 999}")


def free_displays(count: int, start: int = 100) -> int:
    """The first of ``count`` consecutive X displays that :func:`free_display` calls unused
    (a session type's instances use ``display_base + index``)."""
    base = free_display(start)
    while True:
        last = base
        while last - base + 1 < count:
            candidate = free_display(last + 1)
            if candidate != last + 1:
                break
            last = candidate
        else:
            return base
        base = candidate


def port_accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    """Does ``host:port`` accept a TCP connection?"""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def read_rfb_banner(host: str, port: int, timeout: float) -> bytes:
    """Connect and read the 12-byte RFB ProtocolVersion (RFC 6143 §7.1.1).

    Returns:
        What arrived before EOF or the deadline, e.g. ``b"RFB 003.008\\n"``, so that a test
        can compare it.

    Raises:
        OSError: the connection was refused or timed out.
    """
    deadline = time.monotonic() + timeout
    data = b""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        while len(data) < 12:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            sock.settimeout(remaining)
            try:
                chunk = sock.recv(12 - len(data))
            except TimeoutError:
                break
            if not chunk:
                break
            data += chunk
    return data


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError(f"connection closed after {len(data)} of {size} bytes")
        data += chunk
    return data


def _vnc_des_response(password: bytes, challenge: bytes) -> bytes:
    # RFC 6143 §7.2.2: DES-encrypt the challenge with the password (8 bytes, NUL padded)
    # as key, each key byte's bits mirrored (the RFB convention). Triple DES with three
    # equal keys is single DES.
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
    from cryptography.hazmat.primitives.ciphers import Cipher, modes

    key = bytes(int(f"{b:08b}"[::-1], 2) for b in password[:8].ljust(8, b"\0"))
    encryptor = Cipher(TripleDES(key * 3), modes.ECB()).encryptor()  # noqa: S305 (RFB)
    return encryptor.update(challenge) + encryptor.finalize()


def vnc_authenticate(host: str, port: int, password: bytes, timeout: float = 5.0) -> bool:
    """Run the RFB 3.8 handshake up to the VNC authentication result.

    Returns:
        True if the server accepted ``password``, False if it refused it.

    Raises:
        AssertionError: the server does not speak RFB 3.x or does not offer VNC
            authentication.
        OSError: the connection failed or closed early.
    """
    with socket.create_connection((host, port), timeout=timeout) as sock:
        banner = _recv_exactly(sock, 12)
        assert banner.startswith(b"RFB 003."), banner
        sock.sendall(b"RFB 003.008\n")
        count = _recv_exactly(sock, 1)[0]
        types = _recv_exactly(sock, count) if count else b""
        assert 2 in types, f"VNC authentication not offered: security types {list(types)}"
        sock.sendall(bytes([2]))
        challenge = _recv_exactly(sock, 16)
        sock.sendall(_vnc_des_response(password, challenge))
        return int.from_bytes(_recv_exactly(sock, 4), "big") == 0


def listening_addresses(port: int) -> set[str]:
    """The local addresses with a TCP socket listening on ``port`` (/proc/net/tcp, tcp6).

    IPv4 comes as e.g. ``127.0.0.1``, IPv6 as ``::1``; the wildcards as ``0.0.0.0`` / ``::``.
    """
    found: set[str] = set()
    for name, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        try:
            lines = Path(f"/proc/net/{name}").read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            address_hex, port_hex = fields[1].split(":")
            if fields[3] != "0A" or int(port_hex, 16) != port:  # 0A is TCP_LISTEN
                continue
            raw = bytes.fromhex(address_hex)
            # The kernel prints each 32-bit word of the address in host (little-endian) order.
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            found.add(socket.inet_ntop(family, raw))
    return found


# ---------------------------------------------------------------------------------------
# Processes


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat from field 3 (state) on, or None if the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm (field 2) may hold spaces and parentheses; it ends at the last ")".
    return stat[stat.rindex(")") + 2 :].split()


def is_running(pid: int) -> bool:
    """Does ``pid`` exist and is it not a zombie?

    Orphans are reaped by PID 1, which can take more than a second on some machines; a
    zombie has exited and holds nothing (no socket, no display), so it counts as gone.
    """
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def _all_pids() -> Iterator[int]:
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            yield int(entry.name)


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def pids_of(executable_name: str) -> set[int]:
    """Running (non-zombie) processes whose program is named ``executable_name``.

    The name is compared with the process's comm, the base name of its executable and the
    base name of its argv[0]; so ``Xtigervnc`` is found whether it was started as
    ``/usr/bin/Xtigervnc`` or through the ``Xvnc`` symlink.
    """
    found: set[int] = set()
    for pid in _all_pids():
        if not is_running(pid):
            continue
        names: set[str] = set()
        try:
            names.add(Path(f"/proc/{pid}/comm").read_text().strip())
        except OSError:
            continue
        with contextlib.suppress(OSError):
            names.add(Path(os.readlink(f"/proc/{pid}/exe")).name)
        argv = _cmdline(pid)
        if argv:
            names.add(Path(argv[0]).name)
        if executable_name in names:
            found.add(pid)
    return found


def pids_on_display(display: int) -> set[int]:
    """Running processes that belong to X display ``:display``.

    That is: ``:display`` is one of its arguments (X servers, x11vnc, the vncserver
    wrapper), or its environment sets ``DISPLAY`` to that display (session clients such as
    xterm and the shell in it). Only root can read other users' environments.
    """
    target = f":{display}"
    found: set[int] = set()
    for pid in _all_pids():
        if pid == os.getpid() or not is_running(pid):
            continue
        if target in _cmdline(pid):
            found.add(pid)
            continue
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for item in environ:
            if item.startswith(b"DISPLAY="):
                # ":N", ":N.0", "host:N", "host:N.0"
                value = item[len(b"DISPLAY=") :].decode(errors="replace")
                if value.rpartition(":")[2].partition(".")[0] == str(display):
                    found.add(pid)
                break
    return found


def _children(pid: int) -> list[int]:
    return [
        child
        for child in _all_pids()
        if (fields := _stat_fields(child)) is not None and fields[1] == str(pid)
    ]


def kill_pid_tree(pid: int, timeout: float = 5.0) -> None:
    """Stop ``pid`` and its descendants: SIGTERM, wait up to ``timeout``, then SIGKILL.

    Descendants are collected before any signal, since they are reparented as soon as
    their parent dies. Processes already gone are ignored.
    """
    tree: list[int] = []
    pending = [pid]
    while pending:
        current = pending.pop()
        if current not in tree:
            tree.append(current)
            pending.extend(_children(current))
    for member in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(member, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(is_running(member) for member in tree):
        time.sleep(0.05)
    for member in tree:
        if is_running(member):
            with contextlib.suppress(ProcessLookupError):
                os.kill(member, signal.SIGKILL)


# ---------------------------------------------------------------------------------------
# Programs


def require_binaries(*names: str) -> None:
    """Skip the calling test when a program is missing; in CI (``$CI`` set) fail instead.

    CI must have every program installed: a skip there would hide a test that never ran.
    """
    missing = [name for name in names if shutil.which(name) is None]
    if not missing:
        return
    reason = "not installed: " + ", ".join(missing)
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: a missing program fails the test)")
    pytest.skip(reason)
