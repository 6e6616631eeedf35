"""Shared fixtures. Nothing here is autouse: a test gets a fixture only by asking for it."""

from __future__ import annotations

from pathlib import Path

import pytest

from support import VncHome, require_binaries
from vizgate.vnc_home import prepare_vnc_home


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
