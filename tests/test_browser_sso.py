"""Single sign-on in a real browser: Chromium behind what an authenticating proxy adds to every
request (the user's name and groups), a real ``vizgate serve``, real TigerVNC started by the
seed's ``desktop_session.py``. No login page: the user lands on the catalogue, launches the
desktop and sees it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway import run_python, start_gateway
from support import VncHome, free_displays, kill_pid_tree, pids_on_display, require_binaries
from test_browser import (
    DESKTOP,
    EXAMPLES,
    PROBLEMS,
    Desktop,
    assert_no_script_problems,
    browser,
    connected,
    launch,
    paint,
    playwright_api,
    screenshot,
    status,
    wait_for_colour,
)

pytestmark = [pytest.mark.browser, pytest.mark.integration]

__all__ = ["browser"]  # the module's fixture, used here

GATED = "Rendering"
GROUP = "renderers"


@pytest.fixture
def sso_desktop(vnc_home: VncHome, tmp_path: Path) -> Iterator[Desktop]:
    require_binaries("vncserver", "Xvnc", "xsetroot")
    display_base = free_displays(1, start=460)
    config = tmp_path / "config" / "external_services.json"
    config.parent.mkdir()
    desktop_type = {
        "script": str(EXAMPLES / "desktop_session.py"),
        "count": 1,
        "options": {
            "sizes": ["1024x768"],
            "display_base": display_base,
            "vnc_password_file": "~/.vnc/passwd",
        },
    }
    gated_options = {"sizes": ["1024x768"], "display_base": display_base, "group": GROUP}
    gated_type = {**desktop_type, "options": gated_options}
    config.write_text(json.dumps({DESKTOP: desktop_type, GATED: gated_type}))
    run = tmp_path / "run"
    (run / "data").mkdir(parents=True)
    # The group exists in vizgate: membership of it follows the proxy's header.
    run_python("-m", "vizgate", "group", "add", GROUP, "--data-dir", str(run / "data"))
    gateway = start_gateway(
        run,
        config,
        "--remote-user-header", "X-Remote-User",
        "--remote-groups-header", "X-Remote-Groups",
        "--stop-sessions-on-exit", "--ping-interval", "0", "--linger", "1",
    )  # fmt: skip
    try:
        yield Desktop(gateway, display_base, vnc_home.path)
    finally:
        gateway.stop()
        for pid in pids_on_display(display_base):
            kill_pid_tree(pid)


def test_a_user_signed_in_by_the_proxy_launches_and_sees_the_desktop(
    browser: Any, sso_desktop: Desktop
) -> None:
    gateway = sso_desktop.gateway
    url = f"http://127.0.0.1:{gateway.port}/"
    context = browser.new_context(
        viewport={"width": 1280, "height": 860},
        # What the proxy adds to every request, the viewer's WebSocket included.
        extra_http_headers={"X-Remote-User": "dana", "X-Remote-Groups": f"staff,{GROUP}"},
    )
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    PROBLEMS[page] = problems
    page.goto(url)
    # No login page: the proxy's user is signed in, and in the group the header names.
    assert page.url == url
    playwright_api.expect(page.locator(".who")).to_have_text("dana")
    cards = page.locator("section.card h2").all_inner_texts()
    assert cards == [DESKTOP, GATED]
    screenshot(page, "sso-catalogue")

    session_id = launch(page, DESKTOP, "1024x768")
    connected(page)
    [session] = status(gateway)["sessions"]
    assert (session["id"], session["user"]) == (session_id, "dana")
    paint(sso_desktop, sso_desktop.display_of(0), "#00a000")
    wait_for_colour(page, (0, 0xA0, 0))
    assert_no_script_problems(page)
    context.close()
