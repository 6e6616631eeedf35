"""Prepare a home folder so that TigerVNC's ``vncserver`` starts a session unattended.

The seed's ``desktop_session.py`` runs ``vncserver -depth 24 -geometry WxH :N`` with no
terminal. Without a password file that command prompts for one and fails; without a session
script of its own it starts the system's X session (an error box when no desktop is
installed). :func:`prepare_vnc_home` writes the three files that make the unmodified command
work, in ``HOME/.vnc`` (mode 0700), for TigerVNC 1.12's wrapper (``tigervncserver``, Perl):

``passwd`` (0600)
    The VNC password in the obfuscated format of ``vncpasswd -f`` (DES with a fixed key:
    obscured, not protected, hence the mode). Xvnc offers VNC authentication
    (RFC 6143 §7.2.2) with it; only its first 8 bytes count.

``xstartup`` (0755)
    The session the wrapper runs once Xvnc is up: ``exec xterm``, so the session process
    *is* the terminal: when the terminal closes the session ends (and the wrapper,
    with its default ``-autokill``, stops Xvnc); when ``vncserver -kill`` stops Xvnc the
    terminal loses its display and exits, and its shell gets SIGHUP. Nothing else is started
    (no ``Xsession``, ssh-agent, D-Bus or window manager), so nothing is left behind — the
    default session's helpers were seen to outlive ``vncserver -kill``.

``tigervnc.conf`` (0644)
    Perl settings read by the wrapper after ``/etc/tigervnc/vncserver-config-defaults``:
    ``$localhost = "yes"`` makes Xvnc accept connections on the loopback interfaces only
    (127.0.0.1 and ::1; vizgate runs on the same machine and tunnels the port), with
    ``$SecurityTypes = "VncAuth"``; ``$vncStartup`` names the ``xstartup`` above explicitly,
    so a ``Xtigervnc-session`` file that may exist in the folder does not take precedence.
    ``/etc/tigervnc/vncserver-config-mandatory`` still overrides it, as its name says.

The wrapper also writes ``HOME/.Xauthority`` and ``HOME/.vnc/HOST:N.log`` / ``.pid``, so the
home must stay writable.
"""

from __future__ import annotations

import os
import secrets
import shutil
import string
import subprocess
import tempfile
from pathlib import Path

__all__ = ["VNC_PASSWORD_MAX_BYTES", "prepare_vnc_home"]

#: VNC authentication keys DES with the first 8 bytes of the password (RFC 6143 §7.2.2).
VNC_PASSWORD_MAX_BYTES = 8

_PASSWORD_ALPHABET = string.ascii_letters + string.digits

_XSTARTUP = """\
#!/bin/sh
# Written by vizgate (vizgate.vnc_home). The VNC session is this one terminal: exec makes
# xterm the session process, so the session lasts as long as the terminal, and nothing
# else is started that could outlive `vncserver -kill`.
unset SESSION_MANAGER DBUS_SESSION_BUS_ADDRESS
exec xterm -geometry 100x30+10+10 -title "${VNCDESKTOP:-vizgate}"
"""

_CONFIG = """\
# Written by vizgate (vizgate.vnc_home); read by tigervncserver (Perl syntax).
# Accept VNC connections on the loopback interfaces only; vizgate tunnels them.
$localhost = "yes";
$SecurityTypes = "VncAuth";
# The session to run: the xstartup beside this file.
$vncStartup = {startup};
1;
"""


def _perl_single_quoted(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"


def _check_password(password: bytes) -> None:
    if not password:
        raise ValueError("the VNC password is empty")
    if len(password) > VNC_PASSWORD_MAX_BYTES:
        # vncpasswd would silently keep the first 8 bytes; a caller holding the long
        # password would then believe it is something it is not.
        raise ValueError(
            f"the VNC password is {len(password)} bytes long; VNC authentication uses "
            f"at most {VNC_PASSWORD_MAX_BYTES}"
        )
    if any(byte in password for byte in b"\n\r\0"):
        raise ValueError("the VNC password must not contain a newline, CR or NUL byte")


def _obfuscated(password: bytes) -> bytes:
    vncpasswd = shutil.which("vncpasswd") or "/usr/bin/vncpasswd"
    # The password goes through stdin: an argument would show in ps.
    result = subprocess.run(
        [vncpasswd, "-f"],
        input=password + b"\n",
        capture_output=True,
        check=False,
        timeout=30,
    )
    if result.returncode != 0 or len(result.stdout) != VNC_PASSWORD_MAX_BYTES:
        detail = result.stderr.decode(errors="replace").strip() or f"exit {result.returncode}"
        raise RuntimeError(f"{vncpasswd} -f failed: {detail}")
    return result.stdout


def _write(path: Path, data: bytes, mode: int, *, replace: bool) -> None:
    """Write ``data`` to ``path`` atomically with ``mode``, the mode set before any data."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as tmp_file:
            tmp_file.write(data)
            tmp_file.flush()
            os.fsync(tmp_file.fileno())
        if replace:
            tmp.replace(path)
        else:
            # link() fails if the name appeared meanwhile, where rename() would clobber it.
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def prepare_vnc_home(
    home: Path, password: bytes | None = None, *, overwrite: bool = False
) -> bytes:
    """Write ``home/.vnc/{passwd,xstartup,tigervnc.conf}`` for unattended ``vncserver``.

    See the module documentation for what each file does. ``home`` is created if missing.

    Args:
        home: the home folder of the account that runs ``vncserver`` (its ``$HOME``).
        password: the VNC password, 1 to 8 bytes without newline, CR or NUL; a random one
            of 8 letters and digits when None.
        overwrite: replace an existing ``passwd``, and ``xstartup`` or ``tigervnc.conf``
            that differ from vizgate's. Without it nothing is written when any of them
            is in the way.

    Returns:
        The VNC password written to ``passwd``.

    Raises:
        ValueError: the password is empty, too long or contains a line break or NUL.
        FileExistsError: ``overwrite`` is False and a file is in the way (the message names
            it); nothing was written.
        RuntimeError: ``vncpasswd -f`` failed.
        OSError: a file could not be written.
    """
    if password is None:
        password = "".join(
            secrets.choice(_PASSWORD_ALPHABET) for _ in range(VNC_PASSWORD_MAX_BYTES)
        ).encode()
    else:
        password = bytes(password)
    _check_password(password)

    vnc_dir = Path(home) / ".vnc"
    passwd = vnc_dir / "passwd"
    xstartup = vnc_dir / "xstartup"
    config = vnc_dir / "tigervnc.conf"
    xstartup_text = _XSTARTUP.encode()
    config_text = _CONFIG.format(startup=_perl_single_quoted(str(xstartup.absolute()))).encode()

    if not overwrite:
        in_the_way = [passwd] if passwd.exists() or passwd.is_symlink() else []
        for path, text in ((xstartup, xstartup_text), (config, config_text)):
            if path.is_symlink() or (path.exists() and path.read_bytes() != text):
                in_the_way.append(path)
        if in_the_way:
            raise FileExistsError(
                "not overwriting " + ", ".join(str(p) for p in in_the_way) + " (overwrite=False)"
            )

    obfuscated = _obfuscated(password)
    Path(home).mkdir(mode=0o700, parents=True, exist_ok=True)
    vnc_dir.mkdir(mode=0o700, exist_ok=True)
    if vnc_dir.is_symlink() or not vnc_dir.is_dir():
        raise NotADirectoryError(f"{vnc_dir} is not a directory")
    vnc_dir.chmod(0o700)
    _write(passwd, obfuscated, 0o600, replace=overwrite)
    _write(xstartup, xstartup_text, 0o755, replace=True)
    _write(config, config_text, 0o644, replace=True)
    return password
