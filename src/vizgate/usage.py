"""How long sessions ran, for reports: who used which session type, for how many hours, in a
window of time (``vizgate usage``, ``vizgate sessions``).

A session runs from the moment its script's ``start()`` succeeded to its end (or to now, while
it runs); a session that was reserved and never started ran for no time. The hours of a window
are the part of each run inside it, so consecutive windows add up to the whole: a session that
ran across midnight counts in both days. Nothing here touches the database: the commands read
the rows and hand them over as :class:`SessionUse`.
"""

from __future__ import annotations

import datetime
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "GROUPINGS",
    "SessionUse",
    "UsageTotal",
    "duration_text",
    "parse_moment",
    "run_seconds",
    "sorted_uses",
    "usage_by",
    "window_problem",
]

#: What ``vizgate usage --by`` groups by.
GROUPINGS = ("user", "type")


@dataclass(frozen=True)
class SessionUse:
    """What a report needs of one session (times are aware, in UTC)."""

    id: str
    service: str
    user: str
    state: str
    created: datetime.datetime
    started: datetime.datetime | None
    ended: datetime.datetime | None
    end_reason: str
    bytes_to_client: int
    bytes_to_server: int


@dataclass(frozen=True)
class UsageTotal:
    """The sessions of one user (or type) that ran in a window, and for how long in it."""

    key: str
    sessions: int
    seconds: float
    #: The most of them running at once (for a type: the licences or nodes it needed).
    peak: int = 0

    @property
    def hours(self) -> float:
        return self.seconds / 3600


def _run_inside(
    use: SessionUse,
    since: datetime.datetime,
    until: datetime.datetime,
    now: datetime.datetime,
) -> tuple[datetime.datetime, datetime.datetime] | None:
    """The part of ``use``'s run between ``since`` and ``until`` (None when there is none)."""
    if use.started is None:
        return None
    start = max(use.started, since)
    stop = min(use.ended if use.ended is not None else now, until)
    return (start, stop) if stop > start else None


def run_seconds(
    use: SessionUse,
    since: datetime.datetime,
    until: datetime.datetime,
    now: datetime.datetime,
) -> float:
    """How long ``use`` ran between ``since`` and ``until`` (0 when it never started)."""
    run = _run_inside(use, since, until, now)
    return (run[1] - run[0]).total_seconds() if run is not None else 0.0


def usage_by(
    uses: Iterable[SessionUse],
    by: str,
    since: datetime.datetime,
    until: datetime.datetime,
    now: datetime.datetime,
) -> list[UsageTotal]:
    """The sessions that ran in the window and their hours in it, by ``user`` or ``type``;
    the most used first. Anonymous sessions (reserved through ``/v1`` without a user) count as
    the user "-".

    Raises:
        ValueError: ``by`` is not one of :data:`GROUPINGS`.
    """
    if by not in GROUPINGS:
        raise ValueError(f"cannot group by {by!r}: use one of {', '.join(GROUPINGS)}")
    sessions: dict[str, int] = defaultdict(int)
    seconds: dict[str, float] = defaultdict(float)
    # (moment, +1 or -1) as runs begin and end inside the window, for the peak.
    changes: dict[str, list[tuple[datetime.datetime, int]]] = defaultdict(list)
    for use in uses:
        run = _run_inside(use, since, until, now)
        if run is None:
            continue
        start, stop = run
        key = (use.user or "-") if by == "user" else use.service
        sessions[key] += 1
        seconds[key] += (stop - start).total_seconds()
        changes[key] += [(start, 1), (stop, -1)]
    totals = [UsageTotal(key, sessions[key], seconds[key], _peak(changes[key])) for key in sessions]
    return sorted(totals, key=lambda total: (-total.seconds, total.key))


def _peak(changes: list[tuple[datetime.datetime, int]]) -> int:
    """The most runs at once; a run that ends when another begins is not beside it."""
    running = peak = 0
    # Ends (-1) sort before beginnings (+1) at the same moment.
    for _, change in sorted(changes):
        running += change
        peak = max(peak, running)
    return peak


def parse_moment(text: str, *, end_of_day: bool = False) -> datetime.datetime:
    """A date (``2026-11-01``) or a date and time (``2026-11-01T08:00``) given on the command
    line, in UTC unless it names its offset. A date alone means the start of that day, or, with
    ``end_of_day``, the start of the next (so ``--until 2026-11-30`` includes the 30th).

    Raises:
        ValueError: not a date, with what was expected.
    """
    try:
        moment = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is not a date: use YYYY-MM-DD or YYYY-MM-DDTHH:MM (UTC)"
        ) from None
    date_only = len(text.strip()) == len("YYYY-MM-DD")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    if date_only and end_of_day:
        moment += datetime.timedelta(days=1)
    return moment


def window_problem(since: datetime.datetime, until: datetime.datetime) -> str | None:
    """Why ``since``..``until`` is not a window (None if it is)."""
    if until <= since:
        return "--until must come after --since"
    return None


def duration_text(seconds: float) -> str:
    """``H:MM:SS``, for tables."""
    whole = round(seconds)
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def sorted_uses(uses: Sequence[SessionUse]) -> list[SessionUse]:
    """Sessions in the order they were made."""
    return sorted(uses, key=lambda use: (use.created, use.id))
