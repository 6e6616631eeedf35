"""The notice to every user (:mod:`vizgate.notice`): the file, the command, and a real gateway
whose pages, Status page and viewers' status carry it (the viewer showing it over a desktop is
in ``test_browser.py``); and the commands that write such files refusing a data directory of
another account."""

from __future__ import annotations

import html
import os
import pwd
from pathlib import Path

import pytest

from gateway import launch_gateway, run_python, start_gateway, write_config
from portal_client import Account, Browser, create_accounts, logged_in
from vizgate.message_file import MAX_LENGTH
from vizgate.notice import NoticeFile


def test_the_notice_file_holds_one_clean_line_and_an_empty_one_is_refused(
    tmp_path: Path,
) -> None:
    notice = NoticeFile.in_data_dir(tmp_path)
    assert notice.text() is None
    assert notice.post(" Maintenance\non Friday\x07 ") == "Maintenance on Friday"
    assert notice.text() == "Maintenance on Friday"
    assert len(notice.post("y" * 1000)) == MAX_LENGTH
    with pytest.raises(ValueError, match="the notice is empty"):
        notice.post(" \n\t")
    assert notice.withdraw() is True
    assert notice.text() is None
    assert notice.withdraw() is False


def vizgate_notice(data: Path, *args: str) -> tuple[int, str]:
    result = run_python("-m", "vizgate", "notice", *args, "--data-dir", str(data), check=False)
    return result.returncode, result.stdout + result.stderr


@pytest.mark.integration
def test_a_notice_posted_from_the_command_line_shows_everywhere_and_the_status_page_changes_it(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path / "config", {"Desktop": {"options": {"behaviour": "starts"}}})
    data = tmp_path / "run" / "data"
    alice = Account("alice", "alice-reads-the-notice-3")
    root = Account("root", "root-writes-the-notice-88", admin=True)
    create_accounts(data, [alice, root])
    gateway = start_gateway(tmp_path / "run", config)
    try:
        assert vizgate_notice(data) == (0, "no notice\n")
        assert vizgate_notice(data, "Maintenance on Friday from 18:00") == (
            0,
            "every user now sees: Maintenance on Friday from 18:00\n",
        )
        assert vizgate_notice(data) == (0, "Maintenance on Friday from 18:00\n")
        assert gateway.request("/v1/status").json()["notice"] == "Maintenance on Friday from 18:00"
        # Every page, the login page included, and the viewer's status.
        login = Browser(gateway.port).get("/login/")
        assert "Maintenance on Friday from 18:00" in login.text
        browser = logged_in(gateway, alice)
        catalogue = browser.get("/")
        assert 'class="site-notice"' in catalogue.text
        launched = browser.post(
            "/launch", {"service": "Desktop", "csrfmiddlewaretoken": catalogue.csrf_token()}
        )
        assert launched.status == 302, launched.text
        status = browser.get(launched.location + "status", {"Accept": "application/json"})
        assert status.json()["notice"] == "Maintenance on Friday from 18:00"
        # Users may not post one.
        refused = browser.post(
            "/status/notice",
            {"notice": "free pizza", "csrfmiddlewaretoken": catalogue.csrf_token()},
        )
        assert refused.status == 403
        # The Status page changes and withdraws it.
        admin = logged_in(gateway, root)
        page = admin.get("/status/")
        assert 'value="Maintenance on Friday from 18:00"' in page.text
        changed = admin.post(
            "/status/notice",
            {"notice": "Moved to <Saturday>", "csrfmiddlewaretoken": page.csrf_token()},
        )
        assert changed.status == 302
        shown = browser.get("/").text
        assert "Moved to &lt;Saturday&gt;" in shown, "the notice must be escaped"
        empty = admin.post(
            "/status/notice", {"notice": " ", "csrfmiddlewaretoken": page.csrf_token()}
        )
        assert empty.status == 400
        assert "withdraw it" in html.unescape(empty.text)
        withdrawn = admin.post(
            "/status/notice/withdraw", {"csrfmiddlewaretoken": page.csrf_token()}
        )
        assert withdrawn.status == 302
        assert 'class="site-notice"' not in browser.get("/").text
        assert (
            browser.get(launched.location + "status", {"Accept": "application/json"}).json()[
                "notice"
            ]
            is None
        )
        output = gateway.output()
        assert "root posted a notice to users: Moved to <Saturday>" in output
        assert "root withdrew the notice to users" in output
        assert vizgate_notice(data, "--withdraw") == (0, "there was no notice\n")
        code, said = vizgate_notice(data, "text", "--withdraw")
        assert code == 2
        assert "not both" in said
        assert vizgate_notice(data, "  ")[0] == 2
    finally:
        gateway.stop()


def test_an_unreadable_notice_is_no_notice_and_said_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A folder where the file should be: reading it fails as a file of another owner would.
    (tmp_path / "notice").mkdir()
    notice = NoticeFile.in_data_dir(tmp_path)
    assert notice.text() is None
    assert notice.text() is None
    assert caplog.text.count("cannot read") == 1


@pytest.mark.integration
def test_commands_refuse_a_data_directory_of_another_account(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("giving a folder to another account needs root")
    config = write_config(tmp_path / "config", {"Desktop": {}})
    data = tmp_path / "data"
    create_accounts(data, [Account("alice", "alice-owns-nothing-here-4")])
    nobody = pwd.getpwnam("nobody")
    os.chown(data, nobody.pw_uid, nobody.pw_gid)
    before = sorted(path.name for path in data.iterdir())
    said = "it belongs to nobody: run vizgate as that account (e.g. runuser -u nobody -- vizgate"
    for command in (["notice", "hello"], ["pause"], ["user", "list"], ["usage"]):
        result = run_python("-m", "vizgate", *command, "--data-dir", str(data), check=False)
        assert result.returncode == 1, (command, result.stdout)
        assert said in result.stderr, (command, result.stderr)
    gateway = launch_gateway(tmp_path / "run", config, "--data-dir", str(data))
    try:
        assert gateway.wait(60) == 1
        assert said in gateway.output()
    finally:
        gateway.stop()
    assert sorted(path.name for path in data.iterdir()) == before
