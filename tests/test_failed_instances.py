"""An instance whose ``start()`` failed is passed over while another is free: in a pool of
render nodes, one that is down would otherwise take every next launch and every retry. The
registry's choice, then a broker over doubles whose instance 1 always fails."""

from __future__ import annotations

import argparse
import asyncio
import re
from pathlib import Path
from typing import Any, cast

import pytest

from broker_fixtures import WAIT, MakeBroker
from gateway import start_gateway, write_config
from portal_client import Account, Browser, create_accounts, open_socket
from support import await_until, scaled, wait_until
from vizgate.broker import FAILED_INSTANCE_REST, Broker
from vizgate.exceptions import StartError
from vizgate.registry import SessionRegistry
from vizgate.server import add_serve_arguments
from vizgate.sessions import ServiceInfo
from vizgate.testing.doubles import RFB_GREETING, instances

REST = 60.0


def test_the_lowest_free_index_without_failures() -> None:
    registry = SessionRegistry()
    registry.add_type("Desktop", 3)
    assert registry.free_index("Desktop", 100.0, REST) == 0


def test_a_failed_instance_rests_then_comes_back() -> None:
    registry = SessionRegistry()
    registry.add_type("Desktop", 3)
    registry.start_failed("Desktop", 0, 100.0)
    assert registry.free_index("Desktop", 100.0, REST) == 1
    assert registry.resting("Desktop", 130.0, REST) == {0: 30.0}
    assert registry.free_index("Desktop", 159.0, REST) == 1
    # Its rest is over: the lowest again.
    assert registry.free_index("Desktop", 160.0, REST) == 0
    assert registry.resting("Desktop", 160.0, REST) == {}


def test_a_start_that_succeeds_ends_the_rest_at_once() -> None:
    registry = SessionRegistry()
    registry.add_type("Desktop", 2)
    registry.start_failed("Desktop", 0, 100.0)
    registry.started("Desktop", 0)
    assert registry.free_index("Desktop", 101.0, REST) == 0
    assert registry.resting("Desktop", 101.0, REST) == {}


def test_when_only_resting_instances_are_free_the_longest_resting_is_tried() -> None:
    registry = SessionRegistry()
    registry.add_type("Desktop", 3)
    registry.start_failed("Desktop", 2, 100.0)
    registry.start_failed("Desktop", 0, 110.0)
    registry.start_failed("Desktop", 1, 120.0)
    # Never a refusal while an instance is free: the one that failed longest ago.
    assert registry.free_index("Desktop", 121.0, REST) == 2
    assert registry.resting("Desktop", 121.0, REST) == {2: 21.0, 0: 11.0, 1: 1.0}


def test_failures_are_kept_per_type() -> None:
    registry = SessionRegistry()
    registry.add_type("Desktop", 2)
    registry.add_type("Render", 2)
    registry.start_failed("Desktop", 0, 100.0)
    assert registry.free_index("Render", 101.0, REST) == 0
    assert registry.free_index("Desktop", 101.0, REST) == 1


# -- a broker over a pool with one bad instance ------------------------------------------------


def desktop(broker: Broker) -> ServiceInfo:
    return next(info for info in broker.services() if info.name == "Desktop")


async def pool_with_a_bad_instance(make_broker: MakeBroker) -> Broker:
    broker = await make_broker(
        {"Desktop": {"behaviour": "starts", "behaviour_by_index": {"1": "false"}}}, count=3
    )
    assert broker.failed_instance_rest == FAILED_INSTANCE_REST
    return broker


async def test_the_next_launch_after_a_failure_goes_to_another_instance(
    make_broker: MakeBroker,
) -> None:
    broker = await pool_with_a_bad_instance(make_broker)
    first = await broker.reserve("Desktop", user="ada")
    await broker.attach(first.token)
    failing = await broker.reserve("Desktop", user="bob")
    assert failing.index == 1
    with pytest.raises(StartError):
        await broker.attach(failing.token)
    await await_until(lambda: desktop(broker).in_use == 1, WAIT, message="index 1 not freed")
    assert set(desktop(broker).failed_recently) == {1}
    # bob tries again: instance 2, which starts, not the bad one.
    retry = await broker.reserve("Desktop", user="bob")
    assert retry.index == 2
    await broker.attach(retry.token)
    assert [double.start_calls for double in instances("Desktop")] == [1, 1, 1]
    # With only the resting instance free, it is tried rather than the user refused.
    last = await broker.reserve("Desktop", user="cy")
    assert last.index == 1


async def test_a_failed_instance_is_used_again_once_its_rest_is_over(
    make_broker: MakeBroker,
) -> None:
    broker = await pool_with_a_bad_instance(make_broker)
    broker.failed_instance_rest = 0.3
    held = await broker.reserve("Desktop")
    failing = await broker.reserve("Desktop")
    with pytest.raises(StartError):
        await broker.attach(failing.token)
    await await_until(lambda: desktop(broker).in_use == 1, WAIT, message="index 1 not freed")
    await await_until(
        lambda: not desktop(broker).failed_recently, WAIT, message="the rest never ended"
    )
    assert (await broker.reserve("Desktop")).index == 1
    assert held.index == 0


async def test_a_single_instance_type_is_never_refused_for_a_failure(
    make_broker: MakeBroker,
) -> None:
    broker = await make_broker({"Desktop": {"behaviour": "false"}}, count=1)
    failing = await broker.reserve("Desktop")
    with pytest.raises(StartError):
        await broker.attach(failing.token)
    await await_until(lambda: desktop(broker).in_use == 0, WAIT, message="index 0 not freed")
    assert (await broker.reserve("Desktop")).index == 0


# -- what administrators see ----------------------------------------------------------------------


@pytest.mark.integration
def test_administrators_see_the_failed_instance_and_the_next_launch_avoids_it(
    tmp_path: Path,
) -> None:
    secret = "failed-instances-secret-5rT2"
    admin = Account("root", "root-sees-the-bad-node-63", admin=True)
    create_accounts(tmp_path / "run" / "data", [admin])
    pool = {"count": 3, "options": {"behaviour": "starts", "behaviour_by_index": {"1": "false"}}}
    config = write_config(tmp_path / "config", {"Desktop": pool})
    gateway = start_gateway(tmp_path / "run", config, env={"VIZGATE_SECURITY_TOKEN": secret})
    try:

        def reserve() -> dict[str, Any]:
            reply = gateway.request(
                "/v1/reserve/Desktop", {"security_token": secret, "username": "ada"}
            )
            assert reply.status == 200, reply.text
            body: dict[str, Any] = reply.json()
            return body

        def status() -> dict[str, Any]:
            services = gateway.request("/v1/status", {"security_token": secret}).json()
            [desktop] = [s for s in services["services"] if s["name"] == "Desktop"]
            return cast(dict[str, Any], desktop)

        held = reserve()
        assert open_socket(gateway, f"token={held['token']}", None) == RFB_GREETING
        failing = reserve()
        assert failing["index"] == 1
        closed = open_socket(gateway, f"token={failing['token']}", None)
        assert isinstance(closed, tuple)
        assert closed[0] == 1011
        wait_until(lambda: status()["in_use"] <= 1, scaled(10), message="index 1 never freed")
        assert status()["failed_recently"] == [1]
        metrics = gateway.request("/metrics", headers={"Authorization": f"Bearer {secret}"}).text
        assert 'vizgate_instances_failed_recently{type="Desktop"} 1' in metrics.splitlines()
        view = gateway.request("/v1/status_view", {"security_token": secret}).text
        assert '<td class="failed-recently">1</td>' in view
        browser = Browser(gateway.port)
        assert browser.login(admin).status == 302
        page = browser.get("/status/").text
        row = re.search(r'<tr data-type="Desktop">.*?</tr>', page, re.DOTALL)
        assert row is not None
        assert re.search(r'class="failed-recently">#1 \(\d+ s ago\)</td>', row.group(0))
        assert "failed to start" in gateway.output()
        # The retry goes to instance 2, which starts.
        retry = reserve()
        assert retry["index"] == 2
        assert open_socket(gateway, f"token={retry['token']}", None) == RFB_GREETING
    finally:
        gateway.stop()


async def test_a_rest_of_zero_tries_the_lowest_free_instance_again(
    make_broker: MakeBroker,
) -> None:
    broker = await pool_with_a_bad_instance(make_broker)
    broker.failed_instance_rest = 0
    await broker.attach((await broker.reserve("Desktop")).token)
    failing = await broker.reserve("Desktop")
    with pytest.raises(StartError):
        await broker.attach(failing.token)
    await await_until(lambda: desktop(broker).in_use == 1, WAIT, message="index 1 not freed")
    assert desktop(broker).failed_recently == {}
    assert (await broker.reserve("Desktop")).index == 1


async def test_a_start_ended_by_its_user_or_an_administrator_is_no_failure(
    make_broker: MakeBroker,
) -> None:
    broker = await make_broker({"Desktop": {"behaviour": "slow", "delay": 30}}, count=2)
    for end in ("release", "terminate"):
        reservation = await broker.reserve("Desktop")
        attaching = asyncio.ensure_future(broker.attach(reservation.token))
        await await_until(
            lambda: [info.state for info in broker.sessions()] == ["starting"],
            WAIT,
            message="the start never began",
        )
        if end == "release":
            broker.release(reservation.token)
        else:
            broker.terminate(reservation.session_id, "maintenance")
        instances("Desktop")[reservation.index].release()
        with pytest.raises(StartError):
            await attaching
        await await_until(lambda: desktop(broker).in_use == 0, WAIT, message="not freed")
        assert desktop(broker).failed_recently == {}
        again = await broker.reserve("Desktop")
        assert again.index == reservation.index == 0
        broker.release(again.token)
        await await_until(lambda: desktop(broker).in_use == 0, WAIT, message="not freed")


def test_the_rest_is_set_with_serve_failed_instance_rest(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    base = ["--config", "external_services.json"]
    assert parser.parse_args(base).failed_instance_rest == FAILED_INSTANCE_REST
    assert parser.parse_args([*base, "--failed-instance-rest", "300"]).failed_instance_rest == 300
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--failed-instance-rest", "-1"])
    assert "must be a number of seconds, 0 or more, not -1" in capsys.readouterr().err
