"""Single sign-on in a real browser: Chromium behind what an authenticating proxy adds to every
request (the user's name and groups), a real ``vizgate serve``, real TigerVNC started by the
seed's ``desktop_session.py``. No login page: the user lands on the catalogue, launches the
desktop and sees it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway import run_python, seed_desktop_type, write_catalog
from support import VncHome, free_displays, require_binaries
from test_browser import (
    DESKTOP,
    PROBLEMS,
    Desktop,
    assert_no_script_problems,
    browser,
    connected,
    desktop_gateway,
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
    config = write_catalog(
        tmp_path / "config",
        {
            DESKTOP: seed_desktop_type(display_base, ["1024x768"]),
            GATED: seed_desktop_type(display_base, ["1024x768"], group=GROUP),
        },
    )
    run = tmp_path / "run"
    (run / "data").mkdir(parents=True)
    # The group exists in vizgate: membership of it follows the proxy's header.
    run_python("-m", "vizgate", "group", "add", GROUP, "--data-dir", str(run / "data"))
    with desktop_gateway(
        run, config, vnc_home, display_base, 1,
        "--remote-user-header", "X-Remote-User",
        "--remote-groups-header", "X-Remote-Groups",
        "--stop-sessions-on-exit", "--ping-interval", "0", "--linger", "1",
    ) as desktop:  # fmt: skip
        yield desktop


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
