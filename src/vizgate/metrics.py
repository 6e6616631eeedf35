"""What the gateway reports to Prometheus: ``GET /metrics`` in the text exposition format.

Gauges are read from the broker when scraped: instances per session type, live sessions by
type and state, viewers and watchers connected. Counters and the start-time histogram add up
what happened since the process started (:class:`SessionTally`, kept by the broker): sessions
ended by type and reason, bytes relayed each way, and how long sessions took from ``start()``
to a VNC server that accepts connections. A restarted gateway starts them at zero, which
Prometheus' ``rate()`` and ``increase()`` expect of a counter.

No label carries a user, a token or a host: only session type names, states, end reasons and
directions.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from vizgate.sessions import NodeInfo, ServiceInfo, SessionInfo
from vizgate.store import StoreActivity

__all__ = ["CONTENT_TYPE", "START_BUCKETS", "SessionTally", "exposition"]

#: The media type of the text exposition format.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Upper bounds, in seconds, of the start-time histogram's buckets (+Inf follows): a local
#: desktop starts in about a second, a Slurm job may wait minutes in the queue.
START_BUCKETS: tuple[float, ...] = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600)


@dataclass
class _Histogram:
    buckets: list[int] = field(default_factory=lambda: [0] * len(START_BUCKETS))
    count: int = 0
    total: float = 0.0

    def observe(self, value: float) -> None:
        index = bisect.bisect_left(START_BUCKETS, value)
        if index < len(self.buckets):
            self.buckets[index] += 1
        self.count += 1
        self.total += value


@dataclass
class SessionTally:
    """What happened to sessions since the gateway process started."""

    ended: Counter[tuple[str, str]] = field(default_factory=Counter)
    bytes_ended: Counter[tuple[str, str]] = field(default_factory=Counter)
    start_seconds: dict[str, _Histogram] = field(default_factory=dict)

    def session_ended(self, info: SessionInfo) -> None:
        """``info`` (its last snapshot) has ended."""
        self.ended[info.service, info.end_reason or "unknown"] += 1
        self.bytes_ended[info.service, "to_viewer"] += info.bytes_to_client
        self.bytes_ended[info.service, "to_server"] += info.bytes_to_server

    def session_ready(self, service: str, seconds: float) -> None:
        """A session of ``service`` took ``seconds`` from ``start()`` to a VNC server that
        accepts connections."""
        self.start_seconds.setdefault(service, _Histogram()).observe(max(0.0, seconds))


def _label(value: str) -> str:
    # The exposition format escapes backslash, double quote and line feed in label values.
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if value == int(value):
        return str(int(value))
    return repr(value)


def _family(
    lines: list[str], name: str, kind: str, text: str, samples: Iterable[tuple[str, float]]
) -> None:
    lines.append(f"# HELP {name} {text}")
    lines.append(f"# TYPE {name} {kind}")
    for labels, value in samples:
        lines.append(
            f"{name}{{{labels}}} {_number(value)}" if labels else f"{name} {_number(value)}"
        )


def exposition(
    services: Sequence[ServiceInfo],
    sessions: Sequence[SessionInfo],
    tally: SessionTally,
    *,
    states: Sequence[str],
    paused: bool = False,
    nodes: Sequence[NodeInfo] = (),
    store_waiting: int = 0,
    store_activity: StoreActivity | None = None,
) -> str:
    """The metrics as Prometheus' text exposition format.

    Args:
        services: every session type (:meth:`vizgate.broker.Broker.services`).
        sessions: every live session (:meth:`vizgate.broker.Broker.sessions`).
        tally: what happened since the process started.
        states: the live states, each reported for every type (0 when none is in it).
        paused: new sessions are paused (:mod:`vizgate.pause`).
        nodes: the nodes the instances run on (:meth:`vizgate.broker.Broker.nodes`).
        store_waiting: session changes not yet written to the database.
        store_activity: what the session store has written (none without a database).
    """
    names = [service.name for service in services]
    lines: list[str] = []
    _family(
        lines,
        "vizgate_new_sessions_paused",
        "gauge",
        "1 while new sessions are paused for maintenance, else 0.",
        [("", 1 if paused else 0)],
    )
    _family(
        lines,
        "vizgate_store_writes_waiting",
        "gauge",
        "Session changes not yet written to the database; they pile up while it is away.",
        [("", store_waiting)],
    )
    activity = store_activity or StoreActivity()
    _family(
        lines,
        "vizgate_store_transactions_total",
        "counter",
        "Transactions the session store committed (each holds the changes queued meanwhile).",
        [("", activity.transactions)],
    )
    _family(
        lines,
        "vizgate_store_changes_total",
        "counter",
        "Session changes (records and audit lines) the session store wrote.",
        [("", activity.changes)],
    )
    _family(
        lines,
        "vizgate_store_write_seconds_total",
        "counter",
        "Seconds the session store spent in committed transactions; divided by the "
        "transactions, the time a reservation or a start waits for the database.",
        [("", round(activity.seconds, 6))],
    )
    _family(
        lines,
        "vizgate_instances",
        "gauge",
        "Instances of a session type (its count).",
        ((f'type="{_label(s.name)}"', s.count) for s in services),
    )
    _family(
        lines,
        "vizgate_type_paused",
        "gauge",
        "1 while new sessions of a session type alone are paused (vizgate pause --type), else 0.",
        ((f'type="{_label(s.name)}"', 1 if s.paused else 0) for s in services),
    )
    _family(
        lines,
        "vizgate_node_paused",
        "gauge",
        "1 while no new session starts on a node (vizgate pause --node), else 0; "
        "nodes are those the session scripts name.",
        ((f'node="{_label(n.name)}"', 1 if n.paused else 0) for n in nodes),
    )
    _family(
        lines,
        "vizgate_instances_failed_recently",
        "gauge",
        "Instances of a session type whose start() failed lately; new sessions pass them "
        "over while another is free (a node down in a pool shows here).",
        ((f'type="{_label(s.name)}"', len(s.failed_recently)) for s in services),
    )
    by_state = Counter((info.service, info.state) for info in sessions)
    _family(
        lines,
        "vizgate_sessions",
        "gauge",
        "Live sessions by type and state.",
        (
            (f'type="{_label(name)}",state="{_label(state)}"', by_state[name, state])
            for name in names
            for state in states
        ),
    )
    viewers: Counter[str] = Counter()
    watchers: Counter[str] = Counter()
    live_bytes: Counter[tuple[str, str]] = Counter()
    for info in sessions:
        viewers[info.service] += info.connections
        watchers[info.service] += info.watchers
        live_bytes[info.service, "to_viewer"] += info.bytes_to_client
        live_bytes[info.service, "to_server"] += info.bytes_to_server
    _family(
        lines,
        "vizgate_viewers",
        "gauge",
        "Viewer connections open, view-only watchers included.",
        ((f'type="{_label(name)}"', viewers[name]) for name in names),
    )
    _family(
        lines,
        "vizgate_watchers",
        "gauge",
        "View-only connections open (share links).",
        ((f'type="{_label(name)}"', watchers[name]) for name in names),
    )
    _family(
        lines,
        "vizgate_sessions_ended_total",
        "counter",
        "Sessions ended since the gateway started, by type and reason.",
        (
            (f'type="{_label(name)}",reason="{_label(reason)}"', count)
            for (name, reason), count in sorted(tally.ended.items())
        ),
    )
    relayed = tally.bytes_ended + live_bytes
    _family(
        lines,
        "vizgate_relayed_bytes_total",
        "counter",
        "Bytes relayed between viewers and VNC servers since the gateway started.",
        (
            (f'type="{_label(name)}",direction="{direction}"', relayed[name, direction])
            for name in names
            for direction in ("to_viewer", "to_server")
        ),
    )
    lines.append(
        "# HELP vizgate_session_start_seconds From start() to a VNC server that accepts "
        "connections, for sessions started since the gateway started."
    )
    lines.append("# TYPE vizgate_session_start_seconds histogram")
    for name in names:
        histogram = tally.start_seconds.get(name, _Histogram())
        label = f'type="{_label(name)}"'
        cumulative = 0
        for bound, count in zip(START_BUCKETS, histogram.buckets, strict=True):
            cumulative += count
            lines.append(
                f'vizgate_session_start_seconds_bucket{{{label},le="{_number(bound)}"}} '
                f"{cumulative}"
            )
        lines.append(f'vizgate_session_start_seconds_bucket{{{label},le="+Inf"}} {histogram.count}')
        lines.append(f"vizgate_session_start_seconds_sum{{{label}}} {_number(histogram.total)}")
        lines.append(f"vizgate_session_start_seconds_count{{{label}}} {histogram.count}")
    return "\n".join(lines) + "\n"
