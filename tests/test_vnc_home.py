"""vizgate.vnc_home: the files that let the seed's ``vncserver`` command run unattended."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest

from support import require_binaries
from vizgate.vnc_home import prepare_vnc_home

# RFC 6143 §7.2.2 / vncpasswd: the password file is the password, NUL-padded to 8 bytes,
# DES-encrypted with this fixed key (bits of each byte mirrored, as RFB does).
VNC_PASSWD_KEY = bytes([23, 82, 107, 6, 35, 78, 88, 7])


def decode_passwd_file(data: bytes) -> bytes:
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
    from cryptography.hazmat.primitives.ciphers import Cipher, modes

    key = bytes(int(f"{b:08b}"[::-1], 2) for b in VNC_PASSWD_KEY)
    decryptor = Cipher(TripleDES(key * 3), modes.ECB()).decryptor()  # noqa: S305 (the format)
    return (decryptor.update(data) + decryptor.finalize()).rstrip(b"\0")


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(autouse=True)
def _vncpasswd() -> None:
    require_binaries("vncpasswd")


def test_writes_the_three_files_with_their_modes(tmp_path: Path) -> None:
    home = tmp_path / "home"

    password = prepare_vnc_home(home, b"s3cret!")

    assert password == b"s3cret!"
    vnc = home / ".vnc"
    assert mode_of(vnc) == 0o700
    assert mode_of(vnc / "passwd") == 0o600
    assert mode_of(vnc / "xstartup") == 0o755
    assert mode_of(vnc / "tigervnc.conf") == 0o644
    assert sorted(p.name for p in vnc.iterdir()) == ["passwd", "tigervnc.conf", "xstartup"]


def test_passwd_holds_the_password_in_vncpasswd_format(tmp_path: Path) -> None:
    prepare_vnc_home(tmp_path, b"abc123")

    data = (tmp_path / ".vnc" / "passwd").read_bytes()

    assert len(data) == 8
    assert b"abc123" not in data
    assert decode_passwd_file(data) == b"abc123"


def test_generates_a_random_password_when_none_is_given(tmp_path: Path) -> None:
    first = prepare_vnc_home(tmp_path / "a")
    second = prepare_vnc_home(tmp_path / "b")

    assert len(first) == 8
    assert first.isalnum()
    assert first != second
    assert decode_passwd_file((tmp_path / "a" / ".vnc" / "passwd").read_bytes()) == first


def test_xstartup_runs_one_terminal_as_the_session(tmp_path: Path) -> None:
    prepare_vnc_home(tmp_path)

    lines = (tmp_path / ".vnc" / "xstartup").read_text().splitlines()

    assert lines[0] == "#!/bin/sh"
    commands = [line for line in lines if line.strip() and not line.startswith("#")]
    # exec: the terminal is the session process, so nothing outlives it.
    assert commands[-1].startswith("exec xterm ")
    assert not any("Xsession" in line or line.rstrip().endswith("&") for line in commands)


def test_config_listens_on_loopback_only_and_names_the_xstartup(tmp_path: Path) -> None:
    home = tmp_path / "it's a home"

    prepare_vnc_home(home)

    config = (home / ".vnc" / "tigervnc.conf").read_text()
    assert '$localhost = "yes";' in config
    assert '$SecurityTypes = "VncAuth";' in config
    xstartup = str((home / ".vnc" / "xstartup").absolute()).replace("'", "\\'")
    assert f"$vncStartup = '{xstartup}';" in config


def test_config_is_valid_perl(tmp_path: Path) -> None:
    require_binaries("perl")
    home = tmp_path / "quote ' and \\ in the path"
    prepare_vnc_home(home)
    script = (
        "package config; our ($localhost, $SecurityTypes, $vncStartup);"
        " do $ARGV[0] or die($@ || $!); print $vncStartup"
    )

    result = subprocess.run(
        ["perl", "-e", script, str(home / ".vnc" / "tigervnc.conf")],
        capture_output=True,
        check=True,
    )

    assert result.stdout.decode() == str((home / ".vnc" / "xstartup").absolute())


def test_refuses_to_overwrite_an_existing_passwd(tmp_path: Path) -> None:
    prepare_vnc_home(tmp_path, b"first")
    before = {p.name: p.read_bytes() for p in (tmp_path / ".vnc").iterdir()}

    with pytest.raises(FileExistsError, match="passwd"):
        prepare_vnc_home(tmp_path, b"second")

    after = {p.name: p.read_bytes() for p in (tmp_path / ".vnc").iterdir()}
    assert after == before


def test_refuses_to_replace_a_different_xstartup_and_writes_nothing(tmp_path: Path) -> None:
    vnc = tmp_path / ".vnc"
    vnc.mkdir()
    (vnc / "xstartup").write_text("#!/bin/sh\nexec my-desktop\n")

    with pytest.raises(FileExistsError, match="xstartup"):
        prepare_vnc_home(tmp_path)

    assert sorted(p.name for p in vnc.iterdir()) == ["xstartup"]
    assert (vnc / "xstartup").read_text() == "#!/bin/sh\nexec my-desktop\n"


def test_overwrite_replaces_the_files(tmp_path: Path) -> None:
    prepare_vnc_home(tmp_path, b"first")
    (tmp_path / ".vnc" / "xstartup").write_text("#!/bin/sh\nexec my-desktop\n")

    password = prepare_vnc_home(tmp_path, b"second", overwrite=True)

    assert password == b"second"
    passwd = tmp_path / ".vnc" / "passwd"
    assert decode_passwd_file(passwd.read_bytes()) == b"second"
    assert mode_of(passwd) == 0o600
    assert "exec xterm" in (tmp_path / ".vnc" / "xstartup").read_text()


def test_an_existing_vnc_folder_is_made_private(tmp_path: Path) -> None:
    vnc = tmp_path / ".vnc"
    vnc.mkdir(mode=0o755)
    vnc.chmod(0o755)

    prepare_vnc_home(tmp_path)

    assert mode_of(vnc) == 0o700


@pytest.mark.parametrize(
    ("password", "problem"),
    [
        (b"", "empty"),
        (b"123456789", "at most 8"),
        (b"ab\ncd", "newline"),
        (b"ab\0cd", "NUL"),
    ],
)
def test_rejects_unusable_passwords(tmp_path: Path, password: bytes, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        prepare_vnc_home(tmp_path, password)

    assert not (tmp_path / ".vnc").exists()
