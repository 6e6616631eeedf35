"""Cluster Node Session: a desktop on a render node, served by x11vnc.

The seed's "Cluster Node Session" names this script. Each start runs
``start_x11_server.sh`` on the node given by the ``host`` option: an X server (Xvfb, standing
in for a node's hardware-accelerated X server) with a terminal, served by x11vnc behind a
fresh VNC password. ``stop_x11_server.sh`` ends it. On this machine the scripts run
directly; on any other host they are fed to ``bash -s`` over ssh, so nothing needs to be
installed on the node besides Xvfb, x11vnc and (optionally) xterm and xauth.

Options (the ``options`` object of the session type in ``external_services.json``):

* ``sizes``: the sizes offered to the user; the first is the default.
* ``host``: the node to run on (default ``localhost``).
* ``hosts``: instead of ``host``, several nodes that share the type's instances in turn:
  with ``["n1", "n2"]``, instances 0 and 1 run on n1 and n2 at the first display, 2 and 3 on
  n1 and n2 at the next, and so on (``count`` = nodes x desktops per node).
* ``display_base``: a node's first instance uses X display ``display_base`` (default 200),
  its next ``display_base + 1``, ...; the VNC port is ``5900 + display``.
* ``gateway_host``: the name vizgate connects to for VNC when it differs from the ssh name
  (e.g. a node's fast-network name); default ``host``, or ``localhost`` on this machine. With
  ``hosts``, vizgate connects to each node by the name listed.
* ``ssh_user``, ``ssh_key``, ``ssh_port``: how to log in; with ``ssh_user`` set, ssh is
  used even for this machine (to run the desktop as that user).
* ``ssh_options``: extra ``ssh -o`` settings, e.g.
  ``["UserKnownHostsFile=/etc/vizgate/known_hosts"]``.
* ``ssh_connect_timeout`` (default 10 s), ``start_timeout`` (default 30 s),
  ``stop_timeout`` (default 30 s).

The options are checked when the gateway realizes the type (:func:`option_problems`): a wrong
one stops the gateway at start, every problem named.

The VNC password travels on the scripts' standard input and output only: never in argv (``ps``
shows it), the environment (``/proc/PID/environ``) or a log line. vizgate answers the VNC
server's challenge with it (``set_password``), so the browser never sees it.

A restarted gateway takes a running desktop back (``get_state``/``load_state``): the desktop's
folder on the node keeps its password, private to the account the desktop runs as, and
``x11_server_password.sh`` reads it back while the desktop's x11vnc runs. Neither the gateway's
database nor its logs ever hold it.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import socket
import string
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from nexus_remote_service import RemoteServiceScript

HERE = Path(__file__).resolve().parent
START_SCRIPT = HERE / "start_x11_server.sh"
STOP_SCRIPT = HERE / "stop_x11_server.sh"
PASSWORD_SCRIPT = HERE / "x11_server_password.sh"
# x11_server_password.sh's exit status when no desktop runs on the display.
NOTHING_RUNS = 3

SIZE_PATTERN = re.compile(r"[0-9]+x[0-9]+")
# A host name, an IPv4 address or a bare IPv6 address; never anything ssh could read as an
# option or a remote shell could expand. All patterns are used with fullmatch (a "$"
# would let a trailing newline through, and ssh hands the arguments to a shell).
HOST_PATTERN = re.compile(r"[A-Za-z0-9_.:%]+(?:-[A-Za-z0-9_.:%]+)*")
USER_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
PASSWORD_ALPHABET = string.ascii_letters + string.digits
# VNC authentication uses 8 bytes of the password (RFC 6143 section 7.2.2).
PASSWORD_LENGTH = 8


def is_this_machine(host: str) -> bool:
    """True when ``host`` names the machine this gateway runs on."""
    names = {"localhost", "127.0.0.1", "::1", socket.gethostname(), socket.getfqdn()}
    return host.lower() in {name.lower() for name in names}


def is_ssh_option(setting: str) -> bool:
    """A ``Key=Value`` setting for ``ssh -o``, never something ssh could read as a flag."""
    return not setting.startswith("-") and "=" in setting


def new_password() -> str:
    """A fresh VNC password: 8 random letters and digits."""
    return "".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(PASSWORD_LENGTH))


def run(argv: Sequence[str], stdin_text: str, timeout: float) -> tuple[int, str, str]:
    """Run ``argv`` feeding it ``stdin_text``; return ``(exit status, stdout, stderr)``.

    The command runs in a session of its own so that a timeout kills all of it (ssh, bash
    and whatever they are waiting for), not only the first process.

    Raises:
        subprocess.TimeoutExpired: it did not finish within ``timeout`` seconds.
        OSError: it could not be run at all.
    """
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(stdin_text.encode(), timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.communicate(timeout=5)
        raise
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def last_line(text: str) -> str:
    """The last non-empty line of a program's stderr, to say in one line why it failed."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no error message"


def option_problems(options: Mapping[str, Any]) -> list[str]:
    """What is wrong with a type's options, each named: the gateway refuses to start with them
    (``realize_service`` raises), so a typo is found at start, not at a user's first launch."""
    problems: list[str] = []
    host, hosts = options.get("host"), options.get("hosts")
    if host is not None and hosts is not None:
        problems.append("give host or hosts, not both")
    if hosts is not None and (not isinstance(hosts, list) or not hosts):
        problems.append(f"hosts must be a list of node names, not {hosts!r}")
        hosts = None
    for node in [host] if hosts is None else hosts:
        if node is not None and not HOST_PATTERN.fullmatch(str(node)):
            problems.append(f"invalid host {node!r}")
    user = options.get("ssh_user")
    if user and not USER_PATTERN.fullmatch(str(user)):
        problems.append(f"invalid ssh_user {user!r}")
    extras = options.get("ssh_options", [])
    if not isinstance(extras, list):
        problems.append(f"ssh_options must be a list of Key=Value settings, not {extras!r}")
        extras = []
    for extra in extras:
        if not is_ssh_option(str(extra)):
            problems.append(f"invalid ssh_options entry {extra!r} (expected Key=Value)")
    sizes = options.get("sizes", [])
    for size in sizes if isinstance(sizes, list) else [sizes]:
        if not SIZE_PATTERN.fullmatch(str(size)):
            problems.append(f"invalid size {size!r} in sizes (expected WIDTHxHEIGHT)")
    for key in ("display_base", "ssh_port"):
        value = options.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            problems.append(f"{key} must be a whole number, not {value!r}")
    for key in ("ssh_connect_timeout", "start_timeout", "stop_timeout"):
        value = options.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or value <= 0
        ):
            problems.append(f"{key} must be a number of seconds above 0, not {value!r}")
    return problems


class X11VNCSession(RemoteServiceScript):
    """One instance of the session type: one X display and VNC port on one node.

    Raises:
        ValueError: the type's options are wrong (:func:`option_problems`).
    """

    def __init__(
        self,
        name: str = "",
        count: int = 1,
        index: int = 0,
        common_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(name, count=count, index=index, common_options=common_options)
        problems = option_problems(self._common_options)
        if problems:
            raise ValueError("; ".join(problems))

    def option(self, key: str, default: Any) -> Any:
        value = self._common_options.get(key)
        return default if value is None else value

    def nodes(self) -> list[str]:
        """The nodes the type's instances run on, in turn (checked at realize time)."""
        hosts = self.option("hosts", None)
        if hosts is None:
            return [str(self.option("host", "localhost"))]
        return [str(host) for host in hosts]

    def display(self) -> int:
        return int(self.option("display_base", 200)) + self._index // len(self.nodes())

    def port(self) -> int:
        return 5900 + self.display()

    def node(self) -> str:
        """The node this instance runs on; vizgate reads it too, so that an administrator can
        pause one node of the pool (``vizgate pause --node NAME``)."""
        nodes = self.nodes()
        return nodes[self._index % len(nodes)]

    def uses_ssh(self) -> bool:
        return bool(self.option("ssh_user", "")) or not is_this_machine(self.node())

    def gateway_host(self) -> str:
        default = "localhost" if is_this_machine(self.node()) else self.node()
        if self.option("hosts", None) is not None:
            return default
        return str(self.option("gateway_host", default))

    def default_size(self) -> str:
        sizes = self.option("sizes", [])
        return str(sizes[0]) if sizes else "1600x1200"

    def ssh_argv(self, remote_args: Sequence[str]) -> list[str]:
        """``ssh ... -- HOST bash -s -- ARGS``; every piece is one argv element."""
        node = self.node()
        if not HOST_PATTERN.fullmatch(node):
            raise ValueError(f"invalid host {node!r}")
        argv = [
            "ssh",
            "-o",
            "BatchMode=yes",
            "-o",
            f"ConnectTimeout={int(self.option('ssh_connect_timeout', 10))}",
        ]
        for extra in self.option("ssh_options", []):
            extra = str(extra)
            if not is_ssh_option(extra):
                raise ValueError(f"invalid ssh_options entry {extra!r} (expected Key=Value)")
            argv += ["-o", extra]
        if self.option("ssh_port", None) is not None:
            argv += ["-p", str(int(self.option("ssh_port", 22)))]
        user = str(self.option("ssh_user", ""))
        if user:
            if not USER_PATTERN.fullmatch(user):
                raise ValueError(f"invalid ssh_user {user!r}")
            argv += ["-l", user]
        key = str(self.option("ssh_key", ""))
        if key:
            argv += ["-i", key]
        # ssh joins the remote command into one string for the remote shell: the arguments
        # are digits, WxH and fixed words, validated before they get here.
        return [*argv, "--", node, "bash", "-s", "--", *remote_args]

    def command(self, script: Path, args: Sequence[str]) -> tuple[list[str], str]:
        """The argv and the stdin prefix that run ``script args`` on the node.

        Locally bash reads the script from its file; over ssh it reads the script text from
        stdin. Either way, what the script then reads from stdin comes right after.
        """
        if self.uses_ssh():
            text = script.read_text()
            if not text.endswith("\n"):
                text += "\n"
            return self.ssh_argv(args), text
        return ["bash", str(script), *args], ""

    def fail(self, action: str, reason: object) -> bool:
        reason = " ".join(str(reason).split())
        print(f"{self!r}: {action} failed on {self.node()}: {reason}", file=sys.stderr)
        return False

    def start(
        self,
        token: str,
        timestamp: float | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> bool:
        options = dict(options or {})
        size = str(options.get("size") or self.default_size())
        if not SIZE_PATTERN.fullmatch(size):
            return self.fail("start", f"invalid size {size!r} (expected WIDTHxHEIGHT)")
        try:
            display, port = self.display(), self.port()
            listen = "localhost" if is_this_machine(self.node()) else "any"
            argv, prefix = self.command(START_SCRIPT, [str(display), str(port), size, listen])
            timeout = float(self.option("start_timeout", 30))
        except (OSError, TypeError, ValueError) as exc:
            return self.fail("start", exc)
        password = new_password()
        try:
            status, _, err = run(argv, prefix + password + "\n", timeout)
        except subprocess.TimeoutExpired:
            # The start script may have got half way: let the stop script clear it up.
            self.run_stop_script()
            return self.fail("start", f"no answer within {timeout:g} s")
        except OSError as exc:
            return self.fail("start", exc)
        if status != 0:
            return self.fail("start", last_line(err))
        self.set_password(password)
        self.set_host_port(self.gateway_host(), port)
        return super().start(token, timestamp=timestamp, options=options)

    def run_stop_script(self) -> bool:
        try:
            argv, prefix = self.command(STOP_SCRIPT, [str(self.display())])
            status, _, err = run(argv, prefix, float(self.option("stop_timeout", 30)))
        except subprocess.TimeoutExpired:
            return self.fail("stop", "no answer in time")
        except (OSError, TypeError, ValueError) as exc:
            return self.fail("stop", exc)
        if status != 0:
            return self.fail("stop", last_line(err))
        return True

    def stop(self) -> bool:
        stopped = self.run_stop_script()
        chained = super().stop()
        return stopped and chained

    def poll(self) -> bool | None:
        # Without the password (a restart that could not read it back) the gateway cannot
        # answer the VNC server: the session counts as gone, and stop() cleans the node up.
        return None if self.password() is not None else False

    def get_state(self) -> dict[str, Any]:
        """What a restarted gateway needs to find the running desktop again; never the
        password, which stays on the node."""
        if self.password() is None:
            return {}
        return {"host": self.node(), "display": self.display(), "port": self.port()}

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Take the desktop ``state`` names back: read its password from the node.

        Nothing is taken back when the catalog moved this instance to another host, display or
        port, or when no desktop runs there any more; the gateway then stops the session.
        """
        wanted = {"host": self.node(), "display": self.display(), "port": self.port()}
        if {key: state.get(key) for key in wanted} != wanted:
            print(f"{self!r}: the saved desktop {state!r} is not this instance's", file=sys.stderr)
            return
        try:
            argv, prefix = self.command(PASSWORD_SCRIPT, [str(self.display())])
            status, out, err = run(argv, prefix, float(self.option("stop_timeout", 30)))
        except subprocess.TimeoutExpired:
            self.fail("taking the desktop back", "no answer in time")
            return
        except (OSError, TypeError, ValueError) as exc:
            self.fail("taking the desktop back", exc)
            return
        password = out.strip()
        if status == NOTHING_RUNS:
            return
        if status != 0 or not password:
            self.fail("taking the desktop back", last_line(err))
            return
        self.set_password(password)
        self.set_host_port(self.gateway_host(), self.port())


def realize_service(
    name: str = "",
    count: int = 1,
    index: int = 0,
    common_options: Mapping[str, Any] | None = None,
) -> X11VNCSession:
    return X11VNCSession(name, count=count, index=index, common_options=common_options or {})
