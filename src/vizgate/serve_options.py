"""The options of ``vizgate serve`` (and ``vizgate demo``, which passes them on): their
declarations and the checks of their values."""

from __future__ import annotations

import argparse
import re

from vizgate.broker import FAILED_INSTANCE_REST
from vizgate.logs import LOG_FORMATS
from vizgate.web.proxy_trust import add_single_sign_on_arguments

__all__ = ["SECURITY_TOKEN_ENV", "add_serve_arguments"]

#: The environment variable that may hold the security token (safer than the command line,
#: which other users of the machine can read in the process list).
SECURITY_TOKEN_ENV = "VIZGATE_SECURITY_TOKEN"  # noqa: S105 -- a variable name, not a secret

_LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"must be a number of seconds, 0 or more, not {text}")
    return value


def _positive_seconds(text: str) -> float:
    value = float(text)
    if not value > 0:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, not {text}")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0..65535, not {text}")
    return value


# Path segments of letters, digits and - . _ ~ (RFC 3986's unreserved characters): nothing
# that would need quoting in a URL or a cookie's Path.
_URL_PREFIX = re.compile(r"(?:/[A-Za-z0-9._~-]+)+")


def _url_prefix(text: str) -> str:
    """``--url-prefix``: "/" or "" for the root, else ``/a/b`` (a trailing slash dropped)."""
    prefix = text.rstrip("/")
    if prefix and (not _URL_PREFIX.fullmatch(prefix) or "/." in prefix):
        raise argparse.ArgumentTypeError(
            f"must be a path like /vizgate (segments of letters, digits, - . _ ~), not {text!r}"
        )
    return prefix


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the options of ``vizgate serve`` on ``parser``."""
    parser.add_argument(
        "--config",
        required=True,
        metavar="FILE",
        help="the session catalog (the seed's external_services.json)",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    parser.add_argument(
        "--port",
        type=_port,
        default=8000,
        help="port to listen on; 0 picks a free one (default: %(default)s)",
    )
    parser.add_argument("--cert", metavar="FILE", help="TLS certificate (PEM): serve https/wss")
    parser.add_argument("--key", metavar="FILE", help="the TLS certificate's private key (PEM)")
    parser.add_argument(
        "--security-token",
        metavar="TOKEN",
        help="require this token in the security_token query field of every /v1 call; "
        f"prefer the environment variable {SECURITY_TOKEN_ENV}, which the process list "
        "does not show",
    )
    timeouts = parser.add_argument_group("session timeouts (seconds)")
    timeouts.add_argument(
        "--timeout",
        type=_seconds,
        default=300.0,
        help="reclaim a reservation nobody connected to after this (default: %(default)g)",
    )
    timeouts.add_argument(
        "--linger",
        type=_seconds,
        default=10.0,
        help="stop a session this long after its last viewer left (default: %(default)g)",
    )
    timeouts.add_argument(
        "--start-timeout",
        type=_seconds,
        default=120.0,
        help="a script's start() must return within this (default: %(default)g)",
    )
    timeouts.add_argument(
        "--ready-timeout",
        type=_seconds,
        default=30.0,
        help="the VNC server must accept connections this long after start() returned "
        "(default: %(default)g)",
    )
    timeouts.add_argument(
        "--idle-timeout",
        type=_seconds,
        default=None,
        help="end a session whose viewers sent no input for this long (default: never)",
    )
    timeouts.add_argument(
        "--max-lifetime",
        type=_seconds,
        default=None,
        help="end a session this long after it started (default: never)",
    )
    timeouts.add_argument(
        "--stop-timeout",
        type=_seconds,
        default=60.0,
        help="stop waiting for a script's stop() after this (default: %(default)g)",
    )
    parser.add_argument(
        "--failed-instance-rest",
        type=_seconds,
        default=FAILED_INSTANCE_REST,
        metavar="SECONDS",
        help="pass over an instance whose start() failed for this long while another of its "
        "type is free, e.g. a node of a pool that is down (0: never; default: %(default)g)",
    )
    parser.add_argument(
        "--stop-sessions-on-exit",
        action="store_true",
        help="stop every session when the gateway stops; by default running sessions keep "
        "running and the next start of the gateway adopts them",
    )
    parser.add_argument(
        "--ping-interval",
        type=_seconds,
        default=20.0,
        help="seconds between WebSocket pings to viewers; 0 for none (default: %(default)g)",
    )
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        default=None,
        help="database and secret key (default: $XDG_DATA_HOME/vizgate or ~/.local/share/vizgate)",
    )
    parser.add_argument(
        "--log-level",
        choices=_LOG_LEVELS,
        default="info",
        type=str.lower,
        help="lowest level logged (default: %(default)s)",
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="text: one readable line per record; json: one JSON object per line, for log "
        "collectors (default: %(default)s)",
    )
    parser.add_argument(
        "--max-sessions-per-user",
        type=_count,
        default=0,
        metavar="N",
        help="the most sessions one user may have at once over all types (administrators "
        "excepted; a type's options.max_per_user limits that type); 0 for no limit "
        "(default: %(default)s)",
    )
    logins = parser.add_argument_group("failed logins")
    logins.add_argument(
        "--login-failures",
        type=_count,
        default=5,
        metavar="N",
        help="failed logins of one account from one address within --login-window after which "
        "that address may not try again until the first is out of the window (an address may "
        "fail 10 times as often over all accounts); 0 for no limit (default: %(default)s)",
    )
    logins.add_argument(
        "--login-window",
        type=_positive_seconds,
        default=900.0,
        metavar="SECONDS",
        help="how long a failed login counts (default: %(default)g)",
    )
    parser.add_argument(
        "--history-days",
        type=_count,
        default=0,
        metavar="N",
        help="remove the history (audit trail) of sessions that ended more than N days ago; "
        "0 keeps it all (default: %(default)s). Expired logins are always removed",
    )
    parser.add_argument(
        "--url-prefix",
        type=_url_prefix,
        default="",
        metavar="PATH",
        help="serve the gateway under this path behind a reverse proxy, e.g. /vizgate; the "
        "proxy may pass paths on unchanged or strip the prefix (default: the root)",
    )
    parser.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="HOST",
        help="a host name browsers use to reach this server; repeat for more (default: the "
        "--host address, localhost and 127.0.0.1)",
    )
    add_single_sign_on_arguments(parser)
