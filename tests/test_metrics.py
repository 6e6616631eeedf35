"""Unit tests for vizgate.metrics: the tally and Prometheus' text exposition format."""

from __future__ import annotations

from dataclasses import replace

import pytest

from snapshots import session_info
from vizgate.metrics import START_BUCKETS, SessionTally, exposition
from vizgate.sessions import NodeInfo, ServiceInfo, SessionInfo
from vizgate.store import StoreActivity

STATES = ["reserved", "starting", "running"]


def service(name: str, count: int = 2) -> ServiceInfo:
    return ServiceInfo(name=name, count=count, in_use=0, sizes=("1024x768",), group=None)


def session(service_name: str, state: str = "running", **changes: object) -> SessionInfo:
    defaults: dict[str, object] = {
        "user": "alice",
        "connections": 1,
        "host": "node7.example",
        "port": 5901,
        "started": 1.0,
        "bytes_to_client": 1000,
        "bytes_to_server": 10,
    }
    return session_info(service=service_name, state=state, **{**defaults, **changes})


def samples(text: str) -> dict[str, float]:
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            assert key not in found, f"a sample twice: {key}"
            found[key] = float(value)
    return found


def test_every_family_has_one_help_and_one_type_line_before_its_samples() -> None:
    text = exposition([service("A")], [session("A")], SessionTally(), states=STATES)
    assert text.endswith("\n")
    seen: list[str] = []
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            name = line.split()[2]
            assert name not in seen
            seen.append(name)
        elif not line.startswith("#"):
            # A sample of the family declared last (a histogram's carry suffixes).
            name = line.split("{")[0].split(" ")[0]
            histogram = {seen[-1] + suffix for suffix in ("_bucket", "_sum", "_count")}
            assert name == seen[-1] or name in histogram, line
    assert seen == [
        "vizgate_new_sessions_paused",
        "vizgate_store_writes_waiting",
        "vizgate_store_transactions_total",
        "vizgate_store_changes_total",
        "vizgate_store_write_seconds_total",
        "vizgate_instances",
        "vizgate_type_paused",
        "vizgate_node_paused",
        "vizgate_instances_failed_recently",
        "vizgate_sessions",
        "vizgate_viewers",
        "vizgate_watchers",
        "vizgate_sessions_ended_total",
        "vizgate_relayed_bytes_total",
        "vizgate_session_start_seconds",
    ]


def test_gauges_count_live_sessions_by_type_and_state_with_zeros() -> None:
    text = exposition(
        [service("A", 3), service("B")],
        [session("A"), session("A", "reserved", connections=0), session("B", watchers=1)],
        SessionTally(),
        states=STATES,
    )
    found = samples(text)
    assert found['vizgate_instances{type="A"}'] == 3
    assert found['vizgate_sessions{type="A",state="running"}'] == 1
    assert found['vizgate_sessions{type="A",state="reserved"}'] == 1
    assert found['vizgate_sessions{type="A",state="starting"}'] == 0
    assert found['vizgate_sessions{type="B",state="running"}'] == 1
    assert found['vizgate_viewers{type="A"}'] == 1
    assert found['vizgate_watchers{type="B"}'] == 1
    # Live sessions' bytes count toward the counters until they end.
    assert found['vizgate_relayed_bytes_total{type="A",direction="to_viewer"}'] == 2000
    assert found['vizgate_relayed_bytes_total{type="B",direction="to_server"}'] == 10


def test_instances_that_failed_to_start_lately_are_counted_by_type() -> None:
    pool = replace(service("A", 3), failed_recently={0: 12.0, 2: 3.5})
    found = samples(exposition([pool, service("B")], [], SessionTally(), states=STATES))
    assert found['vizgate_instances_failed_recently{type="A"}'] == 2
    assert found['vizgate_instances_failed_recently{type="B"}'] == 0


def test_a_type_paused_alone_is_one() -> None:
    paused = replace(service("A"), paused="licence server down")
    found = samples(exposition([paused, service("B")], [], SessionTally(), states=STATES))
    assert found['vizgate_type_paused{type="A"}'] == 1
    assert found['vizgate_type_paused{type="B"}'] == 0


def test_a_paused_node_is_one() -> None:
    nodes = [
        NodeInfo(name="render01", instances=(("A", 0),), in_use=1, paused="fan swap"),
        NodeInfo(name="render02", instances=(("A", 1),), in_use=0),
    ]
    found = samples(exposition([service("A")], [], SessionTally(), states=STATES, nodes=nodes))
    assert found['vizgate_node_paused{node="render01"}'] == 1
    assert found['vizgate_node_paused{node="render02"}'] == 0


def test_an_ended_session_moves_its_bytes_from_live_to_the_tally() -> None:
    tally = SessionTally()
    live = session("A", bytes_to_client=500)
    before = samples(exposition([service("A")], [live], tally, states=STATES))
    tally.session_ended(replace(live, state="ended", end_reason="released"))
    after = samples(exposition([service("A")], [], tally, states=STATES))
    key = 'vizgate_relayed_bytes_total{type="A",direction="to_viewer"}'
    assert before[key] == after[key] == 500
    assert after['vizgate_sessions_ended_total{type="A",reason="released"}'] == 1


def test_the_start_histogram_is_cumulative() -> None:
    tally = SessionTally()
    for seconds in (0.2, 0.5, 3, 700, -1):
        tally.session_ready("A", seconds)
    found = samples(exposition([service("A")], [], tally, states=STATES))

    def bucket(bound: str) -> float:
        return found[f'vizgate_session_start_seconds_bucket{{type="A",le="{bound}"}}']

    assert bucket("0.5") == 3  # -1 (taken as 0), 0.2 and 0.5: "le" includes the bound
    assert bucket("2") == 3
    assert bucket("5") == 4
    assert bucket("600") == 4
    assert bucket("+Inf") == 5
    assert found['vizgate_session_start_seconds_count{type="A"}'] == 5
    assert found['vizgate_session_start_seconds_sum{type="A"}'] == pytest.approx(703.7)
    bounds = [b for b in found if b.startswith("vizgate_session_start_seconds_bucket")]
    assert len(bounds) == len(START_BUCKETS) + 1


def test_label_values_are_escaped() -> None:
    name = 'Cluster "GPU" \\ node\nA'
    text = exposition([service(name)], [session(name)], SessionTally(), states=STATES)
    assert 'vizgate_instances{type="Cluster \\"GPU\\" \\\\ node\\nA"} 2' in text.splitlines()


def test_no_user_token_or_host_is_exposed() -> None:
    text = exposition([service("A")], [session("A")], SessionTally(), states=STATES)
    for secret in ("alice", "abcdef", "node7", "5901", "0123456789abcdef"):
        assert secret not in text


def test_the_pause_of_new_sessions_is_a_gauge() -> None:
    running = samples(exposition([service("A")], [], SessionTally(), states=STATES))
    paused = samples(exposition([service("A")], [], SessionTally(), states=STATES, paused=True))
    assert running["vizgate_new_sessions_paused"] == 0
    assert paused["vizgate_new_sessions_paused"] == 1


def test_the_writes_waiting_for_the_database_are_a_gauge() -> None:
    none = samples(exposition([service("A")], [], SessionTally(), states=STATES))
    some = samples(exposition([service("A")], [], SessionTally(), states=STATES, store_waiting=7))
    assert none["vizgate_store_writes_waiting"] == 0
    assert some["vizgate_store_writes_waiting"] == 7


def test_what_the_store_wrote_is_counted() -> None:
    none = samples(exposition([service("A")], [], SessionTally(), states=STATES))
    activity = StoreActivity(transactions=3, changes=11, seconds=0.0125)
    some = samples(
        exposition([service("A")], [], SessionTally(), states=STATES, store_activity=activity)
    )
    assert none["vizgate_store_transactions_total"] == 0
    assert (
        some["vizgate_store_transactions_total"],
        some["vizgate_store_changes_total"],
        some["vizgate_store_write_seconds_total"],
    ) == (3, 11, 0.0125)
