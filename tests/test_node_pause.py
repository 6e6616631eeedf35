"""Pausing one node of a pool (:class:`vizgate.pause.NodePauses`) for its maintenance: new
sessions go to the pool's other nodes, the node's running sessions go on. The scripts' ``node()``
hook, the registry's choice, the broker, the commands, and a real gateway paused from the
command line and resumed from its Status page."""

from __future__ import annotations

import html
import logging
import re
from pathlib import Path
from typing import Any, cast

import pytest

from broker_fixtures import MakeBroker
from gateway import start_gateway, write_config
from gateway import vizgate_command as vizgate
from portal_client import Account, create_accounts, logged_in
from vizgate.exceptions import ReservationError
from vizgate.pause import NodePauses, TypePauses
from vizgate.registry import SessionRegistry
from vizgate.script_hooks import script_node
from vizgate.scripts import RemoteServiceScript
from vizgate.served_catalog import ServedCatalog

# -- the parts -----------------------------------------------------------------------------------


class _Script(RemoteServiceScript):
    def start(self, token: str, timestamp: float | None = None, options: Any = None) -> bool:
        return False

    def stop(self) -> bool:
        return True


class _Named(_Script):
    def __init__(self, answer: object) -> None:
        super().__init__("T")
        self.answer = answer

    def node(self) -> object:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def test_a_script_names_its_node_or_none(caplog: pytest.LogCaptureFixture) -> None:
    assert script_node(_Script("T")) is None
    assert script_node(_Named(" render01 ")) == "render01"
    assert script_node(_Named("")) is None
    assert script_node(_Named(7)) is None
    with caplog.at_level(logging.ERROR):
        assert script_node(_Named(RuntimeError("no inventory"))) is None
    assert "node() raised" in caplog.text


def test_node_pauses_have_their_own_file(tmp_path: Path) -> None:
    nodes, types = NodePauses.in_data_dir(tmp_path), TypePauses.in_data_dir(tmp_path)
    assert nodes.path.name == "paused-nodes.json"
    nodes.pause("render01", "fan swap")
    assert nodes.reasons() == {"render01": "fan swap"}
    assert types.reasons() == {}


def test_an_unreadable_node_file_pauses_nothing_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "paused-nodes.json").write_text("[1, 2]")
    with caplog.at_level(logging.ERROR):
        assert NodePauses.in_data_dir(tmp_path).reasons() == {}
    assert "no node is paused" in caplog.text


def test_the_registry_passes_over_instances_on_paused_nodes() -> None:
    registry = SessionRegistry()
    registry.add_type("T", 4)
    assert registry.free_index("T", passed_over={0, 2}) == 1
    assert registry.free_index("T", passed_over={0, 1, 2, 3}) is None
    # A resting instance is still preferred over none, but never one on a paused node.
    registry.start_failed("T", 1, now=10.0)
    assert registry.free_index("T", now=11.0, rest=60.0, passed_over={0, 2}) == 3
    assert registry.free_index("T", now=11.0, rest=60.0, passed_over={0, 2, 3}) == 1
    assert registry.free_indexes("T") == [0, 1, 2, 3]


# -- the broker ----------------------------------------------------------------------------------


async def test_a_paused_node_sends_new_sessions_to_the_others_and_keeps_its_own(
    make_broker: MakeBroker, tmp_path: Path
) -> None:
    pauses = NodePauses.in_data_dir(tmp_path)
    broker = await make_broker({"Desktop": {"nodes": ["n1", "n2"]}, "Other": {}}, count=4)
    broker.paused_nodes = pauses.reasons
    running = await broker.reserve("Desktop", user="ada")
    assert running.index == 0
    pauses.pause("n1", "fan swap")
    assert [(await broker.reserve("Desktop", user="bo")).index for _ in range(2)] == [1, 3]
    # Only instance 2 is free, and it is on n1: refused with why, administrators too.
    for unlimited in (False, True):
        with pytest.raises(ReservationError) as caught:
            await broker.reserve("Desktop", user="root", unlimited=unlimited)
        assert caught.value.reason == "paused"
        assert str(caught.value) == "new Desktop sessions are paused on n1: fan swap"
    # A type whose script names no node is not touched.
    assert (await broker.reserve("Other", user="ada")).index == 0
    # The session already on n1 goes on.
    held = broker.session_of_token(running.token)
    assert held is not None
    assert held.state == "reserved"
    by_name = {node.name: node for node in broker.nodes()}
    assert set(by_name) == {"n1", "n2"}
    assert by_name["n1"].instances == (("Desktop", 0), ("Desktop", 2))
    assert (by_name["n1"].in_use, by_name["n1"].paused) == (1, "fan swap")
    assert (by_name["n2"].in_use, by_name["n2"].paused) == (2, None)
    desktop = {info.name: info for info in broker.services()}["Desktop"]
    assert (desktop.in_use, desktop.free_on_paused_nodes) == (3, 1)
    assert [info.index for info in broker.sessions_on("n1")] == [0]
    assert [info.index for info in broker.sessions_on("n2")] == [1, 3]
    assert broker.sessions_on("elsewhere") == []
    pauses.resume("n1")
    desktop = {info.name: info for info in broker.services()}["Desktop"]
    assert desktop.free_on_paused_nodes == 0
    assert (await broker.reserve("Desktop", user="bo")).index == 2


async def test_a_full_pool_says_no_free_instance_even_with_a_node_paused(
    make_broker: MakeBroker, tmp_path: Path
) -> None:
    pauses = NodePauses.in_data_dir(tmp_path)
    broker = await make_broker({"Desktop": {"nodes": ["n1", "n2"]}}, count=2)
    broker.paused_nodes = pauses.reasons
    await broker.reserve("Desktop", user="ada")
    pauses.pause("n1", "fan swap")
    await broker.reserve("Desktop", user="bo")
    with pytest.raises(ReservationError) as caught:
        await broker.reserve("Desktop", user="cy")
    assert caught.value.reason == "no_free_instance"


async def test_a_paused_node_no_script_names_any_more_is_still_listed(
    make_broker: MakeBroker, tmp_path: Path
) -> None:
    pauses = NodePauses.in_data_dir(tmp_path)
    broker = await make_broker({"Desktop": {"nodes": ["n1"]}}, count=1)
    broker.paused_nodes = pauses.reasons
    pauses.pause("old-node", "retired")
    [n1, old] = broker.nodes()
    assert (n1.name, n1.paused) == ("n1", None)
    assert (old.name, old.instances, old.paused) == ("old-node", (), "retired")


def test_the_served_catalog_is_read_back_and_a_bad_file_is_none(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert ServedCatalog.load(tmp_path) is None
    served = ServedCatalog(config="/etc/vizgate/c.json", types=("Desktop",), nodes=("n1", "n2"))
    served.save(tmp_path)
    assert ServedCatalog.load(tmp_path) == served
    assert (tmp_path / "catalog-served.json").stat().st_mode & 0o777 == 0o600
    (tmp_path / "catalog-served.json").write_text('{"config": "c", "types": [1], "nodes": []}')
    with caplog.at_level(logging.WARNING):
        assert ServedCatalog.load(tmp_path) is None
    assert "cannot read" in caplog.text


# -- the commands --------------------------------------------------------------------------------


def test_the_commands_pause_list_and_resume_a_node(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    pool = {"count": 4, "options": {"nodes": ["render01", "render02"]}}
    config = write_config(tmp_path / "config", {"Desktop": pool, "Plain": {}})
    assert vizgate(data, "pause", "--node", "render01", "fan swap", "--config", str(config)) == (
        0,
        "new sessions on render01 are paused: fan swap\n",
        "",
    )
    code, _, error = vizgate(data, "pause", "--node", "render9", "--config", str(config))
    assert code == 2
    assert error == (
        f"vizgate pause: no instance of {config} runs on 'render9'; "
        "its nodes: 'render01', 'render02'\n"
    )
    plain = write_config(tmp_path / "plain", {"Plain": {}})
    code, _, error = vizgate(data, "pause", "--node", "render01", "--config", str(plain))
    assert (code, error) == (
        2,
        f"vizgate pause: the scripts of {plain} name no node (their node() is missing)\n",
    )
    code, _, error = vizgate(data, "pause", "--node", "a", "--type", "Desktop")
    assert code == 2
    assert "not allowed with argument" in error
    code, _, error = vizgate(data, "pause", "everything", "--config", str(config))
    assert code == 2
    assert error == "vizgate pause: --config checks the name given to --type or --node\n"
    code, _, error = vizgate(data, "pause", "--node", " ")
    assert (code, error) == (2, "vizgate pause: --node needs a node's name\n")
    assert vizgate(data, "pause", "--type", "Plain", "licence")[0] == 0
    assert vizgate(data, "pause", "--list")[1] == (
        "new sessions: open\n"
        "new Plain sessions are paused: licence\n"
        "new sessions on render01 are paused: fan swap\n"
    )
    code, said, _ = vizgate(data, "resume")
    assert (code, said) == (
        0,
        "new sessions were not paused\n"
        "still paused alone: Plain (vizgate resume --type NAME)\n"
        "nodes still paused: render01 (vizgate resume --node NAME)\n",
    )
    assert vizgate(data, "resume", "--node", "render01")[1] == (
        "new sessions on render01 are accepted again\n"
    )
    assert vizgate(data, "resume", "--node", "render01")[1] == (
        "new sessions on render01 were not paused\n"
    )
    assert NodePauses.in_data_dir(data).reasons() == {}


# -- a real gateway ------------------------------------------------------------------------------


@pytest.mark.integration
def test_a_node_paused_from_the_command_line_and_resumed_from_the_status_page(
    tmp_path: Path,
) -> None:
    secret = "node-pause-secret-8Hq3"
    pool = {"count": 4, "options": {"behaviour": "starts", "nodes": ["render01", "render02"]}}
    config = write_config(tmp_path / "config", {"Desktop": pool})
    data = tmp_path / "run" / "data"
    root = Account("root", "root-swaps-the-fan-of-render01", admin=True)
    alice = Account("alice", "alice-renders-on-render02-4")
    create_accounts(data, [root, alice])
    gateway = start_gateway(tmp_path / "run", config, env={"VIZGATE_SECURITY_TOKEN": secret})
    try:

        def reserve() -> Any:
            return gateway.request(
                "/v1/reserve/Desktop", {"security_token": secret, "username": "ada"}
            )

        def status() -> dict[str, Any]:
            reply = gateway.request("/v1/status", {"security_token": secret})
            return cast(dict[str, Any], reply.json())

        # Held before the pause: it stays held on the paused node.
        assert reserve().json()["index"] == 0
        assert (
            vizgate(data, "pause", "--node", "render01", "fan swap", "--config", str(config))[0]
            == 0
        )
        assert [reserve().json()["index"] for _ in range(2)] == [1, 3]
        refused = reserve()
        assert refused.status == 503
        assert refused.json()["reason"] == "paused"
        assert refused.json()["error"] == "new Desktop sessions are paused on render01: fan swap"
        nodes = {node["name"]: node for node in status()["nodes"]}
        assert nodes["render01"] == {
            "name": "render01",
            "instances": [{"service": "Desktop", "index": 0}, {"service": "Desktop", "index": 2}],
            "in_use": 1,
            "paused": "fan swap",
        }
        assert (nodes["render02"]["in_use"], nodes["render02"]["paused"]) == (2, None)
        [desktop] = status()["services"]
        assert (desktop["in_use"], desktop["free_on_paused_nodes"]) == (3, 1)
        # Users see that what is left is on a node under maintenance, and cannot launch.
        card = logged_in(gateway, alice).get("/").text
        assert "0 of 4 free (1 more on a node under maintenance)" in card
        assert re.search(r'class="primary" disabled>Launch', card)
        view = gateway.request("/v1/status_view", {"security_token": secret}).text
        row = re.search(r'<tr data-node="render01">.*?</tr>', view, re.DOTALL)
        assert row is not None
        assert "Desktop #0, Desktop #2" in row.group(0)
        assert '<td class="paused">paused: fan swap</td>' in row.group(0)
        metrics = gateway.request("/metrics", headers={"Authorization": f"Bearer {secret}"}).text
        assert 'vizgate_node_paused{node="render01"} 1' in metrics.splitlines()
        assert 'vizgate_node_paused{node="render02"} 0' in metrics.splitlines()
        # The administrator sees the node, its use and why, and resumes it there.
        admin = logged_in(gateway, root)
        page = admin.get("/status/")
        row = re.search(r'<tr data-node="render01">.*?</tr>', page.text, re.DOTALL)
        assert row is not None
        shown = html.unescape(row.group(0))
        assert "Desktop #0, #2" in shown
        desktop_row = re.search(r'<tr data-type="Desktop">.*?</tr>', page.text, re.DOTALL)
        assert desktop_row is not None
        assert "(+1 free on paused nodes)" in desktop_row.group(0)
        assert "Paused: fan swap" in shown
        assert "(drained)" not in shown
        assert "End its 1 session" in shown
        token = page.csrf_token()
        unknown = admin.post("/status/pause", {"node": "render9", "csrfmiddlewaretoken": token})
        assert unknown.status == 400
        # Its maintenance begins: the session still on it is ended, its user told why. A node
        # that is not paused is refused, so that no new session lands on it meanwhile.
        refused = admin.post("/status/node/end", {"node": "render02", "csrfmiddlewaretoken": token})
        assert refused.status == 400
        assert status()["nodes"][1]["in_use"] == 2
        ending = admin.post("/status/node/end", {"node": "render01", "csrfmiddlewaretoken": token})
        assert ending.status == 302
        assert status()["nodes"][0]["in_use"] == 0
        [ended] = [s for s in status()["ended"] if s["index"] == 0]
        assert ended["end_reason"] == "terminated"
        assert ended["message"] == (
            "session ended by administrator: render01 is down for maintenance (fan swap)"
        )
        assert "root ended 1 session(s) on render01: fan swap" in gateway.output()
        drained = admin.get("/status/")
        row = re.search(r'<tr data-node="render01">.*?</tr>', drained.text, re.DOTALL)
        assert row is not None
        assert "(drained)" in row.group(0)
        assert "End its" not in row.group(0)
        done = admin.post("/status/resume", {"node": "render01", "csrfmiddlewaretoken": token})
        assert done.status == 302
        assert [reserve().json()["index"] for _ in range(2)] == [0, 2]
        assert "root resumed new sessions on render01" in gateway.output()
        admin.post(
            "/status/pause",
            {
                "node": "render02",
                "reason": "kernel update",
                "csrfmiddlewaretoken": admin.get("/status/").csrf_token(),
            },
        )
        assert NodePauses.in_data_dir(data).reasons() == {"render02": "kernel update"}
        assert status()["nodes"][1]["paused"] == "kernel update"
    finally:
        gateway.stop()
