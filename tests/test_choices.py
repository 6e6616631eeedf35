"""Launch choices (:mod:`vizgate.choices`): what the catalog accepts, what the broker gives
``start()``, and what the portal offers and sends (a real gateway)."""

from __future__ import annotations

import contextlib
import html
import json
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from broker_fixtures import MakeBroker
from gateway import start_gateway, write_config
from portal_client import Account, create_accounts, logged_in
from support import scaled, wait_until
from vizgate.catalog import ServiceType, load_catalog
from vizgate.choices import choices_problems, label, launch_options, settle
from vizgate.exceptions import ConfigError, ReservationError
from vizgate.testing.doubles import DoubleScript, instances

HOURS = ["2:00:00", "8:00:00", "24:00:00"]
PARTITIONS = ["viz", "gpu"]
CHOICES = {"time_limit": HOURS, "partition": PARTITIONS}


def service_with(**options: Any) -> ServiceType:
    return ServiceType(
        name="Cluster",
        script=Path("/x.py"),
        count=1,
        options=options,
        sizes=("1600x1200", "1920x1080"),
        group=None,
        file_ext=(),
        choices={name: tuple(values) for name, values in options.get("choices", {}).items()},
    )


# ---------------------------------------------------------------------------------------
# The rules


def test_settle_takes_what_was_picked_and_defaults_the_rest() -> None:
    offered = {name: tuple(values) for name, values in CHOICES.items()}
    assert settle("Cluster", offered, {"time_limit": "8:00:00"}) == {
        "time_limit": "8:00:00",
        "partition": "viz",
    }
    assert settle("Cluster", offered, {"partition": ""}) == {
        "time_limit": "2:00:00",
        "partition": "viz",
    }


def test_a_value_that_is_not_offered_is_refused_with_what_is() -> None:
    offered = {"partition": ("viz", "gpu")}
    with pytest.raises(ValueError, match=r"^partition 'debug' is not offered for 'Cluster'; "):
        settle("Cluster", offered, {"partition": "debug"})
    with pytest.raises(ValueError, match=r"choose one of: viz, gpu$"):
        settle("Cluster", offered, {"partition": "viz --exclusive"})


def test_launch_options_settle_the_size_and_the_choices_and_keep_the_rest() -> None:
    service = service_with(choices=CHOICES)
    assert launch_options(service, {"partition": "gpu", "file": "model.vtk"}) == {
        "size": "1600x1200",
        "time_limit": "2:00:00",
        "partition": "gpu",
        "file": "model.vtk",
    }
    with pytest.raises(ValueError, match=r"^size '800x600' is not offered"):
        launch_options(service, {"size": "800x600"})


def test_labels() -> None:
    assert label("time_limit") == "Time limit"
    assert label("partition") == "Partition"
    assert label("gpus") == "GPUs"
    assert label("cpus") == "CPUs"


@pytest.mark.parametrize(
    ("value", "problems"),
    [
        (CHOICES, []),
        (["2:00:00"], [("", None, "must be an object naming the options users choose")]),
        ({"Time": ["1"]}, [("Time", None, "is not a choice name")]),
        ({"size": ["1"]}, [("size", None, "is given to start() by vizgate itself")]),
        ({"username": ["x"]}, [("username", None, "is given to start() by vizgate itself")]),
        ({"hours": []}, [("hours", None, "must be a non-empty list")]),
        ({"hours": "8"}, [("hours", None, "must be a non-empty list")]),
        ({"hours": ["8", 8, "", "8"]}, [
            ("hours", 1, "must be a non-empty string"),
            ("hours", 2, "must be a non-empty string"),
            ("hours", 3, "'8' is listed twice"),
        ]),
        ({"hours": ["8\n"]}, [("hours", 0, "must not hold control characters")]),
        ({"hours": ["x" * 201]}, [("hours", 0, "at most 200 characters")]),
    ],
)  # fmt: skip
def test_what_the_catalog_accepts(value: Any, problems: list[tuple[str, int | None, str]]) -> None:
    found = list(choices_problems(value))
    assert len(found) == len(problems), found
    for (name, index, reason), (want_name, want_index, want_reason) in zip(
        found, problems, strict=True
    ):
        assert (name, index) == (want_name, want_index)
        assert want_reason in reason


def test_catalog_problems_name_the_key_path(tmp_path: Path) -> None:
    path = tmp_path / "external_services.json"
    (tmp_path / "s.py").write_text("")
    path.write_text(
        json.dumps(
            {
                "Cluster": {
                    "script": "s.py",
                    "count": 1,
                    "options": {"choices": {"hours": ["8", 8], "Bad": ["1"]}},
                }
            }
        )
    )
    with pytest.raises(ConfigError) as caught:
        load_catalog(path)
    messages = [str(problem) for problem in caught.value.problems]
    assert any('"Cluster" > options > choices > hours[1]' in m for m in messages), messages
    assert any('"Cluster" > options > choices > Bad' in m for m in messages), messages


# ---------------------------------------------------------------------------------------
# The broker


def double(name: str) -> DoubleScript:
    return instances(name)[0]


async def test_start_gets_the_choices_picked_and_the_defaults(make_broker: MakeBroker) -> None:
    broker = await make_broker({"Cluster": {"choices": CHOICES}})
    reservation = await broker.reserve("Cluster", user="ada", options={"partition": "gpu"})
    broker.detach(await broker.attach(reservation.token))
    assert double("Cluster").last_options == {
        "username": "ada",
        "size": "1024x768",
        "partition": "gpu",
        "time_limit": "2:00:00",
    }
    assert [info.choices for info in broker.services()] == [
        {"time_limit": tuple(HOURS), "partition": tuple(PARTITIONS)}
    ]


async def test_a_choice_not_offered_reserves_nothing(make_broker: MakeBroker) -> None:
    broker = await make_broker({"Cluster": {"choices": CHOICES}})
    with pytest.raises(ReservationError, match="time_limit '99:00:00' is not offered") as caught:
        await broker.reserve("Cluster", options={"time_limit": "99:00:00"})
    assert caught.value.reason == "bad_option"
    assert [info.in_use for info in broker.services()] == [0]


# ---------------------------------------------------------------------------------------
# The portal and /v1 (a real gateway)


@pytest.mark.integration
def test_the_portal_offers_the_choices_and_the_session_gets_the_picked_ones(
    tmp_path: Path,
) -> None:
    config = write_config(
        tmp_path / "config", {"Cluster": {"options": {"behaviour": "starts", "choices": CHOICES}}}
    )
    run = tmp_path / "run"
    alice = Account("alice", "alice-picks-her-hours-62")
    root = Account("root", "root-reads-the-choices-88", admin=True)
    create_accounts(run / "data", [alice, root])
    gateway = start_gateway(run, config)
    try:
        browser = logged_in(gateway, alice)
        page = browser.get("/")
        assert re.findall(r'<select name="choice_time_limit">(.*?)</select>', page.text, re.S)
        assert "Time limit" in page.text
        assert re.findall(r'<option value="([^"]+)"', page.text) == [
            "1024x768", "1280x1024", "1600x1200", "1920x1080", *HOURS, *PARTITIONS,
        ]  # fmt: skip
        token = page.csrf_token()

        refused = browser.post(
            "/launch",
            {"service": "Cluster", "choice_partition": "debug", "csrfmiddlewaretoken": token},
        )
        assert refused.status == 400
        assert "partition 'debug' is not offered for 'Cluster'" in html.unescape(refused.text)

        launched = browser.post(
            "/launch",
            {
                "service": "Cluster",
                "choice_time_limit": "24:00:00",
                "csrfmiddlewaretoken": token,
            },
        )
        assert launched.status == 302, launched.text

        def stored_options() -> list[str]:
            # The broker saves sessions from a thread of its own: the row may come a little
            # after the redirect.
            path = run / "data" / "vizgate.sqlite3"
            with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
                return [row[0] for row in db.execute("SELECT options FROM portal_session")]

        wait_until(lambda: stored_options(), scaled(10), message="the session was not saved")
        [options] = stored_options()
        assert json.loads(options) == {
            "size": "1024x768",
            "time_limit": "24:00:00",
            "partition": "viz",
            "username": "alice",
        }

        status = gateway.request("/v1/status").json()
        [cluster] = status["services"]
        assert cluster["choices"] == CHOICES
        [session] = status["sessions"]
        assert session["choices"] == {"time_limit": "24:00:00", "partition": "viz"}
        # The administrator's page of the session says what was picked.
        detail = logged_in(gateway, root).get(f"/status/{session['id']}/")
        assert "1024x768; time_limit 24:00:00; partition viz" in detail.text
        bad = gateway.request("/v1/reserve/Cluster", {"partition": "nope"})
        assert bad.status == 400
        assert "partition 'nope' is not offered" in bad.text
    finally:
        gateway.stop()
