"""A session whose script reports when it will end (``set_end_time``, as the Slurm launcher does
with a job's time limit): in a real browser, the viewer warns, and the gateway ends the session
itself before the end comes, with the reason ``time_limit``. Real TigerVNC started by the seed's
``desktop_session.py`` (wrapped by ``tests/data/time_limited_desktop.py``)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway import TIME_LIMITED_DESKTOP, seed_desktop_type, write_catalog
from portal_client import create_accounts, logged_in
from support import (
    VncHome,
    free_displays,
    pids_on_display,
    require_binaries,
    scaled,
    wait_until,
)
from test_browser import (
    Desktop,
    assert_no_script_problems,
    browser,
    connected,
    desktop_gateway,
    ended,
    launch,
    log_in,
    screenshot,
    warned,
)
from test_portal import ALICE, GROUP, ROOT
from vizgate.script_calls import END_TIME_MARGIN

pytestmark = [pytest.mark.browser, pytest.mark.integration]

__all__ = ["browser"]  # the module's fixture, used here

LIMITED = "Time-limited Desktop"
#: The desktop's time: the gateway ends it END_TIME_MARGIN before, so after a few seconds.
TIME_LIMIT = END_TIME_MARGIN + 8


@pytest.fixture
def limited(vnc_home: VncHome, tmp_path: Path) -> Iterator[Desktop]:
    require_binaries("vncserver", "Xvnc")
    display_base = free_displays(1, start=480)
    limited_type = seed_desktop_type(
        display_base, ["800x600"], script=TIME_LIMITED_DESKTOP, time_limit_seconds=TIME_LIMIT
    )
    config = write_catalog(tmp_path / "config", {LIMITED: limited_type})
    run = tmp_path / "run"
    create_accounts(run / "data", [ALICE, ROOT], groups=[GROUP])
    with desktop_gateway(
        run, config, vnc_home, display_base, 1, "--stop-sessions-on-exit", "--ping-interval", "0"
    ) as desktop:
        yield desktop


def test_the_viewer_warns_and_the_gateway_ends_the_session_before_its_time_limit(
    browser: Any, limited: Desktop
) -> None:
    gateway = limited.gateway
    page = log_in(browser, gateway.url, ALICE)
    session_id = launch(page, LIMITED, "800x600")
    connected(page)
    assert 0 < warned(page, "its time on the cluster is up") <= TIME_LIMIT - END_TIME_MARGIN
    screenshot(page, "viewer-time-limit")
    # The administrator's page of the session says when and why it ends.
    detail = logged_in(gateway, ROOT).get(f"/status/{session_id}/")
    assert re.search(r"<th>Ends \(UTC\)</th><td>[0-9-]+ [0-9:]+ \(time_limit\)</td>", detail.text)

    record = wait_until(
        lambda: ended(gateway, session_id),
        TIME_LIMIT + scaled(15),
        message="the session did not end at its time limit",
    )
    assert record["end_reason"] == "time_limit"
    assert not pids_on_display(limited.display_base)
    assert_no_script_problems(page)
