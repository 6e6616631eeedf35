"""``vizgate serve``: one process with the portal, the REST API, the tunnel and the broker.

uvicorn (uvloop, the ``websockets`` WebSocket implementation) serves one ASGI application
(:class:`vizgate.web.asgi.Gateway`): HTTP goes to Django, WebSockets to the tunnel, and the
lifespan opens the broker at start-up and stops every session at shutdown. SIGTERM, SIGINT
and ``/v1/stop`` stop the server gracefully; the exit status is then 0.

Exit statuses of :func:`run_serve`:

* 0: the server ran and stopped gracefully.
* 1: the server could not run (the address is in use, the data directory is not writable,
  the application failed to start for another reason).
* 2: bad usage or a bad configuration: the catalog has problems (each printed to stderr), a
  session script cannot be loaded, the certificate or key cannot be used.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import os
import re
import signal
import socket
import ssl
import sys
from collections.abc import Callable, Iterator, Sequence
from types import FrameType

import uvicorn
import uvloop

from vizgate.broker import FAILED_INSTANCE_REST, Broker
from vizgate.catalog import load_catalog
from vizgate.exceptions import ConfigError, DatabaseSetupError, ScriptError
from vizgate.fastpath import TakeoverProtocol
from vizgate.lifecycle import Timeouts
from vizgate.logs import LOG_FORMATS, configure_logging
from vizgate.pause import PauseFile, TypePauses
from vizgate.web.proxy_trust import (
    add_single_sign_on_arguments,
    logout_url_problem,
    single_sign_on_of,
    trusted_proxy_layers,
)

__all__ = [
    "EXIT_FAILURE",
    "EXIT_OK",
    "EXIT_USAGE",
    "SECURITY_TOKEN_ENV",
    "WS_IMPLEMENTATION",
    "add_serve_arguments",
    "main",
    "run_serve",
]

# Named, not __name__: run as ``python -m vizgate.server`` the module is ``__main__``.
logger = logging.getLogger("vizgate.server")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

#: The environment variable that may hold the security token (safer than the command line,
#: which other users of the machine can read in the process list).
SECURITY_TOKEN_ENV = "VIZGATE_SECURITY_TOKEN"  # noqa: S105 -- a variable name, not a secret

# Open connections get this long to finish after a stop was asked for; then they are cut.
GRACEFUL_SHUTDOWN_SECONDS = 10

#: uvicorn's WebSocket implementation: its ``websockets`` sans-I/O protocol (flow control both
#: ways, keepalive pings), which the tunnel takes over once a viewer's relay runs
#: (:mod:`vizgate.fastpath`).
WS_IMPLEMENTATION: type[asyncio.Protocol] = TakeoverProtocol

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


def run_serve(args: argparse.Namespace) -> int:
    """Run the server until it is stopped.

    Args:
        args: parsed by a parser that :func:`add_serve_arguments` prepared.

    Returns:
        The exit status (see the module's documentation).
    """
    configure_logging(args.log_level, log_format=args.log_format)
    if bool(args.cert) != bool(args.key):
        _complain("--cert and --key go together: give both to serve https, or neither")
        return EXIT_USAGE

    try:
        catalog = load_catalog(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        count = len(exc.problems)
        _complain(f"{count} problem{'s' if count != 1 else ''} in {args.config}; not starting")
        return EXIT_USAGE
    for warning in catalog.warnings:
        logger.warning("%s", warning)

    security_token = _take_security_token(args.security_token)
    https = bool(args.cert)
    # uvicorn's default, read here so that the identity headers are trusted from the same proxies.
    trusted_proxies = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")
    try:
        single_sign_on = single_sign_on_of(args, trusted_proxies)
    except ValueError as exc:
        _complain(str(exc))
        return EXIT_USAGE
    logout_problem = logout_url_problem(args.logout_url)
    if logout_problem is not None:
        _complain(f"--logout-url: {logout_problem}")
        return EXIT_USAGE

    from vizgate.web import data_dir_of, setup_django

    data_dir = data_dir_of(args.data_dir)
    allowed_hosts = args.allowed_host or _default_allowed_hosts(args.host)
    if not args.allowed_host and (not args.host or _is_wildcard(args.host)):
        logger.warning(
            "listening on every address, but only %s are allowed as host names; name the "
            "others with --allowed-host",
            ", ".join(allowed_hosts),
        )
    try:
        setup_django(
            data_dir.resolve(),
            allowed_hosts=allowed_hosts,
            https=https,
            url_prefix=args.url_prefix,
            single_sign_on=single_sign_on,
            logout_url=args.logout_url,
        )
    except OSError as exc:
        _complain(f"cannot use the data directory {data_dir}: {exc.strerror or exc}")
        return EXIT_FAILURE
    except DatabaseSetupError as exc:
        _complain(str(exc))
        return EXIT_FAILURE

    if single_sign_on is not None and single_sign_on.lowercase:
        _warn_of_capital_accounts()

    from vizgate.web import runtime
    from vizgate.web.asgi import build_application
    from vizgate.web.portal import throttle
    from vizgate.web.portal.store import DjangoSessionStore

    throttle.configure(args.login_failures, args.login_window)

    broker = Broker(
        catalog,
        timeouts=Timeouts(
            reservation=args.timeout,
            start=args.start_timeout,
            ready=args.ready_timeout,
            linger=args.linger,
            # 0 switches a limit off, as leaving it out does.
            idle=args.idle_timeout or None,
            max_lifetime=args.max_lifetime or None,
            stop=args.stop_timeout,
        ),
        store=DjangoSessionStore(),
        max_sessions_per_user=args.max_sessions_per_user or None,
        paused=PauseFile.in_data_dir(data_dir.resolve()).reason,
        type_paused=TypePauses.in_data_dir(data_dir.resolve()).reason,
        failed_instance_rest=args.failed_instance_rest,
    )
    ping_interval = args.ping_interval or None
    application = build_application(
        broker,
        stop_sessions_on_exit=args.stop_sessions_on_exit,
        url_prefix=args.url_prefix,
        history_days=args.history_days or None,
    )
    config = uvicorn.Config(
        trusted_proxy_layers(
            application, trusted_proxies, single_sign_on.headers if single_sign_on else ()
        ),
        # trusted_proxy_layers reads X-Forwarded-* (and the identity headers) itself.
        proxy_headers=False,
        forwarded_allow_ips=trusted_proxies,
        loop="uvloop",
        http="httptools",
        ws=WS_IMPLEMENTATION,
        lifespan="on",
        # vizgate.logs has configured logging (with redaction); uvicorn must not redo it.
        log_config=None,
        log_level=None,
        # Keepalive pings, so that proxies and load balancers keep idle viewers' connections.
        ws_ping_interval=ping_interval,
        ws_ping_timeout=ping_interval,
        # VNC framebuffer updates are already encoded (or raw pixels): compressing them again
        # per message costs the gateway CPU for little gain.
        ws_per_message_deflate=False,
        ssl_certfile=args.cert,
        ssl_keyfile=args.key,
        server_header=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )
    try:
        config.load()
    except (OSError, ssl.SSLError) as exc:
        _complain(f"cannot use --cert {args.cert} / --key {args.key}: {exc}")
        return EXIT_USAGE

    try:
        sock = _bind(args.host, args.port)
    except OSError as exc:
        _complain(f"cannot listen on {args.host} port {args.port}: {exc.strerror or exc}")
        return EXIT_FAILURE

    scheme = "https" if https else "http"
    url = f"{scheme}://{_url_host(args.host)}:{sock.getsockname()[1]}{args.url_prefix}/"
    server = _Server(config, on_started=lambda: _announce(url))

    def request_stop() -> None:
        server.should_exit = True

    runtime.configure(security_token=security_token, request_stop=request_stop)
    try:
        with (
            sock,
            _signals_handled_by_server(),
            asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner,
        ):
            runner.run(server.serve(sockets=[sock]))
    except SystemExit:
        # uvicorn exits this way when the lifespan start-up failed; it logged why.
        if isinstance(application.startup_error, ScriptError):
            _complain("a session script could not be loaded; not starting")
            return EXIT_USAGE
        return EXIT_FAILURE
    finally:
        runtime.reset()
    logger.info("stopped")
    return EXIT_OK


class _Server(uvicorn.Server):
    """uvicorn's server, telling us when it accepts connections on sockets we bound."""

    def __init__(self, config: uvicorn.Config, *, on_started: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_started = on_started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            self._on_started()


def _announce(url: str) -> None:
    # Exactly this line on stdout: tools and tests read it to learn the port.
    print(f"vizgate listening on {url}", flush=True)


def _warn_of_capital_accounts() -> None:
    from vizgate.accounts import users_with_capitals

    names = users_with_capitals()
    if names:
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        logger.warning(
            "--remote-user-lowercase: nobody signs in as %s any more (their users get new "
            "lower-case accounts, without their groups); keep an account with 'vizgate user "
            "rename %s %s'",
            shown,
            names[0],
            names[0].lower(),
        )


def _complain(message: str) -> None:
    print(f"vizgate serve: {message}", file=sys.stderr)


def _take_security_token(given: str | None) -> str | None:
    from_env = os.environ.pop(SECURITY_TOKEN_ENV, None)
    # Popped: session scripts run subprocesses, and they must not inherit the admin's token.
    return given or from_env or None


def _default_allowed_hosts(host: str) -> list[str]:
    hosts = ["localhost", "127.0.0.1", "[::1]"]
    if not host or _is_wildcard(host):
        # A wildcard address is not a host name anyone browses to; --allowed-host names them.
        return hosts
    name = _url_host(host)
    return hosts if name in hosts else [name, *hosts]


def _is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def _url_host(host: str) -> str:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    return f"[{address}]" if address.version == 6 else str(address)


def _bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port (port 0: a free one), for uvicorn to listen on."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        # A restart must not wait for the old connections' TIME_WAIT to pass.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


@contextlib.contextmanager
def _signals_handled_by_server() -> Iterator[None]:
    """Make SIGINT and SIGTERM a graceful stop that ends with exit status 0.

    uvicorn catches both while it serves and, once it has stopped, raises them again so the
    previous handlers run; the default ones would kill the process or raise
    KeyboardInterrupt. These handlers take that second delivery and let the stop finish.
    """

    def handled(signum: int, frame: FrameType | None) -> None:
        logger.info("received %s", signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handled) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m vizgate.server``: the same as ``vizgate serve``.

    Args:
        argv: the arguments after the program name; ``sys.argv[1:]`` when None.
    """
    parser = argparse.ArgumentParser(
        prog="vizgate serve",
        description="Serve the portal, the /v1 REST API and the WebSocket tunnel, and run the "
        "sessions of a catalog.",
    )
    add_serve_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    return run_serve(args)


if __name__ == "__main__":
    raise SystemExit(main())
