"""The ``vizgate`` command line: ``check``, ``serve``, ``user``, ``group``, ``sessions``,
``usage``, ``pause``, ``resume``, ``notice``, ``backup`` and ``demo``.

``vizgate check CONFIG`` validates a catalog; ``vizgate serve --config CONFIG`` runs the gateway;
``vizgate user ...`` and ``vizgate group ...`` manage the portal's accounts in the database of
``--data-dir`` (:mod:`vizgate.account_commands`); ``vizgate sessions`` and ``usage`` report on
the history (:mod:`vizgate.report_commands`); ``vizgate pause`` and ``resume`` stop and
allow new sessions and ``vizgate notice`` shows users a notice
(:mod:`vizgate.maintenance_commands`); ``vizgate backup`` copies the
database (:mod:`vizgate.backup`); ``vizgate demo`` serves the examples (see :mod:`vizgate.demo`).

Each subcommand is one ``_add_<name>`` function that declares its arguments and binds one
``_run_<name>(args) -> int`` with ``set_defaults(func=...)``; adding a command means writing
those two functions and listing the first in ``_COMMANDS``.

:func:`main` returns the exit status instead of exiting, so tests call it directly:

* 0: the command succeeded (``check``: the catalog is usable; warnings are allowed).
* 1: the command failed (``user add``: the user exists, a group is missing, the password is
  too weak; the data directory cannot be used).
* 2: bad usage, or the configuration has problems (every one is printed to stderr).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from vizgate import __version__
from vizgate.account_commands import add_group_command, add_user_command
from vizgate.catalog import TIMEOUT_OPTIONS, Catalog, ServiceType, load_catalog
from vizgate.choices import CHOICES_OPTION
from vizgate.cli_support import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_PROBLEMS,
    Subparsers,
    add_data_dir,
)
from vizgate.exceptions import ConfigError, ConfigProblem, ScriptError
from vizgate.maintenance_commands import add_notice_command, add_pause_commands
from vizgate.placement import InstanceNodes
from vizgate.report_commands import add_sessions_command, add_usage_command
from vizgate.scripts import realize_instances
from vizgate.window_sizes import DEFAULT_SIZES

__all__ = ["EXIT_FAILURE", "EXIT_OK", "EXIT_PROBLEMS", "build_parser", "main"]


# Options vizgate itself reads; they get their own lines in ``check`` and are not repeated
# under "other options".
_SHOWN_OPTIONS = frozenset({"sizes", "group", "file_ext", CHOICES_OPTION, *TIMEOUT_OPTIONS})

# Option values under keys like these are not printed: a site may pass credentials to its
# scripts through options, and the output of ``check`` ends up in tickets and chat.
_SECRET_KEY = re.compile(r"pass|secret|token|key|credential", re.IGNORECASE)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``vizgate``, with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="vizgate",
        description="A web gateway that delivers remote visualization sessions (VNC) to a browser.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for add_command in _COMMANDS:
        add_command(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``vizgate`` command line.

    Args:
        argv: the arguments after the program name; ``sys.argv[1:]`` when None.

    Returns:
        The exit status: :data:`EXIT_OK` or :data:`EXIT_PROBLEMS`.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        # argparse exits on --help, --version and usage errors; a library function returns.
        return exc.code if isinstance(exc.code, int) else EXIT_PROBLEMS
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return EXIT_PROBLEMS
    return func(args)


# --- vizgate check --------------------------------------------------------------------------


def _add_check(subparsers: Subparsers) -> None:
    check = subparsers.add_parser(
        "check",
        help="validate a session catalog and realize every script instance",
        description="Read CONFIG (the seed's external_services.json), import every session "
        "script, call its realize_service() once per instance index, and print the catalog. "
        "Nothing is started. Exit status 0 when the catalog is usable (warnings allowed), 2 "
        "when it has problems.",
    )
    check.add_argument("config", metavar="CONFIG", nargs="?", help="path of external_services.json")
    check.add_argument(
        "--config", dest="config_option", metavar="CONFIG", help="the same, as for serve"
    )
    check.set_defaults(func=_run_check)


def _add_serve(subparsers: Subparsers) -> None:
    from vizgate.server import add_serve_arguments, run_serve

    serve = subparsers.add_parser(
        "serve",
        help="run the gateway: web portal, /v1 API, WebSocket tunnel and session broker",
        description="Serve the session catalog CONFIG: one process with the web portal, the "
        "seed's /v1 REST API, the WebSocket tunnel to the sessions' VNC servers and the broker "
        "that starts and stops them.",
    )
    add_serve_arguments(serve)
    serve.set_defaults(func=run_serve)


def _run_check(args: argparse.Namespace) -> int:
    if args.config and args.config_option:
        print("vizgate check: give CONFIG once, not both ways", file=sys.stderr)
        return EXIT_PROBLEMS
    args.config = args.config or args.config_option
    if not args.config:
        print(
            "vizgate check: which CONFIG? (vizgate check external_services.json)", file=sys.stderr
        )
        return EXIT_PROBLEMS
    try:
        catalog = load_catalog(args.config)
    except ConfigError as exc:
        return _report_problems(exc.problems, args.config)

    # Scripts run their module code and realize_service() here, and may print; realizing
    # before printing the catalog keeps their output from splitting it up.
    problems: list[ConfigProblem] = []
    nodes = InstanceNodes()
    for service in catalog:
        try:
            nodes.add_type(
                service.name,
                realize_instances(
                    service.name, service.script, service.count, service.options_dict()
                ),
            )
        except ScriptError as exc:
            problems.append(
                ConfigProblem(
                    str(args.config),
                    f"{json.dumps(service.name, ensure_ascii=False)} > script",
                    str(exc),
                )
            )

    _print_catalog(catalog, nodes, sys.stdout)
    if problems:
        return _report_problems(problems, args.config)
    types = _plural(len(catalog), "session type")
    print(f"OK: {types}, {_plural(catalog.instance_count, 'instance')}")
    return EXIT_OK


def _report_problems(problems: Sequence[ConfigProblem], config: str) -> int:
    for problem in problems:
        print(problem, file=sys.stderr)
    print(
        f"vizgate check: {_plural(len(problems), 'problem')} in {config}; the catalog is not "
        "usable",
        file=sys.stderr,
    )
    return EXIT_PROBLEMS


def _print_catalog(catalog: Catalog, nodes: InstanceNodes, out: TextIO) -> None:
    print(f"Catalog {catalog.path}", file=out)
    for service in catalog:
        print(file=out)
        _print_service(service, nodes, out)
    if catalog.warnings:
        print(file=out)
        print(f"{_plural(len(catalog.warnings), 'warning')}:", file=out)
        for warning in catalog.warnings:
            print(f"  {warning}", file=out)
    print(file=out)


def _print_service(service: ServiceType, nodes: InstanceNodes, out: TextIO) -> None:
    indexes = "index 0" if service.count == 1 else f"indexes 0-{service.count - 1}"
    sizes = ", ".join(service.sizes)
    if "sizes" not in service.options and service.sizes == DEFAULT_SIZES:
        sizes += " (default)"
    lines = [
        ("count", f"{service.count} ({indexes})"),
        ("sizes", sizes),
        ("group", service.group if service.group is not None else "everyone"),
        ("file_ext", ", ".join(service.file_ext) if service.file_ext else "(none)"),
        ("script", str(service.script)),
    ]
    if by_node := _instances_by_node(nodes.of_type(service.name)):
        lines.append(("nodes", by_node))
    lines += [
        (key, f"{service.options[key]} s") for key in TIMEOUT_OPTIONS if key in service.options
    ]
    lines += [
        (f"choice {name}", ", ".join(values) + " (users pick; the first is the default)")
        for name, values in service.choices.items()
    ]
    options = service.options_dict()
    other = {key: value for key, value in options.items() if key not in _SHOWN_OPTIONS}
    if other:
        shown = ", ".join(f"{key}={_show_value(key, value)}" for key, value in other.items())
        lines.append(("options", shown))
    print(service.name, file=out)
    width = max(len(label) for label, _ in lines)
    for label, text in lines:
        print(f"  {label + ':':<{width + 1}} {text}", file=out)


def _instances_by_node(nodes: Sequence[str | None]) -> str:
    """Which instances run on which node, as the scripts' ``node()`` say ("" if none says)."""
    indexes: dict[str, list[str]] = {}
    for index, node in enumerate(nodes):
        if node is not None:
            indexes.setdefault(node, []).append(f"#{index}")
    return ", ".join(f"{node} ({', '.join(held)})" for node, held in indexes.items())


def _show_value(key: str, value: Any) -> str:
    if _SECRET_KEY.search(key):
        return "(hidden)"
    return json.dumps(value, ensure_ascii=False)


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _add_backup(subparsers: Subparsers) -> None:
    backup = subparsers.add_parser(
        "backup",
        help="copy the gateway's SQLite database while it runs",
        description="Write a consistent copy of the gateway's SQLite database to the new file "
        "FILE (readable by its owner only), also while the gateway runs. To restore: stop the "
        "gateway, put the copy in place of DATA_DIR/vizgate.sqlite3 and remove the -wal and "
        "-shm files beside it. The secret key is not in it: back up the data directory too. "
        "PostgreSQL: use pg_dump.",
    )
    backup.add_argument("file", metavar="FILE", help="the new file to write")
    add_data_dir(backup)
    backup.set_defaults(func=_run_backup)


def _run_backup(args: argparse.Namespace) -> int:
    import os

    from vizgate.backup import BackupError, backup_sqlite
    from vizgate.web import data_dir_of
    from vizgate.web.database import DATABASE_URL_ENV, database_settings

    try:
        database = database_settings(os.environ.get(DATABASE_URL_ENV), data_dir_of(args.data_dir))
    except ValueError as exc:
        print(f"vizgate backup: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if not database["ENGINE"].endswith("sqlite3"):
        print(
            f"vizgate backup: the database is PostgreSQL ({DATABASE_URL_ENV}): back it up with "
            "pg_dump",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    try:
        made = backup_sqlite(Path(database["NAME"]).resolve(), Path(args.file).resolve())
    except BackupError as exc:
        print(f"vizgate backup: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(
        f"backed up {made.users} user(s) and {made.sessions} session(s) to {made.path} "
        f"({made.size:,} bytes)"
    )
    return EXIT_OK


# --- vizgate demo -----------------------------------------------------------------------------


def _add_demo(subparsers: Subparsers) -> None:
    from vizgate.demo import add_demo_arguments, run_demo

    demo = subparsers.add_parser(
        "demo",
        help="serve the examples on this machine, with an administrator account",
        description="Prepare ~/.vnc for TigerVNC (unless ~/.vnc/passwd exists), create the "
        "administrator 'admin' with a random password shown once (unless it exists), and "
        "serve examples/external_services.json until Ctrl-C.",
    )
    add_demo_arguments(demo)
    demo.set_defaults(func=run_demo)


_COMMANDS: tuple[Callable[[Subparsers], None], ...] = (
    _add_check,
    _add_serve,
    add_user_command,
    add_group_command,
    add_sessions_command,
    add_usage_command,
    add_pause_commands,
    add_notice_command,
    _add_backup,
    _add_demo,
)


if __name__ == "__main__":
    raise SystemExit(main())
