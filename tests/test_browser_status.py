"""The Status page in a real browser: pausing one session type from its row, and the page's
refresh leaving alone what an administrator is typing (Chromium, test-double sessions)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from playwright import sync_api as playwright_api

from gateway import start_gateway, write_config
from portal_client import create_accounts
from support import scaled
from test_browser import assert_no_script_problems, browser, log_in, screenshot
from test_portal import ROOT
from vizgate.pause import TypePauses

pytestmark = [pytest.mark.browser, pytest.mark.integration]

__all__ = ["browser"]  # test_browser's fixture, used here

#: The page refreshes every 4 s (refresh.js); a few cycles at most.
REFRESH_WAIT_MS = int(scaled(15) * 1000)


def test_a_type_is_paused_from_its_row_while_the_page_refreshes_around_the_typing(
    browser: Any, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "config", {"Desktop": {"count": 2}, "Render": {"count": 1}})
    data = tmp_path / "run" / "data"
    create_accounts(data, [ROOT])
    gateway = start_gateway(tmp_path / "run", config)
    try:
        page = log_in(browser, gateway.url, ROOT)
        page.goto(gateway.url + "status/")
        row = page.locator('tr[data-type="Render"]')
        reason = row.get_by_label("Reason for pausing Render")
        reason.click()
        reason.type("licence server down")
        # A session appears while the field has the focus: the page fetches itself again
        # (twice, so one fetch was handled whole) and leaves the table as it was.
        session_id = gateway.request("/v1/reserve/Desktop").json()["session_id"]
        for _ in range(2):
            with page.expect_response(
                lambda response: response.url == gateway.url + "status/",
                timeout=REFRESH_WAIT_MS,
            ):
                pass
        assert reason.input_value() == "licence server down"
        assert page.locator(f'tr[data-session="{session_id}"]').count() == 0
        row.get_by_role("button", name="Pause").click()
        page.wait_for_url(gateway.url + "status/")
        playwright_api.expect(row).to_contain_text("Paused: licence server down")
        # Away from the fields, the refresh brings the session in.
        playwright_api.expect(page.locator(f'tr[data-session="{session_id}"]')).to_be_visible()
        assert TypePauses.in_data_dir(data).reasons() == {"Render": "licence server down"}
        screenshot(page, "status-type-paused")
        row.get_by_role("button", name="Resume").click()
        page.wait_for_url(gateway.url + "status/")
        playwright_api.expect(row.get_by_role("button", name="Pause")).to_be_visible()
        assert TypePauses.in_data_dir(data).reasons() == {}
        assert_no_script_problems(page)
        page.context.close()
    finally:
        gateway.stop()
