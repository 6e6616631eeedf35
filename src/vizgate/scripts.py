"""The seed's script API: ``RemoteServiceScript`` and loading an admin's script file.

A session type names a Python file. vizgate imports it as its own module and calls its
``realize_service(name=, count=, index=, common_options=)`` once per instance index; each call
returns a :class:`RemoteServiceScript` whose ``start()`` and ``stop()`` create and delete one
session (seed: "Remote Session Configuration").

The broker calls ``start()`` and ``stop()`` from a worker thread, never both at once for the
same instance, and owns every timeout: a script only starts, stops and reports.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import logging
import sys
import threading
import time
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vizgate.exceptions import ScriptError

__all__ = ["RemoteServiceScript", "load_script_module", "realize_instances"]

logger = logging.getLogger(__name__)


class RemoteServiceScript:
    """Starts and stops one instance of a session type; subclass it in a session script.

    Subclasses must implement :meth:`start` and :meth:`stop` and chain to ``super()`` as the
    seed's example does. The attributes below are the seed's and stay stable.

    Attributes:
        _name: the session type's name (the key in ``external_services.json``).
        _count: how many instances of this type may run at once.
        _index: this instance's number, ``0 .. count-1``; use it to pick non-conflicting
            resources (display numbers, ports, GPUs, nodes).
        _common_options: the type's ``options`` object from the configuration file.

    Optional hooks a subclass may implement:

    * ``poll() -> bool | None``: is the session still alive? ``True`` alive, ``False`` dead,
      ``None`` unknown (the default). vizgate asks it when it re-adopts a session after a
      restart and while a session runs.
    * ``report_progress(message)`` (provided): what a slow ``start()`` is waiting for, shown
      to the person waiting.
    * ``set_password(password)`` (provided): a per-session VNC password the script also gives to
      its VNC server (in a 0600 file). vizgate answers the VNC server's authentication with it,
      so the browser never holds it. It is kept only in memory.
    * ``set_end_time(timestamp)`` (provided): when the session's VNC server will stop by itself
      (a batch job's time limit), in seconds since the epoch. vizgate warns the viewers a minute
      before and ends the session then, saying why, rather than letting it vanish.
    * ``get_state() -> dict`` and ``load_state(dict)``: what the script needs besides its index
      to find its session again after the gateway restarts (:mod:`vizgate.script_hooks`).
    * ``node() -> str``: the machine this instance runs on, known before ``start()`` (a pool of
      hosts gives each index its node); administrators can then pause one node of the pool.
    """

    def __init__(
        self,
        name: str = "",
        count: int = 1,
        index: int = 0,
        common_options: Mapping[str, Any] | None = None,
    ) -> None:
        self._name = name
        self._count = count
        self._index = index
        self._common_options: dict[str, Any] = dict(common_options or {})
        self._host: str | None = None
        self._port: int | None = None
        self._token: str | None = None
        self._timestamp: float | None = None
        self._options: dict[str, Any] = {}
        self._password: bytes | None = None
        self._progress = ""
        self._end_time: float | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._name!r} index={self._index}>"

    def set_host_port(self, host: str, port: int) -> None:
        """Say where the VNC server of this session accepts connections.

        ``start()`` must call it before it returns True; vizgate tunnels this port over the
        browser's WebSocket.
        """
        if not isinstance(host, str) or not host:
            raise ValueError(f"set_host_port: host must be a non-empty string, not {host!r}")
        port_number = int(port)
        if not 0 < port_number < 65536:
            raise ValueError(f"set_host_port: port must be 1..65535, not {port!r}")
        with self._lock:
            self._host = host
            self._port = port_number

    def host_port(self) -> tuple[str, int] | None:
        """The ``(host, port)`` given to :meth:`set_host_port`, or None if it was not called."""
        with self._lock:
            if self._host is None or self._port is None:
                return None
            return self._host, self._port

    def set_password(self, password: str | bytes) -> None:
        """Set the VNC password vizgate answers the VNC server's challenge with.

        VNC authentication uses at most the first 8 bytes (RFC 6143 §7.2.2).
        """
        raw = password.encode() if isinstance(password, str) else bytes(password)
        if not raw:
            raise ValueError("set_password: the password is empty")
        with self._lock:
            self._password = raw

    def set_end_time(self, timestamp: float | None) -> None:
        """Say when the session's VNC server will stop by itself (seconds since the epoch, e.g.
        a batch job's time limit), or None when it will not."""
        with self._lock:
            self._end_time = None if timestamp is None else float(timestamp)

    def end_time(self) -> float | None:
        """The time given to :meth:`set_end_time` for the current session, if any."""
        with self._lock:
            return self._end_time

    def report_progress(self, message: str) -> None:
        """Tell the person waiting what ``start()`` is doing (e.g. ``"PENDING (Resources)"``).

        Shown on the viewer's status overlay and status pages while the session starts; may be
        called from ``start()``'s thread at any time.
        """
        with self._lock:
            self._progress = str(message)[:200]

    def progress(self) -> str:
        """The last message given to :meth:`report_progress` during the current start."""
        with self._lock:
            return self._progress

    def password(self) -> bytes | None:
        """The password given to :meth:`set_password` for the current session, if any."""
        with self._lock:
            return self._password

    def start(
        self,
        token: str,
        timestamp: float | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> bool:
        """Begin the session; return False when it cannot start.

        Subclasses start their VNC server, call :meth:`set_host_port`, then chain here.
        ``options`` holds at least ``username`` and ``size``.
        """
        self._token = token
        self._timestamp = time.time() if timestamp is None else timestamp
        self._options = dict(options or {})
        return True

    def stop(self) -> bool:
        """End the session started by :meth:`start`; subclasses chain here last."""
        self._token = None
        self._options = {}
        return True

    def poll(self) -> bool | None:
        """Is the session alive? True, False, or None when the script cannot tell."""
        return None

    def reset(self) -> None:
        """Forget what the previous session reported; vizgate calls it before each start()."""
        with self._lock:
            self._host = None
            self._port = None
            self._password = None
            self._progress = ""
            self._end_time = None


_modules_lock = threading.Lock()
_modules: dict[Path, types.ModuleType] = {}


def _module_name(path: Path) -> str:
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
    stem = "".join(c if c.isalnum() else "_" for c in path.stem)
    return f"vizgate_script_{stem}_{digest}"


def load_script_module(path: Path) -> types.ModuleType:
    """Import a session script by path as a module of its own.

    Two session types may use files of the same name from different folders, so the module
    name is derived from the resolved path. A file is imported once per process. The file's
    folder is appended to ``sys.path`` so that the script can import helpers beside it.

    Raises:
        ScriptError: the file is missing or raises while it is imported.
    """
    resolved = path.resolve()
    with _modules_lock:
        cached = _modules.get(resolved)
        if cached is not None:
            return cached
        if not resolved.is_file():
            raise ScriptError(f"{resolved}: script file not found")
        name = _module_name(resolved)
        spec = importlib.util.spec_from_file_location(name, resolved)
        if spec is None or spec.loader is None:
            raise ScriptError(f"{resolved}: cannot be imported as a Python module")
        module = importlib.util.module_from_spec(spec)
        folder = str(resolved.parent)
        if folder not in sys.path:
            sys.path.append(folder)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException as exc:
            del sys.modules[name]
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise ScriptError(f"{resolved}: failed to import: {type(exc).__name__}: {exc}") from exc
        _modules[resolved] = module
        return module


def _implements(instance: RemoteServiceScript, method: str) -> bool:
    return getattr(type(instance), method) is not getattr(RemoteServiceScript, method)


def realize_instances(
    name: str, script: Path, count: int, common_options: Mapping[str, Any]
) -> list[RemoteServiceScript]:
    """Call the script's ``realize_service`` once per index, as the seed specifies.

    Each instance gets its own deep copy of ``common_options``.

    Raises:
        ScriptError: no ``realize_service``, it raised, or it returned something that is not a
            ``RemoteServiceScript`` implementing ``start()`` and ``stop()``.
    """
    module = load_script_module(script)
    realize = getattr(module, "realize_service", None)
    if not callable(realize):
        raise ScriptError(f"{script}: defines no realize_service() function")
    instances: list[RemoteServiceScript] = []
    for index in range(count):
        try:
            instance = realize(
                name=name,
                count=count,
                index=index,
                common_options=copy.deepcopy(dict(common_options)),
            )
        except (Exception, SystemExit) as exc:
            raise ScriptError(
                f"{script}: realize_service(index={index}) raised {type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(instance, RemoteServiceScript):
            raise ScriptError(
                f"{script}: realize_service(index={index}) returned {type(instance).__name__}, "
                "not a RemoteServiceScript"
            )
        missing = [m for m in ("start", "stop") if not _implements(instance, m)]
        if missing:
            raise ScriptError(
                f"{script}: {type(instance).__name__} must implement "
                + " and ".join(f"{m}()" for m in missing)
            )
        instances.append(instance)
    logger.debug("realized %d instance(s) of %r from %s", count, name, script)
    return instances
