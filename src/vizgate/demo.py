"""``vizgate demo``: the examples served on this machine, ready to log in to.

What it does, in order:

1. Prepares ``~/.vnc`` for TigerVNC with :func:`vizgate.vnc_home.prepare_vnc_home` (a random
   VNC password that only the gateway uses, and a terminal as the desktop), unless
   ``~/.vnc/passwd`` exists; then the folder is used as it is.
2. Sets up the database (SQLite in the data directory, the same default as ``serve``), creates
   the groups the catalog names, and creates the administrator ``admin`` with a random password
   printed once on the terminal, unless ``admin`` exists (``vizgate user passwd admin`` sets a
   new one).
3. Serves ``examples/external_services.json`` (whose ``vnc_password_file`` is ``~/.vnc/passwd``,
   so the gateway answers the VNC password for the browser) in the same process, until Ctrl-C,
   which also stops the desktops it started.
"""

from __future__ import annotations

import argparse
import secrets
import sys
from pathlib import Path

from vizgate.catalog import load_catalog
from vizgate.exceptions import ConfigError
from vizgate.vnc_home import prepare_vnc_home

__all__ = [
    "ADMIN_NAME",
    "DEFAULT_CONFIG",
    "add_demo_arguments",
    "run_demo",
]

#: The administrator the demo creates.
ADMIN_NAME = "admin"

#: The examples' catalog, beside the source tree (``scripts/demo`` runs from a checkout).
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "examples" / "external_services.json"

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the options of ``vizgate demo`` on ``parser``."""
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help=f"the session catalog (default: {DEFAULT_CONFIG})",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    parser.add_argument(
        "--port", type=int, default=8000, help="port to listen on (default: %(default)s)"
    )
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        default=None,
        help="database and secret key (default: $XDG_DATA_HOME/vizgate or ~/.local/share/vizgate)",
    )


def _say(text: str) -> None:
    print(text, flush=True)


def _complain(text: str) -> None:
    print(f"vizgate demo: {text}", file=sys.stderr, flush=True)


def _prepare_vnc() -> bool:
    home = Path.home()
    if (home / ".vnc" / "passwd").exists():
        _say(f"Using {home / '.vnc'} as it is (its passwd file exists).")
        return True
    try:
        prepare_vnc_home(home)
    except FileExistsError as exc:
        _complain(f"{exc}; move those files away, or write ~/.vnc/passwd with vncpasswd")
        return False
    except (RuntimeError, ValueError, OSError) as exc:
        _complain(f"cannot prepare {home / '.vnc'} for TigerVNC: {exc} (run scripts/install)")
        return False
    _say(
        f"Prepared {home / '.vnc'} for TigerVNC: a random VNC password that only the gateway "
        "uses, and a terminal as the desktop."
    )
    return True


def _url_host(host: str) -> str:
    if host in ("", "0.0.0.0"):  # noqa: S104 -- comparing, not binding
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def run_demo(args: argparse.Namespace) -> int:
    """Prepare everything and serve; returns when the server stops (see the module docs).

    Args:
        args: parsed by a parser that :func:`add_demo_arguments` prepared.

    Returns:
        The exit status: 0 after a graceful stop, 1 when something could not be prepared or
        the server could not run, 2 when the catalog has problems.
    """
    from vizgate.server import add_serve_arguments, run_serve
    from vizgate.web import data_dir_of, setup_django

    config = Path(args.config).expanduser() if args.config else DEFAULT_CONFIG
    try:
        catalog = load_catalog(config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        _complain(f"the catalog {config} has problems; not starting")
        return EXIT_USAGE
    if not _prepare_vnc():
        return EXIT_FAILURE

    data_dir = data_dir_of(args.data_dir).resolve()
    url_host = _url_host(args.host)
    allowed_hosts = list(_LOOPBACK_NAMES)
    if url_host not in allowed_hosts:
        allowed_hosts.insert(0, url_host)
    try:
        setup_django(data_dir, allowed_hosts=allowed_hosts)
    except OSError as exc:
        _complain(f"cannot use the data directory {data_dir}: {exc.strerror or exc}")
        return EXIT_FAILURE

    from vizgate import accounts

    for group in sorted({service.group for service in catalog if service.group}):
        if accounts.create_group(group):
            _say(f"Created the group {group} (vizgate user add NAME --group {group} adds to it).")
    data_option = f" --data-dir {data_dir}" if args.data_dir else ""
    if accounts.user_exists(ADMIN_NAME):
        _say(
            f"The administrator {ADMIN_NAME!r} exists already; to set a new password: "
            f"vizgate user passwd {ADMIN_NAME}{data_option}"
        )
    else:
        password = secrets.token_urlsafe(12)
        accounts.create_user(ADMIN_NAME, password, admin=True, validate=False)
        # Shown once, on purpose: this is how the person running the demo learns it.
        _say(
            f"Created the administrator {ADMIN_NAME!r} with the password: {password}\n"
            "  (shown only this once; to set another: "
            f"vizgate user passwd {ADMIN_NAME}{data_option})"
        )

    url = f"http://{url_host}:{args.port}/" if args.port else "the URL printed below"
    _say(f"Open {url} in a browser and log in as {ADMIN_NAME}. Ctrl-C stops the gateway.")

    parser = argparse.ArgumentParser(prog="vizgate demo")
    add_serve_arguments(parser)
    serve_argv = [
        "--config",
        str(config),
        "--host",
        args.host,
        "--port",
        str(args.port),
        "--data-dir",
        str(data_dir),
        # A demo is over when it stops: its desktops stop with it.
        "--stop-sessions-on-exit",
    ]
    for name in allowed_hosts:
        serve_argv += ["--allowed-host", name]
    return run_serve(parser.parse_args(serve_argv))
