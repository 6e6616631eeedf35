"""How long sessions ran, for reports: who used which session type, for how many hours, in a
window of time (``vizgate usage``, ``vizgate sessions``).

A session runs from the moment its script's ``start()`` succeeded to its end (or to now, while
it runs); a session that was reserved and never started ran for no time. The hours of a window
are the part of each run inside it, so consecutive windows add up to the whole: a session that
ran across midnight counts in both days. Nothing here touches the database: the commands read
the rows and hand them over as :class:`SessionUse`, one at a time (:class:`UsageTally` keeps
two numbers per run, so a year of a busy site is summed without holding its sessions).
"""

from __future__ import annotations

import datetime
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "GROUPINGS",
    "SessionUse",
    "UsageTally",
    "UsageTotal",
    "duration_text",
    "parse_moment",
    "run_seconds",
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


class UsageTally:
    """Sums sessions as they are read, by user and by type at once; holds two numbers per
    run for the peak (its start and end), never the sessions themselves.

    Args:
        since: the window's start.
        until: the window's end.
        now: the moment a run that has not ended counts to.
        groupings: what to sum by, each one of :data:`GROUPINGS`.

    Raises:
        ValueError: a grouping is not one of :data:`GROUPINGS`.
    """

    def __init__(
        self,
        since: datetime.datetime,
        until: datetime.datetime,
        now: datetime.datetime,
        groupings: Sequence[str] = GROUPINGS,
    ) -> None:
        for by in groupings:
            if by not in GROUPINGS:
                raise ValueError(f"cannot group by {by!r}: use one of {', '.join(GROUPINGS)}")
        self.since = since
        self.until = until
        self.now = now
        self._groups: dict[str, dict[str, _Group]] = {by: {} for by in groupings}

    def add(self, use: SessionUse) -> None:
        """Count ``use``'s run inside the window (nothing when it has none)."""
        run = _run_inside(use, self.since, self.until, self.now)
        if run is None:
            return
        start, stop = run[0].timestamp(), run[1].timestamp()
        for by, groups in self._groups.items():
            key = (use.user or "-") if by == "user" else use.service
            group = groups.get(key)
            if group is None:
                group = groups[key] = _Group()
            group.add(start, stop)

    def add_all(self, uses: Iterable[SessionUse]) -> UsageTally:
        """:meth:`add` each of ``uses``; this tally."""
        for use in uses:
            self.add(use)
        return self

    def totals(self, by: str) -> list[UsageTotal]:
        """The totals by ``by`` (one of the tally's groupings), the most used first."""
        totals = [group.total(key) for key, group in self._groups[by].items()]
        return sorted(totals, key=lambda total: (-total.seconds, total.key))


class _Group:
    """The runs of one user or type inside a window."""

    __slots__ = ("seconds", "starts", "stops")

    def __init__(self) -> None:
        self.seconds = 0.0
        self.starts = array("d")
        self.stops = array("d")

    def add(self, start: float, stop: float) -> None:
        self.seconds += stop - start
        self.starts.append(start)
        self.stops.append(stop)

    def total(self, key: str) -> UsageTotal:
        return UsageTotal(key, len(self.starts), self.seconds, _peak(self.starts, self.stops))


def _peak(starts: Sequence[float], stops: Sequence[float]) -> int:
    """The most runs at once; a run that ends when another begins is not beside it."""
    starts, stops = sorted(starts), sorted(stops)
    running = peak = ended = 0
    for start in starts:
        while ended < len(stops) and stops[ended] <= start:
            ended += 1
            running -= 1
        running += 1
        peak = max(peak, running)
    return peak


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
    return UsageTally(since, until, now, (by,)).add_all(uses).totals(by)


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
