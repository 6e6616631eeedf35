"""``vizgate pause``, ``vizgate resume`` and ``vizgate notice``: maintenance from the shell.

They act on files in the gateway's data directory (:mod:`vizgate.pause`,
:mod:`vizgate.notice`), which a running gateway reads within a second, so they work whether the
gateway runs or not, and what they set outlives its restarts. The Status page changes the same
files.

A pause covers all new sessions, one session type's (``--type``) or those on one node of a pool
(``--node``, the name a session script's ``node()`` gives).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from vizgate.catalog import load_catalog
from vizgate.cli_support import EXIT_FAILURE, EXIT_OK, EXIT_PROBLEMS, Subparsers, add_data_dir
from vizgate.exceptions import ConfigError, ScriptError
from vizgate.pause import NamedPauses, NodePauses, PauseFile, TypePauses
from vizgate.placement import InstanceNodes
from vizgate.scripts import realize_instances
from vizgate.served_catalog import ServedCatalog

__all__ = ["add_notice_command", "add_pause_commands"]


def add_pause_commands(subparsers: Subparsers) -> None:
    """Declare ``vizgate pause`` and ``vizgate resume``."""
    pause = subparsers.add_parser(
        "pause",
        help="pause new sessions (for maintenance); running ones go on",
        description="Pause new sessions of the gateway whose data directory is given, or with "
        "--type those of one session type, or with --node those on one node of a pool: users "
        "see REASON and cannot launch; running sessions go on. Administrators may still "
        "launch, except on a paused node (it may be switched off). The pause outlives "
        "restarts until 'vizgate resume'.",
    )
    pause.add_argument("reason", metavar="REASON", nargs="?", default="", help="what users see")
    _add_scope(pause, "pause")
    pause.add_argument(
        "--config",
        metavar="FILE",
        help="the catalog --type must name a type of, or --node a node of (default: the one "
        "the gateway of --data-dir served last)",
    )
    pause.add_argument(
        "--list", action="store_true", help="say what is paused, and why; change nothing"
    )
    add_data_dir(pause)
    pause.set_defaults(func=_run_pause)
    resume = subparsers.add_parser(
        "resume",
        help="accept new sessions again",
        description="Accept new sessions again (with --type, of that session type; with "
        "--node, on that node).",
    )
    _add_scope(resume, "resume")
    add_data_dir(resume)
    resume.set_defaults(func=_run_resume)


def _add_scope(parser: argparse.ArgumentParser, verb: str) -> None:
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "--type",
        metavar="NAME",
        help=f"{verb} only this session type"
        + (" (e.g. its licence server is down)" if verb == "pause" else ""),
    )
    scope.add_argument(
        "--node",
        metavar="NAME",
        help=f"{verb} only the sessions on this node of a pool"
        + (" (its maintenance)" if verb == "pause" else ""),
    )


@dataclass(frozen=True)
class _Scope:
    """What one ``pause`` or ``resume`` acts on."""

    #: The pauses by name, or None for the pause of all new sessions.
    pauses: NamedPauses | None
    name: str
    #: How users' sessions in scope are spoken of: "new sessions", "new X sessions", ...
    words: str
    #: The file the pause is kept in.
    path: Path


def _scope(args: argparse.Namespace, data_dir: Path) -> _Scope:
    pauses: NamedPauses
    if args.node is not None:
        pauses = NodePauses.in_data_dir(data_dir)
        return _Scope(pauses, args.node, f"new sessions on {args.node}", pauses.path)
    if args.type is not None:
        pauses = TypePauses.in_data_dir(data_dir)
        return _Scope(pauses, args.type, f"new {args.type} sessions", pauses.path)
    return _Scope(None, "", "new sessions", PauseFile.in_data_dir(data_dir).path)


def _own_data_dir(args: argparse.Namespace, command: str) -> Path | None:
    """The data directory ``args`` name, or None (and why, on stderr) when it belongs to
    another account."""
    from vizgate.web import check_data_dir_owner, data_dir_of

    data_dir = data_dir_of(args.data_dir).resolve()
    try:
        check_data_dir_owner(data_dir)
    except PermissionError as exc:
        print(
            f"vizgate {command}: cannot use the data directory {data_dir}: {exc.strerror}",
            file=sys.stderr,
        )
        return None
    return data_dir


def _run_pause(args: argparse.Namespace) -> int:
    data_dir = _own_data_dir(args, "pause")
    if data_dir is None:
        return EXIT_FAILURE
    pause_file = PauseFile.in_data_dir(data_dir)
    if args.list:
        if args.type is not None or args.node is not None or args.reason:
            print("vizgate pause: --list takes no REASON, --type or --node", file=sys.stderr)
            return EXIT_PROBLEMS
        everything = pause_file.reason()
        print(f"new sessions are paused: {everything}" if everything else "new sessions: open")
        for name, reason in sorted(TypePauses.in_data_dir(data_dir).reasons().items()):
            print(f"new {name} sessions are paused: {reason}")
        for name, reason in sorted(NodePauses.in_data_dir(data_dir).reasons().items()):
            print(f"new sessions on {name} are paused: {reason}")
        return EXIT_OK
    scope = _scope(args, data_dir)
    if scope.pauses is None and args.config is not None:
        print("vizgate pause: --config checks the name given to --type or --node", file=sys.stderr)
        return EXIT_PROBLEMS
    if scope.pauses is not None and not scope.name.strip():
        option = "--node needs a node's name" if args.node else "--type needs a session type's name"
        print(f"vizgate pause: {option}", file=sys.stderr)
        return EXIT_PROBLEMS
    if scope.pauses is not None:
        problem = _unknown_name(args, scope.name, data_dir)
        if problem is not None:
            print(f"vizgate pause: {problem}", file=sys.stderr)
            return EXIT_PROBLEMS
    try:
        if scope.pauses is None:
            reason = pause_file.pause(args.reason)
        else:
            reason = scope.pauses.pause(scope.name, args.reason)
    except OSError as exc:
        print(f"vizgate pause: cannot write {scope.path}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"{scope.words} are paused: {reason}")
    return EXIT_OK


def _unknown_name(args: argparse.Namespace, name: str, data_dir: Path) -> str | None:
    """Why ``name`` is no session type (``--type``) or node (``--node``) of the catalog given
    with ``--config``, or else of the one the gateway served last; None when it is one, or
    when no catalog is known (said on stderr)."""
    node = args.node is not None
    if args.config is not None:
        config = Path(args.config)
        return _not_a_node_of(name, config) if node else _not_a_type_of(name, config)
    served = ServedCatalog.load(data_dir)
    if served is None:
        print(
            f"vizgate pause: the name is not checked: no gateway has served {data_dir} yet "
            "(--config FILE checks it against a catalog)",
            file=sys.stderr,
        )
        return None
    known, what = (served.nodes, "node") if node else (served.types, "session type")
    if name in known:
        return None
    listed = ", ".join(map(repr, known)) if known else "none"
    return (
        f"the gateway of {data_dir} serves no {what} {name!r} (its catalog: {served.config}); "
        f"its {what}s: {listed}"
    )


def _not_a_type_of(name: str, config: Path) -> str | None:
    """Why ``name`` is not a session type of the catalog ``config`` (None when it is one)."""
    try:
        catalog = load_catalog(config)
    except ConfigError as exc:
        return f"the catalog {config} has problems: " + "; ".join(map(str, exc.problems))
    names = [service.name for service in catalog]
    if name in names:
        return None
    return f"{config} has no session type {name!r}; its types: " + ", ".join(
        repr(known) for known in names
    )


def _not_a_node_of(name: str, config: Path) -> str | None:
    """Why no instance of the catalog ``config`` runs on node ``name`` (None when one does)."""
    try:
        catalog = load_catalog(config)
        by_node = InstanceNodes()
        for service in catalog:
            by_node.add_type(
                service.name,
                realize_instances(
                    service.name, service.script, service.count, service.options_dict()
                ),
            )
    except ConfigError as exc:
        return f"the catalog {config} has problems: " + "; ".join(map(str, exc.problems))
    except ScriptError as exc:
        return f"the catalog {config} has problems: {exc}"
    nodes = list(by_node.instances())
    if name in nodes:
        return None
    if not nodes:
        return f"the scripts of {config} name no node (their node() is missing)"
    return f"no instance of {config} runs on {name!r}; its nodes: " + ", ".join(
        repr(known) for known in nodes
    )


def _run_resume(args: argparse.Namespace) -> int:
    data_dir = _own_data_dir(args, "resume")
    if data_dir is None:
        return EXIT_FAILURE
    pause_file = PauseFile.in_data_dir(data_dir)
    scope = _scope(args, data_dir)
    try:
        pauses = scope.pauses
        resumed = pause_file.resume() if pauses is None else pauses.resume(scope.name)
    except OSError as exc:
        print(f"vizgate resume: cannot change {scope.path}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"{scope.words} are accepted again" if resumed else f"{scope.words} were not paused")
    if scope.pauses is None:
        if still := sorted(TypePauses.in_data_dir(data_dir).reasons()):
            print(f"still paused alone: {', '.join(still)} (vizgate resume --type NAME)")
        if still := sorted(NodePauses.in_data_dir(data_dir).reasons()):
            print(f"nodes still paused: {', '.join(still)} (vizgate resume --node NAME)")
    return EXIT_OK


def add_notice_command(subparsers: Subparsers) -> None:
    """Declare ``vizgate notice``."""
    notice = subparsers.add_parser(
        "notice",
        help="show a notice to every user (or, with --withdraw, no more)",
        description="Show TEXT on every page of the portal, the login page included, and in "
        "every open viewer within seconds; it stops nothing (for that: vizgate pause). Without "
        "TEXT, print the notice shown now.",
    )
    notice.add_argument("text", metavar="TEXT", nargs="?", default=None, help="what users see")
    notice.add_argument("--withdraw", action="store_true", help="show no notice any more")
    add_data_dir(notice)
    notice.set_defaults(func=_run_notice)


def _run_notice(args: argparse.Namespace) -> int:
    from vizgate.notice import NoticeFile

    if args.withdraw and args.text is not None:
        print("vizgate notice: give TEXT or --withdraw, not both", file=sys.stderr)
        return EXIT_PROBLEMS
    data_dir = _own_data_dir(args, "notice")
    if data_dir is None:
        return EXIT_FAILURE
    notice = NoticeFile.in_data_dir(data_dir)
    try:
        if args.withdraw:
            print("the notice is withdrawn" if notice.withdraw() else "there was no notice")
        elif args.text is not None:
            print(f"every user now sees: {notice.post(args.text)}")
        else:
            print(notice.text() or "no notice")
    except ValueError as exc:
        print(f"vizgate notice: {exc}", file=sys.stderr)
        return EXIT_PROBLEMS
    except OSError as exc:
        print(f"vizgate notice: cannot use {notice.path}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK
