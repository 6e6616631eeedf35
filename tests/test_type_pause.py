"""Pausing one session type alone (:class:`vizgate.pause.TypePauses`): its licence server or
its nodes are down while the other types go on. The file, the broker's refusal, the commands,
and a real gateway paused from the command line and resumed from its Status page."""

from __future__ import annotations

import html
import logging
import multiprocessing
import re
from pathlib import Path
from typing import Any

import pytest

from broker_fixtures import MakeBroker
from gateway import start_gateway, write_config
from gateway import vizgate_command as vizgate
from portal_client import Account, create_accounts, logged_in
from vizgate.exceptions import ReservationError
from vizgate.pause import DEFAULT_REASON, TypePauses


def test_types_are_paused_and_resumed_one_by_one(tmp_path: Path) -> None:
    pauses = TypePauses(tmp_path / "paused-types.json")
    assert pauses.reasons() == {}
    assert pauses.pause("Fluent 3D", " licence\n server  down ") == "licence server down"
    assert pauses.pause("Desktop <GPU>", "") == DEFAULT_REASON
    assert pauses.reason("Fluent 3D") == "licence server down"
    assert pauses.reason("Other") is None
    assert (tmp_path / "paused-types.json").stat().st_mode & 0o777 == 0o600
    # Another process (vizgate pause --type) changes it: seen at the next question.
    other = TypePauses(tmp_path / "paused-types.json")
    assert other.resume("Fluent 3D") is True
    assert other.resume("Fluent 3D") is False
    assert pauses.reasons() == {"Desktop <GPU>": DEFAULT_REASON}
    assert pauses.resume("Desktop <GPU>") is True
    # Nothing paused: no file.
    assert not (tmp_path / "paused-types.json").exists()
    assert pauses.reasons() == {}


def test_a_file_that_is_not_valid_pauses_nothing_and_is_written_anew(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "paused-types.json"
    pauses = TypePauses(path)
    for text in ("{not json", '["Desktop"]', '{"Desktop": 3}'):
        path.write_text(text)
        with caplog.at_level(logging.ERROR, logger="vizgate.pause"):
            assert pauses.reasons() == {}
        assert f"cannot read {path}, no type is paused" in caplog.text
        caplog.clear()
    # Said once, not at every question.
    with caplog.at_level(logging.ERROR, logger="vizgate.pause"):
        assert pauses.reason("Desktop") is None
    assert caplog.text == ""
    assert pauses.pause("Desktop", "nodes down") == "nodes down"
    assert TypePauses(path).reasons() == {"Desktop": "nodes down"}


def _pause_many(path: str, prefix: str, go: Any) -> None:
    pauses = TypePauses(Path(path))
    go.wait(30)
    for number in range(WRITES):
        pauses.pause(f"{prefix}{number}", "maintenance")


WRITES = 300


def test_two_writers_at_once_keep_both_changes(tmp_path: Path) -> None:
    path = tmp_path / "paused-types.json"
    context = multiprocessing.get_context("spawn")
    go = context.Event()
    writers = [context.Process(target=_pause_many, args=(str(path), prefix, go)) for prefix in "ab"]
    for writer in writers:
        writer.start()
    go.set()
    for writer in writers:
        writer.join(timeout=120)
        assert writer.exitcode == 0
    names = set(TypePauses(path).reasons())
    assert names == {f"{prefix}{n}" for prefix in "ab" for n in range(WRITES)}


async def test_a_paused_type_refuses_users_not_administrators_and_not_other_types(
    make_broker: MakeBroker, tmp_path: Path
) -> None:
    pauses = TypePauses(tmp_path / "paused-types.json")
    broker = await make_broker({"Desktop": {}, "Render": {}})
    broker.paused_types = pauses.reasons
    pauses.pause("Render", "licence server down")
    with pytest.raises(ReservationError) as caught:
        await broker.reserve("Render", user="alice")
    assert str(caught.value) == "new Render sessions are paused: licence server down"
    assert caught.value.reason == "paused"
    await broker.reserve("Desktop", user="alice")
    await broker.reserve("Render", user="root", unlimited=True)
    [render] = [info for info in broker.services() if info.name == "Render"]
    assert render.paused == "licence server down"
    pauses.resume("Render")
    await broker.reserve("Render", user="alice")


def test_the_commands_pause_list_and_resume_a_type(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    # No gateway has served this data directory: the name cannot be checked, and it says so.
    assert vizgate(data, "pause", "--type", "Render", "licence down") == (
        0,
        "new Render sessions are paused: licence down\n",
        f"vizgate pause: the name is not checked: no gateway has served {data} yet "
        "(--config FILE checks it against a catalog)\n",
    )
    assert vizgate(data, "pause", "all nodes rebooting")[0] == 0
    assert vizgate(data, "pause", "--list")[1] == (
        "new sessions are paused: all nodes rebooting\n"
        "new Render sessions are paused: licence down\n"
    )
    # Resuming everything says what stays paused alone.
    code, said, _ = vizgate(data, "resume")
    assert code == 0
    assert said == (
        "new sessions are accepted again\nstill paused alone: Render (vizgate resume --type NAME)\n"
    )
    assert (
        vizgate(data, "resume", "--type", "Render")[1] == "new Render sessions are accepted again\n"
    )
    assert vizgate(data, "resume", "--type", "Render")[1] == "new Render sessions were not paused\n"
    assert vizgate(data, "pause", "--list")[1] == "new sessions: open\n"
    code, _, error = vizgate(data, "pause", "--type", " ")
    assert (code, error) == (2, "vizgate pause: --type needs a session type's name\n")
    code, _, error = vizgate(data, "pause", "--list", "--type", "Render")
    assert (code, error) == (2, "vizgate pause: --list takes no REASON, --type or --node\n")


def test_with_the_catalog_the_command_refuses_a_type_it_does_not_have(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    config = write_config(tmp_path / "config", {"Desktop": {}, "Render": {}})
    code, _, error = vizgate(data, "pause", "--type", "Rendr", "--config", str(config))
    assert code == 2
    assert error == (
        f"vizgate pause: {config} has no session type 'Rendr'; its types: 'Desktop', 'Render'\n"
    )
    assert TypePauses.in_data_dir(data).reasons() == {}
    assert vizgate(data, "pause", "--type", "Render", "--config", str(config))[0] == 0
    assert TypePauses.in_data_dir(data).reasons() == {"Render": DEFAULT_REASON}
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    code, _, error = vizgate(data, "pause", "--type", "Render", "--config", str(broken))
    assert code == 2
    assert error.startswith(f"vizgate pause: the catalog {broken} has problems: ")


@pytest.mark.integration
def test_a_type_paused_from_the_command_line_and_resumed_from_the_status_page(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path / "config", {"Desktop": {"count": 2}, "Render": {"count": 2}})
    data = tmp_path / "run" / "data"
    alice = Account("alice", "alice-waits-for-the-licence-3")
    root = Account("root", "root-mends-the-licence-server-9", admin=True)
    create_accounts(data, [alice, root])
    gateway = start_gateway(tmp_path / "run", config)
    try:
        # The gateway said what it serves: a name that is none of its types is refused.
        assert vizgate(data, "pause", "--type", "Rendr") == (
            2,
            "",
            f"vizgate pause: the gateway of {data.resolve()} serves no session type 'Rendr' "
            f"(its catalog: {config.resolve()}); its session types: 'Desktop', 'Render'\n",
        )
        assert vizgate(data, "pause", "--type", "Render", "licence server down") == (
            0,
            "new Render sessions are paused: licence server down\n",
            "",
        )
        refused = gateway.request("/v1/reserve/Render")
        assert refused.status == 503
        assert refused.json()["reason"] == "paused"
        assert refused.json()["error"] == "new Render sessions are paused: licence server down"
        assert gateway.request("/v1/reserve/Desktop").status == 200
        services = {s["name"]: s for s in gateway.request("/v1/status").json()["services"]}
        assert services["Render"]["paused"] == "licence server down"
        assert services["Desktop"]["paused"] is None
        view = gateway.request("/v1/status_view").text
        assert '<td class="paused">paused: licence server down</td>' in view
        assert '<td class="paused">open</td>' in view
        # The catalogue: the Render card says why and offers no launch; Desktop launches.
        browser = logged_in(gateway, alice)
        page = browser.get("/")
        cards = dict(re.findall(r'data-service="([^"]+)">(.*?)</section>', page.text, re.DOTALL))
        assert "New sessions are paused: licence server down." in html.unescape(cards["Render"])
        assert re.search(r'class="primary" disabled>Launch', cards["Render"])
        assert "paused" not in cards["Desktop"]
        assert "disabled" not in cards["Desktop"]
        token = page.csrf_token()
        assert (
            browser.post("/launch", {"service": "Render", "csrfmiddlewaretoken": token}).status
            == 400
        )
        # Users may not resume.
        resume = {"type": "Render", "csrfmiddlewaretoken": token}
        assert browser.post("/status/resume", resume).status == 403
        # The administrator sees it on the Status page and resumes it there.
        admin = logged_in(gateway, root)
        status_page = admin.get("/status/")
        row = re.search(r'<tr data-type="Render">.*?</tr>', status_page.text, re.DOTALL)
        assert row is not None
        assert "Paused: licence server down" in html.unescape(row.group(0))
        token = status_page.csrf_token()
        unknown = admin.post("/status/pause", {"type": "Nope", "csrfmiddlewaretoken": token})
        assert unknown.status == 400
        done = admin.post("/status/resume", {"type": "Render", "csrfmiddlewaretoken": token})
        assert done.status == 302
        assert gateway.request("/v1/reserve/Render").status == 200
        assert "root resumed new Render sessions" in gateway.output()
        # And pauses it again from there, with a reason.
        status_page = admin.get("/status/")
        admin.post(
            "/status/pause",
            {
                "type": "Desktop",
                "reason": "node swap",
                "csrfmiddlewaretoken": status_page.csrf_token(),
            },
        )
        assert TypePauses.in_data_dir(data).reasons() == {"Desktop": "node swap"}
        assert gateway.request("/v1/reserve/Desktop").status == 503
    finally:
        gateway.stop()
