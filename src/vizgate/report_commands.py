"""``vizgate sessions`` and ``vizgate usage``: the history in the gateway's database, for the
site's accounting (who used which session type, for how many hours) and for looking back at
what happened. Times are in UTC.

They read the database of ``--data-dir`` (or ``VIZGATE_DATABASE_URL``), as the gateway writes
it, and change nothing. ``--history-days`` removes old sessions: report on them before.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import sys
import textwrap
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from vizgate.cli_support import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_PROBLEMS,
    Subparsers,
    add_data_dir,
    open_database,
    print_table,
)
from vizgate.usage import (
    GROUPINGS,
    SessionUse,
    duration_text,
    parse_moment,
    run_seconds,
    usage_by,
    window_problem,
)

__all__ = ["add_sessions_command", "add_usage_command"]

#: The window when none is given: the last 30 days.
DEFAULT_DAYS = 30
FORMATS = ("table", "csv", "json")


def add_sessions_command(subparsers: Subparsers) -> None:
    """Declare ``vizgate sessions``."""
    sessions = subparsers.add_parser(
        "sessions",
        help="list the sessions that ran or were reserved in a window of time",
        description="List the sessions (live and ended) created or running between --since "
        f"and --until (default: the last {DEFAULT_DAYS} days), oldest first: type, user, "
        "state, when they started and ended, how long they ran, why they ended. Times in UTC.",
    )
    _add_window(sessions)
    sessions.set_defaults(func=_run_sessions)


def add_usage_command(subparsers: Subparsers) -> None:
    """Declare ``vizgate usage``."""
    usage = subparsers.add_parser(
        "usage",
        help="hours of sessions by user or by session type, and the most at once",
        description="Sum the hours sessions ran between --since and --until (default: the "
        f"last {DEFAULT_DAYS} days), by user or by session type, most used first, with the "
        "most that ran at once (for a type: the licences or nodes it needed). A session "
        "runs from a successful start() to its end; only the part inside the window counts, "
        "so consecutive windows add up. Times in UTC.",
    )
    _add_window(usage)
    usage.add_argument(
        "--by", choices=GROUPINGS, default="user", help="what to sum by (default: %(default)s)"
    )
    usage.set_defaults(func=_run_usage)


def _add_window(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--since",
        metavar="DATE",
        help=f"YYYY-MM-DD or YYYY-MM-DDTHH:MM, UTC (default: {DEFAULT_DAYS} days ago)",
    )
    parser.add_argument(
        "--until",
        metavar="DATE",
        help="YYYY-MM-DD (that day included) or YYYY-MM-DDTHH:MM, UTC (default: now)",
    )
    parser.add_argument("--user", metavar="NAME", help="only this user's sessions")
    parser.add_argument("--type", metavar="NAME", help="only sessions of this type")
    parser.add_argument(
        "--format", choices=FORMATS, default="table", help="the output (default: %(default)s)"
    )
    add_data_dir(parser)


def _window(
    args: argparse.Namespace, command: str, now: datetime.datetime
) -> tuple[datetime.datetime, datetime.datetime] | None:
    try:
        since = (
            parse_moment(args.since) if args.since else now - datetime.timedelta(days=DEFAULT_DAYS)
        )
        until = parse_moment(args.until, end_of_day=True) if args.until else now
    except ValueError as exc:
        print(f"vizgate {command}: {exc}", file=sys.stderr)
        return None
    problem = window_problem(since, until)
    if problem is not None:
        print(f"vizgate {command}: {problem}", file=sys.stderr)
        return None
    return since, until


@dataclass(frozen=True)
class _Report:
    """What a report command reads: its window, the moment it runs, the sessions in it."""

    since: datetime.datetime
    until: datetime.datetime
    now: datetime.datetime
    uses: Iterator[SessionUse]


def _report(args: argparse.Namespace, command: str) -> _Report | int:
    """The report ``args`` ask for, or the exit status when they cannot have one (said why)."""
    now = datetime.datetime.now(datetime.UTC)
    window = _window(args, command, now)
    if window is None:
        return EXIT_PROBLEMS
    if not open_database(args, command):
        return EXIT_FAILURE
    since, until = window
    from vizgate.web.portal.history import session_uses

    uses = session_uses(since, until, user=args.user, service=args.type)
    return _Report(since, until, now, uses)


def _run_sessions(args: argparse.Namespace) -> int:
    report = _report(args, "sessions")
    if isinstance(report, int):
        return report
    since, until, now = report.since, report.until, report.now
    if args.format == "table":
        rows = [("session", "type", "user", "state", "started", "ended", "ran", "why it ended")]
        rows += [
            (
                use.id,
                use.service,
                use.user or "-",
                use.state,
                _short(use.started),
                _short(use.ended),
                duration_text(run_seconds(use, since, until, now)),
                use.end_reason or "-",
            )
            for use in report.uses
        ]
        print_table(rows)
        return EXIT_OK
    # Written as read: a long window of a busy site is never in memory at once.
    _write(
        (
            {
                "id": use.id,
                "type": use.service,
                "user": use.user,
                "state": use.state,
                "created": _stamp(use.created),
                "started": _stamp(use.started),
                "ended": _stamp(use.ended),
                "seconds": round(run_seconds(use, since, until, now)),
                "end_reason": use.end_reason,
                "bytes_to_viewer": use.bytes_to_client,
                "bytes_to_server": use.bytes_to_server,
            }
            for use in report.uses
        ),
        args.format,
    )
    return EXIT_OK


def _run_usage(args: argparse.Namespace) -> int:
    report = _report(args, "usage")
    if isinstance(report, int):
        return report
    since, until = report.since, report.until
    totals = usage_by(report.uses, args.by, since, until, report.now)
    records = [
        {
            args.by: total.key,
            "sessions": total.sessions,
            "hours": round(total.hours, 2),
            "most_at_once": total.peak,
        }
        for total in totals
    ]
    if args.format == "table":
        print(f"{_stamp(since)} to {_stamp(until)}")
        print_table(
            [(args.by, "sessions", "hours", "most at once")]
            + [
                (str(r[args.by]), str(r["sessions"]), f"{r['hours']:.2f}", str(r["most_at_once"]))
                for r in records
            ]
        )
    else:
        _write(records, args.format)
    return EXIT_OK


def _write(records: Iterable[dict[str, Any]], form: str) -> None:
    """``records`` as a JSON array (one-space indents) or CSV, each written as it comes."""
    out = sys.stdout
    if form == "json":
        opened = False
        for record in records:
            out.write(",\n" if opened else "[\n")
            opened = True
            out.write(textwrap.indent(json.dumps(record, indent=1), " "))
        out.write("\n]\n" if opened else "[]\n")
        return
    writer: csv.DictWriter[str] | None = None
    for record in records:
        if writer is None:
            writer = csv.DictWriter(out, fieldnames=list(record), lineterminator="\n")
            writer.writeheader()
        writer.writerow(record)


def _stamp(moment: datetime.datetime | None) -> str:
    if moment is None:
        return ""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _short(moment: datetime.datetime | None) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%d %H:%M") if moment else "-"
