"""What the ``vizgate`` commands share: exit statuses and common arguments."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["EXIT_FAILURE", "EXIT_OK", "EXIT_PROBLEMS", "Subparsers", "add_data_dir", "usage"]

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
