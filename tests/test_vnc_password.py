"""Tests for vizgate.vnc_password: VNC Authentication and TigerVNC's password files.

VNC Authentication is checked against DES test vectors and against responses that real servers
(TigerVNC's Xvnc, x11vnc) accepted, taken from tests/data/rfb/recordings.json; the password files
against what TigerVNC's own ``vncpasswd -f`` writes and reads, when it is installed.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from vizgate.exceptions import VizgateError
from vizgate.vnc_password import (
    VncPasswordFileError,
    obfuscate_vnc_password,
    read_vnc_password_file,
    vnc_auth_response,
    write_vnc_password_file,
)

RECORDINGS = json.loads((Path(__file__).parent / "data" / "rfb" / "recordings.json").read_text())
PASSWORD: bytes = RECORDINGS["password"].encode()


def bit_reversed(data: bytes) -> bytes:
    return bytes(int(f"{b:08b}"[::-1], 2) for b in data)


# --------------------------------------------------------------------------------------------
# DES and VNC Authentication


@pytest.mark.parametrize(
    ("key", "plaintext", "ciphertext"),
    [
        # The worked example of FIPS 46 found in every DES textbook (J. Orlin Grabbe).
        ("133457799bbcdff1", b"\x01\x23\x45\x67\x89\xab\xcd\xef" * 2, "85e813540f0ab405" * 2),
        # FIPS 81, Appendix B, ECB mode: "Now is the time for all " under 0123456789abcdef.
        ("0123456789abcdef", b"Now is the time ", "3fa40e8a984d48156a271787ab8883f9"),
    ],
)
def test_vnc_auth_response_is_des_with_bit_reversed_key(
    key: str, plaintext: bytes, ciphertext: str
) -> None:
    # VNC reverses the bits of each key byte (RFC 6143 §7.2.2 errata); undo it to reach plain DES.
    password = bit_reversed(bytes.fromhex(key))
    assert vnc_auth_response(plaintext, password).hex() == ciphertext


def test_vnc_auth_response_uses_first_eight_bytes_zero_padded() -> None:
    challenge = bytes(range(16))
    assert vnc_auth_response(challenge, b"abc") == vnc_auth_response(challenge, b"abc\0\0\0\0\0")
    assert vnc_auth_response(challenge, b"abcdefgh") == vnc_auth_response(challenge, b"abcdefghXY")
    assert vnc_auth_response(challenge, b"abcdefgh") != vnc_auth_response(challenge, b"abcdefgX")


@pytest.mark.parametrize("length", [0, 8, 15, 17])
def test_vnc_auth_response_rejects_wrong_challenge_length(length: int) -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        vnc_auth_response(b"x" * length, PASSWORD)


@pytest.mark.parametrize("name", ["xvnc-vncauth-3.8-ok", "x11vnc-vncauth-3.3-ok"])
def test_vnc_auth_response_matches_what_a_real_server_accepted(name: str) -> None:
    # The recording shows the server answering SecurityResult 0 to this very response.
    session = RECORDINGS["sessions"][name]["handshake"]
    server = [bytes.fromhex(data) for side, data in session if side == "s"]
    client = [bytes.fromhex(data) for side, data in session if side == "c"]
    challenge = server[-2][-16:]
    assert server[-1] == b"\x00\x00\x00\x00"
    assert vnc_auth_response(challenge, PASSWORD) == client[-1]


# --------------------------------------------------------------------------------------------
# Password files

needs_vncpasswd = pytest.mark.skipif(
    shutil.which("vncpasswd") is None, reason="TigerVNC's vncpasswd is not installed"
)


def real_vncpasswd(stdin: bytes) -> bytes:
    """What ``vncpasswd -f`` prints for ``stdin`` (a password per line)."""
    return subprocess.run(
        ["vncpasswd", "-f"], input=stdin, capture_output=True, check=True, timeout=10
    ).stdout


@needs_vncpasswd
@pytest.mark.parametrize("password", [b"secret12", b"abc", b"longer-than-8", b"p@ss w0rd"])
def test_written_file_equals_real_vncpasswd(tmp_path: Path, password: bytes) -> None:
    target = tmp_path / "passwd"
    write_vnc_password_file(target, password)
    expected = real_vncpasswd(password + b"\n")
    assert target.read_bytes() == expected
    assert obfuscate_vnc_password(password) == expected


@needs_vncpasswd
@pytest.mark.parametrize("password", [b"secret12", b"abc", b"~!x y\xc3\xa9"])
def test_reads_file_made_by_real_vncpasswd(tmp_path: Path, password: bytes) -> None:
    target = tmp_path / "passwd"
    target.write_bytes(real_vncpasswd(password + b"\n"))
    assert read_vnc_password_file(target) == password
    assert read_vnc_password_file(str(target)) == password


@needs_vncpasswd
def test_reads_only_the_full_access_password_when_a_view_only_one_follows(tmp_path: Path) -> None:
    target = tmp_path / "passwd"
    target.write_bytes(real_vncpasswd(b"fullpass\nviewonly\n"))
    assert len(target.read_bytes()) == 16
    assert read_vnc_password_file(target) == b"fullpass"


@needs_vncpasswd
def test_read_rejects_an_empty_stored_password(tmp_path: Path) -> None:
    target = tmp_path / "passwd"
    target.write_bytes(real_vncpasswd(b"\n"))
    with pytest.raises(VncPasswordFileError, match="empty"):
        read_vnc_password_file(target)


def test_round_trip_and_long_password_is_cut_like_vncpasswd(tmp_path: Path) -> None:
    target = tmp_path / "passwd"
    write_vnc_password_file(target, b"0123456789")
    assert read_vnc_password_file(target) == b"01234567"


def test_write_creates_the_file_0600_whatever_the_umask(tmp_path: Path) -> None:
    target = tmp_path / "passwd"
    previous = os.umask(0)
    try:
        write_vnc_password_file(target, PASSWORD)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert read_vnc_password_file(target) == PASSWORD
    assert [p.name for p in tmp_path.iterdir()] == ["passwd"]


def test_write_replaces_a_world_readable_file_with_a_0600_one(tmp_path: Path) -> None:
    target = tmp_path / "passwd"
    target.write_bytes(b"old-data")
    target.chmod(0o644)
    write_vnc_password_file(target, PASSWORD)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert read_vnc_password_file(target) == PASSWORD


def test_tilde_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    write_vnc_password_file("~/passwd", PASSWORD)
    assert (tmp_path / "passwd").exists()
    assert read_vnc_password_file("~/passwd") == PASSWORD


@pytest.mark.parametrize("password", [b"", b"ab\0cd"])
def test_obfuscate_rejects_unstorable_passwords(password: bytes) -> None:
    with pytest.raises(ValueError, match="VNC password"):
        obfuscate_vnc_password(password)


def test_read_missing_file_names_it(tmp_path: Path) -> None:
    target = tmp_path / "nope"
    with pytest.raises(VncPasswordFileError, match="no such file") as caught:
        read_vnc_password_file(target)
    assert str(target) in str(caught.value)
    assert caught.value.path == target
    assert isinstance(caught.value, VizgateError)


def test_read_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(VncPasswordFileError, match="cannot read it") as caught:
        read_vnc_password_file(tmp_path)
    assert str(tmp_path) in str(caught.value)


@pytest.mark.parametrize("content", [b"", b"secret\n", b"x" * 9, b"y" * 17, b"z" * 4000])
def test_read_wrong_size_names_the_file_not_the_contents(tmp_path: Path, content: bytes) -> None:
    target = tmp_path / "passwd"
    target.write_bytes(content)
    with pytest.raises(VncPasswordFileError, match="8 or 16 bytes expected") as caught:
        read_vnc_password_file(target)
    message = str(caught.value)
    assert str(target) in message
    assert "secret" not in message
    assert "xxxx" not in message
