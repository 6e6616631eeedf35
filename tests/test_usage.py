"""Reports on the history: the arithmetic of run time in a window (:mod:`vizgate.usage`), and
``vizgate sessions`` / ``vizgate usage`` as commands over a database with known rows and over
one a real gateway wrote."""

from __future__ import annotations

import csv
import datetime
import io
import json
import random
import re
import subprocess
from pathlib import Path

import pytest

from gateway import run_python, start_gateway, write_config
from portal_client import Account, Browser, create_accounts, open_socket
from support import scaled, wait_until
from vizgate.testing.doubles import RFB_GREETING
from vizgate.usage import SessionUse, UsageTally, parse_moment, run_seconds, usage_by

UTC = datetime.UTC


def at(hour: int, minute: int = 0, day: int = 1) -> datetime.datetime:
    return datetime.datetime(2026, 11, day, hour, minute, tzinfo=UTC)


def use(
    session_id: str,
    user: str,
    started: datetime.datetime | None,
    ended: datetime.datetime | None,
    service: str = "Desktop",
) -> SessionUse:
    return SessionUse(
        id=session_id,
        service=service,
        user=user,
        state="ended" if ended else "running",
        created=started or at(0),
        started=started,
        ended=ended,
        end_reason="disconnected" if ended else "",
        bytes_to_client=0,
        bytes_to_server=0,
    )


DAY_ONE = (at(0), at(0, day=2))
NOW = at(12, day=3)


def test_run_time_is_the_part_of_the_run_inside_the_window() -> None:
    assert run_seconds(use("a", "u", at(9), at(11)), *DAY_ONE, NOW) == 7200
    # Across midnight: an hour on each day.
    night = use("b", "u", at(23), at(1, day=2))
    assert run_seconds(night, *DAY_ONE, NOW) == 3600
    assert run_seconds(night, at(0, day=2), at(0, day=3), NOW) == 3600
    # Reserved, never started; and a run entirely outside the window.
    assert run_seconds(use("c", "u", None, at(10)), *DAY_ONE, NOW) == 0
    assert run_seconds(use("d", "u", at(9, day=2), at(10, day=2)), *DAY_ONE, NOW) == 0
    # Still running: until now, or the window's end.
    live = use("e", "u", at(12, day=2), None)
    assert run_seconds(live, at(0, day=2), at(0, day=4), NOW) == 24 * 3600


def test_usage_sums_by_user_or_type_most_used_first() -> None:
    uses = [
        use("a", "alice", at(9), at(11)),
        use("b", "bob", at(8), at(13), service="Render"),
        use("c", "alice", at(14), at(15), service="Render"),
        use("d", "", at(16), at(16, 30)),
        use("e", "carol", None, at(10)),
    ]
    by_user = usage_by(uses, "user", *DAY_ONE, NOW)
    assert [(t.key, t.sessions, t.seconds, t.peak) for t in by_user] == [
        ("bob", 1, 5 * 3600, 1),
        ("alice", 2, 3 * 3600, 1),
        ("-", 1, 1800, 1),
    ]
    by_type = usage_by(uses, "type", *DAY_ONE, NOW)
    # Render: bob 8-13 and alice 14-15 never overlap; Desktop: 9-11 and 16-16:30 neither.
    assert [(t.key, t.sessions, t.hours, t.peak) for t in by_type] == [
        ("Render", 2, 6.0, 1),
        ("Desktop", 2, 2.5, 1),
    ]


def test_the_peak_is_the_most_runs_at_once() -> None:
    uses = [
        use("a", "alice", at(9), at(12)),
        use("c", "carol", at(10, 30), at(12)),
        # Still running, begun the day before.
        use("e", "erin", at(20) - datetime.timedelta(days=1), None),
        # Both begin as "a" and "c" end: not beside them.
        use("d", "dan", at(12), at(14)),
        use("f", "fay", at(12), at(13)),
    ]
    [desktop] = usage_by(uses, "type", *DAY_ONE, NOW)
    assert desktop.peak == 3
    assert desktop.sessions == 5
    # One more beside a and c makes four.
    [busier] = usage_by([*uses, use("b", "bob", at(10), at(11))], "type", *DAY_ONE, NOW)
    assert busier.peak == 4


def test_the_peak_agrees_with_counting_at_every_start() -> None:
    # Whole minutes, so runs often begin exactly when others end.
    rng = random.Random(7)
    uses = []
    for number in range(300):
        start = at(0) + datetime.timedelta(minutes=rng.randrange(0, 24 * 60))
        stop = start + datetime.timedelta(minutes=rng.randrange(1, 180))
        uses.append(use(f"s{number}", f"u{number % 5}", start, stop, f"T{number % 3}"))
    for by in ("type", "user"):
        for total in usage_by(uses, by, *DAY_ONE, NOW):
            mine = [u for u in uses if (u.service if by == "type" else u.user) == total.key]
            runs = [(max(u.started, DAY_ONE[0]), min(u.ended, DAY_ONE[1])) for u in mine]  # type: ignore[type-var]
            runs = [(a, b) for a, b in runs if b > a]
            most = max(sum(1 for a, b in runs if a <= s < b) for s, _ in runs)
            assert (total.sessions, total.peak) == (len(runs), most)
            assert total.peak > 1


def test_a_tally_sums_by_type_and_by_user_reading_each_session_once() -> None:
    uses = [
        use("a", "alice", at(9), at(12)),
        use("b", "bob", at(10), at(11), service="Render"),
        use("c", "", at(11), None),
    ]
    # A generator can be read once: both sums come from the same pass.
    tally = UsageTally(*DAY_ONE, NOW).add_all(u for u in uses)
    assert tally.totals("type") == usage_by(uses, "type", *DAY_ONE, NOW)
    assert tally.totals("user") == usage_by(uses, "user", *DAY_ONE, NOW)
    assert [(t.key, t.sessions, t.hours) for t in tally.totals("user")] == [
        ("-", 1, 13.0),
        ("alice", 1, 3.0),
        ("bob", 1, 1.0),
    ]
    with pytest.raises(ValueError, match="cannot group by 'host'"):
        UsageTally(*DAY_ONE, NOW, ("type", "host"))


def test_dates_on_the_command_line() -> None:
    assert parse_moment("2026-11-01") == at(0)
    assert parse_moment("2026-11-01", end_of_day=True) == at(0, day=2)
    assert parse_moment("2026-11-01T08:30") == at(8, 30)
    assert parse_moment("2026-11-01T08:30+01:00") == at(7, 30)
    with pytest.raises(ValueError, match="'yesterday' is not a date: use YYYY-MM-DD"):
        parse_moment("yesterday")


# ---------------------------------------------------------------------------------------
# The commands


_ROWS = """
import datetime, pathlib, sys
from vizgate.web import setup_django
setup_django(pathlib.Path(sys.argv[1]), allowed_hosts=["localhost"])
from vizgate.web.portal.models import Session
U = datetime.UTC
def at(h, m=0, day=1):
    return datetime.datetime(2026, 11, day, h, m, tzinfo=U)
for number, (service, index, user, created, started, ended, reason) in enumerate([
    ("Desktop", 0, "alice", at(8), at(9), at(11), "disconnected"),
    ("Desktop", 1, "bob", at(22), at(23), at(1, day=2), "idle"),
    ("Render", 0, "alice", at(10), None, at(10, 5), "released"),
    ("Render", 0, "alice", at(12), at(12), None, ""),
]):
    Session.objects.create(
        id=f"s{number + 1}", token_hash=f"{number:064x}", service=service, index=index,
        user=user, state="ended" if ended else "running", created=created, started=started,
        ended=ended, end_reason=reason, bytes_to_client=1000 * (number + 1),
    )
"""


def vizgate(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_python("-m", "vizgate", *args, "--data-dir", str(data_dir), check=False)


@pytest.fixture
def history(tmp_path: Path) -> Path:
    data_dir = tmp_path / "data"
    run_python("-c", _ROWS, str(data_dir))
    return data_dir


def test_usage_by_user_and_by_type_over_a_day(history: Path) -> None:
    day = ("--since", "2026-11-01", "--until", "2026-11-01")
    by_user = vizgate(history, "usage", *day, "--format", "json")
    assert by_user.returncode == 0, by_user.stderr
    # alice: 9-11 and the live session from noon to the day's end; bob: 23-24.
    assert json.loads(by_user.stdout) == [
        {"user": "alice", "sessions": 2, "hours": 14.0, "most_at_once": 1},
        {"user": "bob", "sessions": 1, "hours": 1.0, "most_at_once": 1},
    ]
    by_type = vizgate(history, "usage", *day, "--by", "type", "--format", "csv")
    assert list(csv.DictReader(io.StringIO(by_type.stdout))) == [
        {"type": "Render", "sessions": "1", "hours": "12.0", "most_at_once": "1"},
        {"type": "Desktop", "sessions": "2", "hours": "3.0", "most_at_once": "1"},
    ]
    table = vizgate(history, "usage", *day)
    assert table.stdout.splitlines()[0] == "2026-11-01T00:00:00Z to 2026-11-02T00:00:00Z"
    assert table.stdout.splitlines()[1].split("  ")[-1].strip() == "most at once"
    assert table.stdout.splitlines()[2].split() == ["alice", "2", "14.00", "1"]
    next_day = vizgate(
        history, "usage", "--since", "2026-11-02", "--until", "2026-11-02", "--by", "type"
    )
    # 00:00-01:00 bob's Desktop and alice's Render both run, each alone in its type.
    assert [line.split() for line in next_day.stdout.splitlines()[2:]] == [
        ["Render", "1", "24.00", "1"],
        ["Desktop", "1", "1.00", "1"],
    ]


def test_sessions_lists_a_users_sessions_of_a_window(history: Path) -> None:
    listed = vizgate(
        history, "sessions", "--since", "2026-11-01", "--until", "2026-11-01",
        "--user", "alice", "--format", "csv",
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    rows = list(csv.DictReader(io.StringIO(listed.stdout)))
    assert [(r["id"], r["type"], r["seconds"], r["end_reason"]) for r in rows] == [
        ("s1", "Desktop", "7200", "disconnected"),
        ("s3", "Render", "0", "released"),
        ("s4", "Render", "43200", ""),
    ]
    assert rows[0]["started"] == "2026-11-01T09:00:00Z"
    assert rows[0]["bytes_to_viewer"] == "1000"
    table = vizgate(history, "sessions", "--since", "2026-11-01", "--type", "Desktop")
    lines = [line.split() for line in table.stdout.splitlines()]
    assert lines[0][:4] == ["session", "type", "user", "state"]
    assert [line[0] for line in lines[1:]] == ["s1", "s2"]
    assert "2:00:00" in lines[1]


_NO_SESSIONS = ("--since", "2026-10-01", "--until", "2026-10-02")


def test_json_is_written_as_read_in_the_same_layout(history: Path) -> None:
    listed = vizgate(history, "sessions", "--since", "2026-11-01", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    # In the order they were made (s2 at 22:00).
    assert [row["id"] for row in rows] == ["s1", "s3", "s4", "s2"]
    assert listed.stdout == json.dumps(rows, indent=1) + "\n"
    empty = vizgate(history, "sessions", *_NO_SESSIONS, "--format", "json")
    assert (empty.returncode, empty.stdout) == (0, "[]\n")
    nothing = vizgate(history, "sessions", *_NO_SESSIONS, "--format", "csv")
    assert (nothing.returncode, nothing.stdout) == (0, "")


_READ_IN_CHUNKS = """
import datetime, json, pathlib, sys
from django.db import connection
from django.test.utils import CaptureQueriesContext
from vizgate.web import setup_django
setup_django(pathlib.Path(sys.argv[1]), allowed_hosts=["localhost"])
from vizgate.web.portal import history
history.CHUNK = 2
since = datetime.datetime(2026, 11, 1, tzinfo=datetime.UTC)
with CaptureQueriesContext(connection) as queries:
    uses = history.session_uses(since, since + datetime.timedelta(days=2))
    before = len(queries)
    first = next(uses)
    ids = [first.id] + [use.id for use in uses]
print(json.dumps({"before": before, "ids": ids, "sql": [q["sql"] for q in queries]}))
"""


def test_reports_read_the_sessions_lazily_and_only_the_columns_they_use(history: Path) -> None:
    read = json.loads(run_python("-c", _READ_IN_CHUNKS, str(history)).stdout)
    # Nothing is read until the first session is asked for; then all, in the order made.
    assert read["before"] == 0
    assert read["ids"] == ["s1", "s3", "s4", "s2"]
    [sql] = read["sql"]
    # Not the options, the script's state or the message: a report never needs them.
    for column in ("options", "script_state", "message", "token_hash"):
        assert f'"{column}"' not in sql


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("--since", "yesterday"), "'yesterday' is not a date"),
        (("--since", "2026-11-02", "--until", "2026-11-01T00:00"), "--until must come after"),
    ],
)
def test_a_bad_window_is_refused_with_why(history: Path, args: tuple[str, ...], said: str) -> None:
    for command in ("usage", "sessions"):
        result = vizgate(history, command, *args)
        assert result.returncode == 2
        assert said in result.stderr


@pytest.mark.integration
def test_a_session_a_real_gateway_ran_is_in_the_report(tmp_path: Path) -> None:
    config = write_config(tmp_path / "config", {"Desktop": {"options": {"behaviour": "starts"}}})
    data_dir = tmp_path / "run" / "data"
    gateway = start_gateway(tmp_path / "run", config, "--linger", "0")
    try:
        reserved = gateway.request("/v1/reserve/Desktop", {"username": "dora"}).json()
        assert open_socket(gateway, f"token={reserved['token']}", None) == RFB_GREETING

        def reported() -> list[dict[str, object]]:
            result = vizgate(data_dir, "sessions", "--format", "json")
            rows: list[dict[str, object]] = json.loads(result.stdout or "[]")
            return [row for row in rows if row["state"] == "ended"]

        [row] = wait_until(reported, scaled(20), message="the session never showed as ended")
        assert (row["id"], row["type"], row["user"]) == (reserved["session_id"], "Desktop", "dora")
        assert row["end_reason"] == "disconnected"
        assert row["started"]
        assert row["bytes_to_viewer"] == len(RFB_GREETING)
        usage = json.loads(vizgate(data_dir, "usage", "--format", "json").stdout)
        assert [(u["user"], u["sessions"]) for u in usage] == [("dora", 1)]
    finally:
        gateway.stop()


@pytest.mark.integration
def test_administrators_see_usage_by_type_and_user_on_the_usage_page(tmp_path: Path) -> None:
    admin = Account("root", "root-reads-the-usage-41", admin=True)
    user = Account("erin", "erin-may-not-read-it-57")
    data_dir = tmp_path / "run" / "data"
    create_accounts(data_dir, [admin, user])
    run_python("-c", _ROWS, str(data_dir))
    config = write_config(tmp_path / "config", {"Desktop": {"count": 2}})
    gateway = start_gateway(tmp_path / "run", config)
    try:
        browser = Browser(gateway.port)
        assert browser.login(admin).status == 302
        assert 'href="/status/usage"' in browser.get("/status/").text
        page = browser.get("/status/usage?days=90")
        assert page.status == 200, page.text
        types = table_rows(page.text, "usage-types")
        # Desktop: alice 9-11 and bob 23-01. Render: alice's live session, ended when this
        # gateway found its type gone from the catalog; her reservation that never started
        # does not count.
        assert types[1] == ["Desktop", "2", "4.00", "1"]
        assert types[0][:2] == ["Render", "1"]
        users = table_rows(page.text, "usage-users")
        assert ["bob", "1", "2.00", "1"] in users
        assert [row[0] for row in users] == ["alice", "bob"]
        assert "<strong>90 days</strong>" in page.text
        assert browser.get("/status/usage?days=12").status == 400
        # The same as a file to download.
        assert 'href="/status/usage.csv?days=90&amp;by=type"' in page.text
        download = browser.get("/status/usage.csv?days=90&by=type")
        assert download.status == 200
        assert download.headers["Content-Type"] == "text/csv; charset=utf-8"
        assert download.headers["Content-Disposition"].startswith(
            'attachment; filename="vizgate-usage-by-type-'
        )
        table = list(csv.reader(io.StringIO(download.text)))
        assert table[0] == ["type", "sessions", "hours", "most_at_once"]
        assert ["Desktop", "2", "4.00", "1"] in table
        assert browser.get("/status/usage.csv?by=host").status == 400

        other = Browser(gateway.port)
        assert other.login(user).status == 302
        assert other.get("/status/usage").status == 403
        assert other.get("/status/usage.csv").status == 403
    finally:
        gateway.stop()


def table_rows(page: str, table_class: str) -> list[list[str]]:
    """The body rows of the page's table of that class, as cell texts."""
    table = page.split(f'<table class="{table_class}">', 1)[1].split("</table>", 1)[0]
    body = table.split("<tbody>", 1)[1]
    return [
        [re.sub(r"<[^>]+>", "", cell).strip() for cell in re.findall(r"<td[^>]*>(.*?)</td>", row)]
        for row in re.findall(r"<tr>(.*?)</tr>", body, flags=re.S)
    ]
