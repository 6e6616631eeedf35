"""The seed's unmodified desktop_session.py with real TigerVNC, driven through the broker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from support import (
    VncHome,
    await_until,
    free_displays,
    pids_on_display,
    port_accepts,
    read_rfb_banner,
    require_binaries,
    scaled,
)
from vizgate.broker import Broker
from vizgate.catalog import load_catalog
from vizgate.exceptions import ReservationError
from vizgate.lifecycle import Timeouts

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SERVICE = "Local Software Session"


def write_config(folder: Path, display_base: int) -> Path:
    """The seed's "Local Software Session" pointing at the unmodified example script."""
    config = folder / "external_services.json"
    config.write_text(
        json.dumps(
            {
                SERVICE: {
                    "script": str(EXAMPLES / "desktop_session.py"),
                    "count": 2,
                    "options": {"sizes": ["1024x768", "1600x1200"], "display_base": display_base},
                }
            }
        )
    )
    return config


async def test_seed_desktop_session_through_the_broker(vnc_home: VncHome, tmp_path: Path) -> None:
    require_binaries("vncserver", "Xvnc")
    base = free_displays(2)
    broker = Broker(
        load_catalog(write_config(tmp_path, base)),
        timeouts=Timeouts(linger=0.5, start=scaled(30), ready=scaled(15), stop=scaled(30)),
    )
    await broker.open()
    try:
        first = await broker.reserve(SERVICE, user="alice", options={"size": "1024x768"})
        second = await broker.reserve(SERVICE, user="bob", options={"size": "1600x1200"})
        assert (first.index, second.index) == (0, 1)
        with pytest.raises(ReservationError, match=r"\(2 of 2 in use\)") as refused:
            await broker.reserve(SERVICE, user="carol")
        assert str(refused.value) == f"no free instance of '{SERVICE}' (2 of 2 in use)"

        attachment = await broker.attach(first.token)
        assert (attachment.host, attachment.port) == ("localhost", 5900 + base)
        assert read_rfb_banner("127.0.0.1", 5900 + base, timeout=5) == b"RFB 003.008\n"
        assert pids_on_display(base), f"no process runs display :{base}"
        [running] = [s for s in broker.sessions() if s.id == first.session_id]
        assert running.state == "running"
        assert running.size == "1024x768"

        broker.detach(attachment)
        await await_until(
            lambda: not any(s.id == first.session_id for s in broker.sessions()),
            timeout=scaled(20),
            message="the session did not end after the linger",
        )
        [ended] = [s for s in broker.history() if s.id == first.session_id]
        assert ended.end_reason == "disconnected"
        await await_until(
            lambda: not pids_on_display(base) and not port_accepts("127.0.0.1", 5900 + base),
            timeout=scaled(10),
            message=f"display :{base} still has processes after stop()",
        )
        # The freed index goes to the next reservation; the second display was never started.
        again = await broker.reserve(SERVICE, user="carol")
        assert again.index == 0
        assert not pids_on_display(base + 1)
    finally:
        await broker.close()
        for display in (base, base + 1):
            assert not pids_on_display(display), f"display :{display} left running"
