"""Test-double session scripts: try a gateway, or test one, without a VNC server.

A catalog entry whose ``script`` is :data:`DOUBLE_SESSION_SCRIPT` gets one of these doubles per
instance index; ``options.behaviour`` picks what it does::

    {"Try me": {"script": "/path/to/vizgate/testing/double_session.py", "count": 2,
                "options": {"behaviour": "starts"}}}

Behaviours (see :data:`BEHAVIOURS`):

``starts``
    ``start()`` opens a tiny TCP server on 127.0.0.1 (an OS-chosen port) that greets every
    client with ``RFB 003.008\\n`` and echoes what it receives, so tunnels and readiness probes
    work; ``stop()`` closes it.
``slow``
    Like ``starts`` after waiting ``options.delay`` seconds (default 2); it reports its progress
    meanwhile, as a real script may with ``report_progress()``.
``never``
    ``start()`` blocks until :func:`release_hung` is called or ``options.hang`` seconds
    (default 30) pass, then returns False. The bound keeps a forgotten test from hanging forever.
``false`` / ``raises`` / ``no_host_port`` / ``not_listening``
    ``start()`` returns False; raises ``RuntimeError("boom")``; returns True without calling
    ``set_host_port()``; reports a port nobody listens on.
``stop_raises`` / ``stop_hangs``
    Start like ``starts``; ``stop()`` closes the server, then raises, or blocks like ``never``.

``options.behaviour_by_index`` (``{"1": "false"}``) gives some instances another behaviour than
the rest: a pool with one bad node. ``options.nodes`` (``["n1", "n2"]``) gives the instances
nodes in turn, as an SSH pool's script does: ``node()`` names instance *i*'s.

Every double counts its ``start()`` and ``stop()`` calls and records whether the two ever
overlapped (the broker promises they never do); :meth:`DoubleScript.crash` makes a running
session's server vanish. The doubles of a session type are found with
:func:`instances`, since the broker realizes them itself.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import threading
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from vizgate.scripts import RemoteServiceScript

__all__ = [
    "BEHAVIOURS",
    "DOUBLE_SESSION_SCRIPT",
    "RFB_GREETING",
    "DoubleScript",
    "EchoServer",
    "FalseDouble",
    "NeverStartsDouble",
    "NoHostPortDouble",
    "NotListeningDouble",
    "RaisingDouble",
    "SlowDouble",
    "StartingDouble",
    "StopHangsDouble",
    "StopRaisesDouble",
    "forget",
    "instances",
    "realize_service",
    "release_hung",
]

logger = logging.getLogger(__name__)

#: The session script a catalog names to get these doubles.
DOUBLE_SESSION_SCRIPT: Path = Path(__file__).resolve().with_name("double_session.py")

#: What a VNC server sends first (RFC 6143 §7.1.1, ProtocolVersion).
RFB_GREETING = b"RFB 003.008\n"

# Stop reading from a client whose echo it does not drain, instead of buffering without bound.
_MAX_PENDING = 1 << 20
_JOIN_TIMEOUT = 5.0


class EchoServer:
    """A TCP server on 127.0.0.1 that greets each client with :data:`RFB_GREETING` and echoes.

    One daemon thread serves every client through a selector, so any number of probes and
    tunnels can connect. No asyncio: it also runs inside a script's worker thread.

    Args:
        host: the address to listen on.
        greeting: the bytes each new client receives first.
    """

    def __init__(self, host: str = "127.0.0.1", greeting: bytes = RFB_GREETING) -> None:
        self.host = host
        self.greeting = greeting
        self._listener = socket.create_server((host, 0))
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_reader.setblocking(False)
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._accepted = 0
        self._thread = threading.Thread(
            target=self._serve, name=f"vizgate-echo-{self.port}", daemon=True
        )
        self._thread.start()

    @property
    def accepted(self) -> int:
        """How many connections the server has accepted."""
        with self._lock:
            return self._accepted

    @property
    def is_serving(self) -> bool:
        """True until :meth:`close` has stopped the serving thread."""
        return self._thread.is_alive()

    def close(self) -> None:
        """Stop serving, close every socket and join the thread; idempotent."""
        if not self._closing.is_set():
            self._closing.set()
            with contextlib.suppress(OSError):
                self._wake_writer.send(b"\0")
        if self._thread is not threading.current_thread():
            self._thread.join(_JOIN_TIMEOUT)
        self._wake_writer.close()

    def _serve(self) -> None:
        selector = selectors.DefaultSelector()
        pending: dict[socket.socket, bytearray] = {}
        selector.register(self._listener, selectors.EVENT_READ)
        selector.register(self._wake_reader, selectors.EVENT_READ)
        try:
            while not self._closing.is_set():
                for key, events in selector.select():
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    if sock is self._wake_reader:
                        continue
                    if sock is self._listener:
                        self._accept(selector, pending)
                    else:
                        self._serve_client(selector, pending, sock, events)
        finally:
            for client in pending:
                client.close()
            selector.close()
            self._listener.close()
            self._wake_reader.close()

    def _accept(
        self, selector: selectors.BaseSelector, pending: dict[socket.socket, bytearray]
    ) -> None:
        try:
            client, _ = self._listener.accept()
        except OSError:
            return
        client.setblocking(False)
        pending[client] = bytearray(self.greeting)
        selector.register(client, selectors.EVENT_READ | selectors.EVENT_WRITE)
        with self._lock:
            self._accepted += 1

    def _serve_client(
        self,
        selector: selectors.BaseSelector,
        pending: dict[socket.socket, bytearray],
        client: socket.socket,
        events: int,
    ) -> None:
        buffer = pending[client]
        try:
            if events & selectors.EVENT_READ:
                data = client.recv(65536)
                if not data:
                    raise ConnectionResetError
                buffer += data
            if events & selectors.EVENT_WRITE and buffer:
                del buffer[: client.send(buffer)]
        except BlockingIOError:
            pass
        except OSError:
            # The client went away (a readiness probe does so at once): forget it.
            selector.unregister(client)
            del pending[client]
            client.close()
            return
        mask = selectors.EVENT_WRITE if buffer else 0
        if len(buffer) < _MAX_PENDING:
            mask |= selectors.EVENT_READ
        selector.modify(client, mask)


def _unused_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on: the OS picks a free one and it is closed again at once."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _seconds_option(options: Mapping[str, Any], key: str, default: float) -> float:
    value = options.get(key, default)
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"option {key!r} must be a number of seconds, not {value!r}") from None
    if seconds < 0:
        raise ValueError(f"option {key!r} must be 0 or more seconds, not {value!r}")
    return seconds


class DoubleScript(RemoteServiceScript):
    """The base of every double: counts calls and detects overlapping ``start()``/``stop()``.

    Subclasses implement :meth:`_start` and :meth:`_stop`.

    Attributes:
        behaviour: the ``options.behaviour`` value that selects this class.
        hang: how long a blocking behaviour waits for :func:`release_hung` (``options.hang``).
        last_options: a copy of the ``options`` the last ``start()`` received, or None.
    """

    behaviour: ClassVar[str] = ""

    def __init__(
        self,
        name: str = "",
        count: int = 1,
        index: int = 0,
        common_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(name, count=count, index=index, common_options=common_options)
        self.hang = _seconds_option(self._common_options, "hang", 30.0)
        self.last_options: dict[str, Any] | None = None
        self._calls_lock = threading.Lock()
        self._start_calls = 0
        self._stop_calls = 0
        self._running_calls = 0
        self._overlapped = False
        self._released = threading.Event()
        self._server: EchoServer | None = None

    # -- what tests read -----------------------------------------------------------------------

    @property
    def start_calls(self) -> int:
        """How many times ``start()`` was called."""
        with self._calls_lock:
            return self._start_calls

    @property
    def stop_calls(self) -> int:
        """How many times ``stop()`` was called."""
        with self._calls_lock:
            return self._stop_calls

    @property
    def overlapped(self) -> bool:
        """Did a ``start()`` or ``stop()`` ever begin while another one still ran?"""
        with self._calls_lock:
            return self._overlapped

    @property
    def server(self) -> EchoServer | None:
        """The echo server of the current session, if one runs."""
        return self._server

    def node(self) -> str | None:
        """The node of this instance, from ``options.nodes`` in turn (None without)."""
        nodes = self._common_options.get("nodes")
        if not isinstance(nodes, list) or not nodes:
            return None
        return str(nodes[self._index % len(nodes)])

    def release(self) -> None:
        """Let a ``start()`` or ``stop()`` blocked by this double return now."""
        self._released.set()

    def crash(self) -> None:
        """Make the session's VNC server vanish as if it had crashed (``stop()`` not called)."""
        self._close_server()

    # -- the script API ------------------------------------------------------------------------

    def start(
        self,
        token: str,
        timestamp: float | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> bool:
        self._enter(stop=False)
        try:
            self.last_options = dict(options or {})
            if not self._start():
                return False
            return super().start(token, timestamp=timestamp, options=options)
        finally:
            self._leave()

    def stop(self) -> bool:
        self._enter(stop=True)
        try:
            self._stop()
            return super().stop()
        finally:
            self._leave()

    # -- for subclasses ------------------------------------------------------------------------

    def _start(self) -> bool:
        """Do this behaviour's start; return what ``start()`` returns."""
        raise NotImplementedError

    def _stop(self) -> None:
        """Do this behaviour's stop."""
        self._close_server()

    def _serve(self) -> bool:
        self._close_server()
        self._server = EchoServer()
        self.set_host_port(self._server.host, self._server.port)
        return True

    def _close_server(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()

    def _block(self, seconds: float) -> None:
        """Wait until :meth:`release` or for ``seconds``; a release is used up once."""
        self._released.wait(seconds)
        self._released.clear()

    def _enter(self, *, stop: bool) -> None:
        with self._calls_lock:
            if stop:
                self._stop_calls += 1
            else:
                self._start_calls += 1
            self._running_calls += 1
            if self._running_calls > 1:
                self._overlapped = True

    def _leave(self) -> None:
        with self._calls_lock:
            self._running_calls -= 1


class StartingDouble(DoubleScript):
    """``starts``: serves at once on an OS-chosen port."""

    behaviour = "starts"

    def _start(self) -> bool:
        return self._serve()


class SlowDouble(DoubleScript):
    """``slow``: waits ``options.delay`` seconds (default 2), then serves."""

    behaviour = "slow"

    def __init__(
        self,
        name: str = "",
        count: int = 1,
        index: int = 0,
        common_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(name, count=count, index=index, common_options=common_options)
        self.delay = _seconds_option(self._common_options, "delay", 2.0)

    def _start(self) -> bool:
        self.report_progress(f"starting slowly ({self.delay:g} s)")
        self._block(self.delay)
        return self._serve()


class NeverStartsDouble(DoubleScript):
    """``never``: blocks until released (or ``options.hang`` seconds), then returns False."""

    behaviour = "never"

    def _start(self) -> bool:
        self.report_progress("never starting")
        self._block(self.hang)
        return False


class FalseDouble(DoubleScript):
    """``false``: ``start()`` returns False."""

    behaviour = "false"

    def _start(self) -> bool:
        return False


class RaisingDouble(DoubleScript):
    """``raises``: ``start()`` raises ``RuntimeError("boom")``."""

    behaviour = "raises"

    def _start(self) -> bool:
        raise RuntimeError("boom")


class NoHostPortDouble(DoubleScript):
    """``no_host_port``: ``start()`` returns True without calling ``set_host_port()``."""

    behaviour = "no_host_port"

    def _start(self) -> bool:
        return True


class NotListeningDouble(DoubleScript):
    """``not_listening``: reports a port on 127.0.0.1 that nobody listens on."""

    behaviour = "not_listening"

    def _start(self) -> bool:
        self.set_host_port("127.0.0.1", _unused_port())
        return True


class StopRaisesDouble(StartingDouble):
    """``stop_raises``: starts like ``starts``; ``stop()`` closes the server, then raises."""

    behaviour = "stop_raises"

    def _stop(self) -> None:
        self._close_server()
        raise RuntimeError("stop boom")


class StopHangsDouble(StartingDouble):
    """``stop_hangs``: starts like ``starts``; ``stop()`` closes the server, then blocks until
    released (or ``options.hang`` seconds)."""

    behaviour = "stop_hangs"

    def _stop(self) -> None:
        self._close_server()
        self._block(self.hang)


#: Every behaviour by its ``options.behaviour`` name.
BEHAVIOURS: Mapping[str, type[DoubleScript]] = {
    cls.behaviour: cls
    for cls in (
        StartingDouble,
        SlowDouble,
        NeverStartsDouble,
        FalseDouble,
        RaisingDouble,
        NoHostPortDouble,
        NotListeningDouble,
        StopRaisesDouble,
        StopHangsDouble,
    )
}

_registry_lock = threading.Lock()
# The latest double realized for each (type name, index): what instances() reports.
_registry: dict[tuple[str, int], DoubleScript] = {}
# Every double still alive, so that release_hung() also frees one a newer realize replaced.
_alive: weakref.WeakSet[DoubleScript] = weakref.WeakSet()


def realize_service(
    name: str = "",
    count: int = 1,
    index: int = 0,
    common_options: Mapping[str, Any] | None = None,
) -> DoubleScript:
    """The seed's entry point: one double for one index of a session type.

    Raises:
        ValueError: ``common_options["behaviour"]`` names no behaviour, or a duration option
            is not a number of seconds.
    """
    options = dict(common_options or {})
    behaviour = options.get("behaviour", "starts")
    by_index = options.get("behaviour_by_index") or {}
    if not isinstance(by_index, Mapping):
        raise ValueError("behaviour_by_index must map instance indexes to behaviours")
    behaviour = by_index.get(str(index), behaviour)
    cls = BEHAVIOURS.get(behaviour) if isinstance(behaviour, str) else None
    if cls is None:
        raise ValueError(
            f"unknown behaviour {behaviour!r}; choose one of: {', '.join(sorted(BEHAVIOURS))}"
        )
    double = cls(name, count=count, index=index, common_options=options)
    with _registry_lock:
        _registry[(name, index)] = double
        _alive.add(double)
    logger.debug("realized a %r double for %r index %d", behaviour, name, index)
    return double


def instances(name: str) -> list[DoubleScript]:
    """The doubles most recently realized for a session type, by index."""
    with _registry_lock:
        found = [(index, d) for (type_name, index), d in _registry.items() if type_name == name]
    return [double for _, double in sorted(found, key=lambda pair: pair[0])]


def release_hung(name: str | None = None) -> int:
    """Let every blocked ``start()``/``stop()`` of the doubles of a type (or of all) return.

    A release also reaches a call that has not blocked yet; it is used up by one wait.

    Returns:
        How many doubles were released.
    """
    with _registry_lock:
        doubles = [d for d in _alive if name is None or d._name == name]
    for double in doubles:
        double.release()
    return len(doubles)


def forget(name: str | None = None) -> None:
    """Drop the doubles of a type (or all) from :func:`instances`."""
    with _registry_lock:
        for key in [k for k in _registry if name is None or k[0] == name]:
            del _registry[key]
