"""What the ``vizgate`` commands share: exit statuses and common arguments."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

__all__ = [
    "EXIT_FAILURE",
    "EXIT_OK",
    "EXIT_PROBLEMS",
    "Subparsers",
    "add_data_dir",
    "open_database",
    "print_table",
    "usage",
]

EXIT_OK = 0
#: A command that could not do what it was asked (the message on stderr says why).
EXIT_FAILURE = 1
#: argparse's own status for bad usage; a configuration with problems is "bad input" too.
EXIT_PROBLEMS = 2

Subparsers = Any  # argparse's _SubParsersAction is private; its type adds nothing here


def add_data_dir(parser: argparse.ArgumentParser) -> None:
    """Declare ``--data-dir``, the gateway's data directory, on ``parser``."""
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        default=None,
        help="the gateway's data directory, as given to serve (default: $XDG_DATA_HOME/vizgate "
        "or ~/.local/share/vizgate)",
    )


def usage(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """A command's function when no action was named: its help, and bad usage."""

    def print_usage(args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return EXIT_PROBLEMS

    return print_usage


def open_database(args: argparse.Namespace, command: str) -> bool:
    """Set Django up on the database of ``args.data_dir``; False (and why, on stderr, as
    ``vizgate COMMAND: ...``) when it cannot be used."""
    from vizgate.exceptions import DatabaseSetupError
    from vizgate.web import data_dir_of, setup_django

    data_dir = data_dir_of(args.data_dir)
    try:
        setup_django(data_dir.resolve(), allowed_hosts=["localhost"])
    except OSError as exc:
        print(
            f"vizgate {command}: cannot use the data directory {data_dir}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return False
    except DatabaseSetupError as exc:
        print(f"vizgate {command}: {exc}", file=sys.stderr)
        return False
    return True


def print_table(rows: Sequence[tuple[str, ...]]) -> None:
    """Print ``rows`` (the first is the header) as columns two spaces apart."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
