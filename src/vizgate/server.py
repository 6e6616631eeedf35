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
import signal
import socket
import ssl
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType

import uvicorn
import uvloop

from vizgate.broker import Broker
from vizgate.catalog import load_catalog
from vizgate.certificates import CertificateReloader, watch_certificate
from vizgate.exceptions import ConfigError, DatabaseSetupError, ScriptError
from vizgate.fastpath import TakeoverProtocol
from vizgate.lifecycle import Timeouts
from vizgate.logs import configure_logging
from vizgate.pause import NodePauses, PauseFile, TypePauses
from vizgate.serve_options import SECURITY_TOKEN_ENV, add_serve_arguments
from vizgate.served_catalog import ServedCatalog
from vizgate.web.proxy_trust import (
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

# Open connections get this long to finish after a stop was asked for; then they are cut.
GRACEFUL_SHUTDOWN_SECONDS = 10

#: uvicorn's WebSocket implementation: its ``websockets`` sans-I/O protocol (flow control both
#: ways, keepalive pings), which the tunnel takes over once a viewer's relay runs
#: (:mod:`vizgate.fastpath`).
WS_IMPLEMENTATION: type[asyncio.Protocol] = TakeoverProtocol


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
    # As given, for messages; resolved, for everything that uses it.
    resolved_data_dir = data_dir.resolve()
    allowed_hosts = args.allowed_host or _default_allowed_hosts(args.host)
    if not args.allowed_host and (not args.host or _is_wildcard(args.host)):
        logger.warning(
            "listening on every address, but only %s are allowed as host names; name the "
            "others with --allowed-host",
            ", ".join(allowed_hosts),
        )
    try:
        setup_django(
            resolved_data_dir,
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
        paused=PauseFile.in_data_dir(resolved_data_dir).reason,
        paused_types=TypePauses.in_data_dir(resolved_data_dir).reasons,
        paused_nodes=NodePauses.in_data_dir(resolved_data_dir).reasons,
        failed_instance_rest=args.failed_instance_rest,
    )
    ping_interval = args.ping_interval or None
    application = build_application(
        broker,
        stop_sessions_on_exit=args.stop_sessions_on_exit,
        url_prefix=args.url_prefix,
        history_days=args.history_days or None,
        on_open=lambda: _record_served_catalog(broker, Path(args.config), resolved_data_dir),
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
    reloader = None
    if https and config.ssl is not None:
        reloader = CertificateReloader(config.ssl, Path(args.cert), Path(args.key))
    server = _Server(config, on_started=lambda: _announce(url), certificate=reloader)

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
    """uvicorn's server, telling us when it accepts connections on sockets we bound; serving
    https, it takes up a renewed certificate (:mod:`vizgate.certificates`)."""

    def __init__(
        self,
        config: uvicorn.Config,
        *,
        on_started: Callable[[], None],
        certificate: CertificateReloader | None = None,
    ) -> None:
        super().__init__(config)
        self._on_started = on_started
        self._certificate = certificate
        self._watcher: asyncio.Task[None] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if not self.started:
            return
        if self._certificate is not None:
            self._watcher = asyncio.create_task(watch_certificate(self._certificate))
        # SIGHUP (systemctl reload) would end the process by default.
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._reload)
        self._on_started()

    def _reload(self) -> None:
        if self._certificate is None:
            logger.info("SIGHUP: nothing to reload (the gateway does not serve https itself)")
            return
        self._certificate.check(force=True)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        if self._watcher is not None:
            self._watcher.cancel()
        await super().shutdown(sockets=sockets)


def _record_served_catalog(broker: Broker, config: Path, data_dir: Path) -> None:
    """Tell the commands run beside the gateway which types and nodes it serves
    (:mod:`vizgate.served_catalog`)."""
    served = ServedCatalog(
        config=str(config.resolve()),
        types=tuple(service.name for service in broker.catalog),
        nodes=tuple(node.name for node in broker.nodes() if node.instances),
    )
    try:
        served.save(data_dir)
    except OSError as exc:
        logger.warning("cannot record the catalog served in %s: %s", data_dir, exc.strerror)


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
