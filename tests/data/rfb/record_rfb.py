"""Record what real VNC servers send during the RFB handshake, for tests/test_rfb.py.

Run by hand (not by pytest) from the repository root when the recordings must be renewed:

    .venv/bin/python tests/data/rfb/record_rfb.py

It starts TigerVNC's ``Xvnc`` (and ``x11vnc`` on Xvnc's display, for genuine RFB 3.3 and 3.7
servers) on free loopback ports, plays the client side of a few handshakes with a plain socket,
writes every chunk each side sent as hex to ``tests/data/rfb/recordings.json`` and stops every
process it started, by PID. Each session holds ``handshake`` (RFC 6143 §7.1-7.2) and
``initialisation`` (from the client's ClientInit on, §7.3) as lists of ``["s" | "c", hex]``:
who sent the chunk (server or client) and its bytes.

The password file is made by the real ``vncpasswd -f``. The VNC Authentication responses are
computed with ``vizgate.vnc_password.vnc_auth_response`` and recorded together with the server's
verdict on them, so a recording that ends its handshake with SecurityResult 0 is evidence that a
real server accepted that response.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vizgate.vnc_password import vnc_auth_response

PASSWORD = b"vizgate1"
WRONG_PASSWORD = b"wrong-pw"
GEOMETRY = (64, 48)
DESKTOP = "vizgate-recording"
OUTPUT = Path(__file__).with_name("recordings.json")
DEADLINE = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def free_display() -> int:
    for number in range(150, 400):
        if not (
            Path(f"/tmp/.X11-unix/X{number}").exists() or Path(f"/tmp/.X{number}-lock").exists()
        ):
            return number
    raise RuntimeError("no free X display number")


def wait_for_port(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.01)  # polling a condition with a deadline
    raise RuntimeError(f"nothing listens on port {port}")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@contextmanager
def xvnc(*options: str) -> Iterator[tuple[int, int]]:
    """Start Xvnc with ``options``; yield (display, port)."""
    display, port = free_display(), free_port()
    width, height = GEOMETRY
    process = subprocess.Popen(
        ["Xvnc", f":{display}", "-rfbport", str(port), "-localhost", "-geometry",
         f"{width}x{height}", "-depth", "24", "-desktop", DESKTOP, *options],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_port(port, process)
        yield display, port
    finally:
        stop(process)


@contextmanager
def x11vnc(display: int, *options: str) -> Iterator[int]:
    port = free_port()
    process = subprocess.Popen(
        ["x11vnc", "-display", f":{display}", "-rfbport", str(port), "-localhost", "-forever",
         "-shared", "-quiet", "-desktop", DESKTOP, *options],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_port(port, process)
        yield port
    finally:
        stop(process)


class Conversation:
    """A client connection that logs every chunk sent and received, in order."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
        self.log: list[list[str]] = []
        # Index in ``log`` where the initialisation phase (ClientInit onwards) begins, if reached.
        self.initialisation: int | None = None

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)
        self.log.append(["c", data.hex()])

    def recv_exact(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise RuntimeError(f"server closed after {data!r}")
            data += chunk
        self._log_server(data)
        return data

    def recv_until_closed(self) -> bytes:
        data = b""
        while chunk := self.sock.recv(65536):
            data += chunk
        if data:
            self._log_server(data)
        return data

    def _log_server(self, data: bytes) -> None:
        if len(self.log) > (self.initialisation or 0) and self.log[-1][0] == "s":
            self.log[-1][1] += data.hex()
        else:
            self.log.append(["s", data.hex()])

    def recv_reason(self) -> bytes:
        (length,) = struct.unpack("!I", self.recv_exact(4))
        return self.recv_exact(length)

    def close(self) -> None:
        self.sock.close()


def handshake(port: int, *, version: bytes, password: bytes, choose: int | None) -> Conversation:
    """Play a client's side up to and including SecurityResult (if any)."""
    conv = Conversation(port)
    conv.recv_exact(12)
    conv.send(version)
    if version == b"RFB 003.003\n":
        (chosen,) = struct.unpack("!I", conv.recv_exact(4))
        if chosen == 0:
            conv.recv_reason()
            conv.recv_until_closed()
            return conv
    else:
        (count,) = conv.recv_exact(1)
        if count == 0:
            conv.recv_reason()
            conv.recv_until_closed()
            return conv
        types = conv.recv_exact(count)
        chosen = choose if choose is not None else types[0]
        if chosen not in types:
            # Only the offer is wanted (e.g. types this client cannot speak).
            return conv
        conv.send(bytes([chosen]))
    if chosen == 2:
        challenge = conv.recv_exact(16)
        conv.send(vnc_auth_response(challenge, password))
    if chosen == 2 or version == b"RFB 003.008\n":
        (status,) = struct.unpack("!I", conv.recv_exact(4))
        if status != 0:
            if version == b"RFB 003.008\n":
                conv.recv_reason()
            conv.recv_until_closed()
    return conv


def initialise(conv: Conversation, *, update: bool = False) -> None:
    """ClientInit, ServerInit (RFC 6143 §7.3) and, if asked, one full FramebufferUpdate (§7.6.1)."""
    conv.initialisation = len(conv.log)
    conv.send(b"\x01")
    header = conv.recv_exact(24)
    bits_per_pixel = header[4]
    (name_length,) = struct.unpack("!I", header[20:24])
    conv.recv_exact(name_length)
    if not update:
        return
    width, height = struct.unpack("!HH", header[:4])
    conv.send(struct.pack("!BBHHHH", 3, 0, 0, 0, width, height))
    update = conv.recv_exact(4)
    (rectangles,) = struct.unpack("!H", update[2:4])
    for _ in range(rectangles):
        _x, _y, w, h, encoding = struct.unpack("!HHHHi", conv.recv_exact(12))
        if encoding != 0:
            raise RuntimeError(f"unexpected encoding {encoding}")
        conv.recv_exact(w * h * bits_per_pixel // 8)


def record() -> dict[str, object]:
    sessions: dict[str, dict[str, object]] = {}

    def keep(name: str, description: str, conv: Conversation) -> None:
        conv.close()
        split = len(conv.log) if conv.initialisation is None else conv.initialisation
        sessions[name] = {
            "description": description,
            "handshake": conv.log[:split],
            "initialisation": conv.log[split:],
        }

    with tempfile.TemporaryDirectory() as directory:
        password_file = Path(directory) / "passwd"
        obfuscated = subprocess.run(
            ["vncpasswd", "-f"], input=PASSWORD + b"\n", capture_output=True, check=True
        ).stdout
        descriptor = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(obfuscated)

        with xvnc("-SecurityTypes", "VncAuth", "-PasswordFile", str(password_file)) as (
            display,
            port,
        ):
            conv = handshake(port, version=b"RFB 003.008\n", password=PASSWORD, choose=2)
            initialise(conv, update=True)
            keep("xvnc-vncauth-3.8-ok", "Xvnc -SecurityTypes VncAuth, client 3.8", conv)

            conv = handshake(port, version=b"RFB 003.008\n", password=WRONG_PASSWORD, choose=2)
            keep("xvnc-vncauth-3.8-failed", "Xvnc VncAuth, client 3.8, wrong password", conv)

            # TigerVNC refuses a client version it cannot speak with a count of 0 and a reason
            # (RFC 6143 §7.1.2): the only way to make it send that in a 3.8-style handshake.
            conv = handshake(port, version=b"RFB 004.000\n", password=PASSWORD, choose=2)
            keep(
                "xvnc-refused-3.8",
                "Xvnc refusing a client that answered RFB 004.000: count 0 + reason",
                conv,
            )

            with x11vnc(display, "-rfbauth", str(password_file), "-rfbversion", "3.3") as port33:
                conv = handshake(port33, version=b"RFB 003.003\n", password=PASSWORD, choose=None)
                initialise(conv)
                keep("x11vnc-vncauth-3.3-ok", "x11vnc -rfbauth -rfbversion 3.3, client 3.3", conv)

                conv = handshake(
                    port33, version=b"RFB 003.003\n", password=WRONG_PASSWORD, choose=None
                )
                keep("x11vnc-vncauth-3.3-failed", "x11vnc 3.3, wrong password", conv)

            with x11vnc(display, "-rfbauth", str(password_file), "-rfbversion", "3.7") as port37:
                conv = handshake(port37, version=b"RFB 003.007\n", password=PASSWORD, choose=2)
                initialise(conv)
                keep("x11vnc-vncauth-3.7-ok", "x11vnc -rfbauth -rfbversion 3.7, client 3.7", conv)

            with x11vnc(display, "-nopw", "-rfbversion", "3.7") as port37:
                conv = handshake(port37, version=b"RFB 003.007\n", password=b"", choose=1)
                initialise(conv)
                keep("x11vnc-none-3.7", "x11vnc without password, -rfbversion 3.7", conv)

            with x11vnc(display, "-nopw", "-rfbversion", "3.3") as port33:
                conv = handshake(port33, version=b"RFB 003.003\n", password=b"", choose=None)
                initialise(conv)
                keep("x11vnc-none-3.3", "x11vnc without password, -rfbversion 3.3", conv)

        with xvnc("-SecurityTypes", "None") as (_display, port):
            conv = handshake(port, version=b"RFB 003.008\n", password=b"", choose=1)
            initialise(conv)
            keep("xvnc-none-3.8", "Xvnc -SecurityTypes None, client 3.8", conv)

        with xvnc("-SecurityTypes", "TLSVnc,X509Vnc", "-PasswordFile", str(password_file)) as (
            _display,
            port,
        ):
            conv = handshake(port, version=b"RFB 003.008\n", password=PASSWORD, choose=0)
            keep("xvnc-tls-only-3.8", "Xvnc -SecurityTypes TLSVnc,X509Vnc: offer only", conv)

        with xvnc(
            "-SecurityTypes",
            "VncAuth",
            "-PasswordFile",
            str(password_file),
            "-BlacklistThreshold",
            "1",
        ) as (_display, port):
            conv = handshake(port, version=b"RFB 003.008\n", password=WRONG_PASSWORD, choose=2)
            conv.close()
            # Once black-listed, TigerVNC answers every new connection as an RFB 3.3 server with
            # security type 0 and a reason, before the client says anything.
            conv = Conversation(port)
            conv.recv_until_closed()
            keep("xvnc-blacklisted", "Xvnc after a failed attempt, -BlacklistThreshold 1", conv)

    version = subprocess.run(["Xvnc", "-version"], capture_output=True, text=True).stderr
    x11vnc_version = subprocess.run(["x11vnc", "-version"], capture_output=True, text=True).stdout
    return {
        "recorded_with": [version.strip().splitlines()[0], x11vnc_version.strip()],
        "password": PASSWORD.decode(),
        "wrong_password": WRONG_PASSWORD.decode(),
        "geometry": list(GEOMETRY),
        "sessions": sessions,
    }


def main() -> int:
    recordings = record()
    OUTPUT.write_text(json.dumps(recordings, indent=1) + "\n")
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
