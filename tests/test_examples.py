"""The examples folder: the seed's configuration and scripts, run for real.

The integration tests start real X and VNC servers on displays chosen free, read the RFB
banner from the reported port, and check after ``stop()`` that no process of the display is
left (by PID) and the port is closed.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sshd import SshServer, running_sshd
from support import (
    VncHome,
    free_display,
    is_running,
    kill_pid_tree,
    listening_addresses,
    pids_of,
    pids_on_display,
    port_accepts,
    read_rfb_banner,
    require_binaries,
    scaled,
    vnc_authenticate,
    wait_until,
)
from vizgate.script_hooks import script_node
from vizgate.scripts import RemoteServiceScript, ScriptError, realize_instances

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
DESKTOP_SESSION = EXAMPLES / "desktop_session.py"
X11VNC_SESSION = EXAMPLES / "x11vnc_desktop_session.py"
START_X11 = EXAMPLES / "start_x11_server.sh"
STOP_X11 = EXAMPLES / "stop_x11_server.sh"

# The configuration printed in the seed ("Remote Session Configuration"), as data.
SEED_CONFIG = {
    "Local Software Session": {
        "script": "desktop_session.py",
        "count": 2,
        "options": {"sizes": ["12080x1024", "1600x1200"], "display_base": 100},
    },
    "Cluster Node Session": {
        "script": "x11vnc_desktop_session.py",
        "count": 1,
        "options": {"sizes": ["1600x1200"], "group": "ClusterRendering", "host": "n8"},
    },
}

LOOPBACK = {"127.0.0.1", "::1"}
X11_PROGRAMS = ("bash", "setsid", "Xvfb", "x11vnc", "xterm", "xauth")


def x11_state_dir(display: int) -> Path:
    return Path(f"/tmp/vizgate-x11-{os.getuid()}-{display}")


def recorded_pids(display: int) -> dict[str, int]:
    state = x11_state_dir(display)
    return {name: int((state / f"{name}.pid").read_text()) for name in ("xvfb", "x11vnc", "xterm")}


def x11vnc_instance(display_base: int, **options: Any) -> RemoteServiceScript:
    common = {"sizes": ["1600x1200"], "host": "localhost", "display_base": display_base}
    common.update(options)
    [instance] = realize_instances("Cluster Node Session", X11VNC_SESSION, 1, common)
    return instance


def clean_up_display(display: int) -> None:
    """Teardown: whatever a failed test left on ``display`` goes, by PID."""
    for pid in pids_on_display(display):
        kill_pid_tree(pid)
    lock = Path(f"/tmp/.X{display}-lock")
    try:
        owner = int(lock.read_text().strip())
    except (OSError, ValueError):
        owner = 0
    # Only the files of a server that is gone; never those of a live display.
    if owner and not is_running(owner):
        lock.unlink(missing_ok=True)
        Path(f"/tmp/.X11-unix/X{display}").unlink(missing_ok=True)
    shutil.rmtree(x11_state_dir(display), ignore_errors=True)


@pytest.fixture
def x11_display() -> Iterator[int]:
    display = free_display(start=200)
    yield display
    if shutil.which("bash"):
        subprocess.run(["bash", str(STOP_X11), str(display)], check=False, timeout=60)
    clean_up_display(display)


@pytest.fixture
def vnc_display() -> Iterator[int]:
    display = free_display(start=100)
    yield display
    if pids_on_display(display) and shutil.which("vncserver"):
        subprocess.run(["vncserver", "-kill", f":{display}"], check=False, timeout=60)
    clean_up_display(display)


# ---------------------------------------------------------------------------------------
# The seed's files


def test_seed_config_is_kept_verbatim() -> None:
    text = (EXAMPLES / "external_services.seed.json").read_text()

    assert json.loads(text) == SEED_CONFIG
    assert '"12080x1024"' in text


def test_example_config_is_the_seeds_with_the_vnc_password_file() -> None:
    """The one change: the gateway answers the desktop's VNC authentication (vncserver reads
    the same ~/.vnc/passwd), so the browser never holds that password."""
    config = json.loads((EXAMPLES / "external_services.json").read_text())
    options = config["Local Software Session"]["options"]
    assert options.pop("vnc_password_file") == "~/.vnc/passwd"
    assert config == SEED_CONFIG


def test_every_script_the_config_names_is_beside_it() -> None:
    for service in SEED_CONFIG.values():
        assert (EXAMPLES / str(service["script"])).is_file()
    for script in (START_X11, STOP_X11):
        assert script.read_text().startswith("#!/bin/bash\n")


def test_seed_desktop_session_realizes_one_instance_per_index() -> None:
    service = SEED_CONFIG["Local Software Session"]
    options = service["options"]
    assert isinstance(options, dict)

    instances = realize_instances("Local Software Session", DESKTOP_SESSION, 2, options)

    assert [type(i).__name__ for i in instances] == ["SimpleVNC", "SimpleVNC"]
    assert [i._index for i in instances] == [0, 1]
    assert all(i._common_options == options for i in instances)


def test_x11vnc_instances_use_one_display_and_port_each() -> None:
    options = {"sizes": ["1600x1200"], "host": "n8", "display_base": 300}

    instances = realize_instances("Cluster Node Session", X11VNC_SESSION, 3, options)

    assert [(i.display(), i.port()) for i in instances] == [  # type: ignore[attr-defined]
        (300, 6200),
        (301, 6201),
        (302, 6202),
    ]


def test_x11vnc_instances_name_their_node_so_one_node_can_be_paused() -> None:
    pool = realize_instances("Render", X11VNC_SESSION, 4, {"hosts": ["n1", "n2"]})
    [single] = realize_instances("Render", X11VNC_SESSION, 1, {"host": "n8"})

    assert [script_node(instance) for instance in pool] == ["n1", "n2", "n1", "n2"]
    assert script_node(single) == "n8"


def test_x11vnc_default_display_base_is_200() -> None:
    [instance] = realize_instances("Cluster Node Session", X11VNC_SESSION, 1, {"host": "n8"})

    assert instance.display() == 200  # type: ignore[attr-defined]


def test_x11vnc_builds_the_ssh_command_as_an_argv_list() -> None:
    instance = x11vnc_instance(
        200,
        host="n8",
        ssh_user="render",
        ssh_key="/etc/vizgate/id_ed25519",
        ssh_port=2222,
        ssh_connect_timeout=4,
        ssh_options=["UserKnownHostsFile=/etc/vizgate/known_hosts"],
    )

    argv, stdin_prefix = instance.command(START_X11, ["200", "6100", "1600x1200", "any"])  # type: ignore[attr-defined]

    assert argv == [
        "ssh",
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=4",
        "-o",
        "UserKnownHostsFile=/etc/vizgate/known_hosts",
        "-p",
        "2222",
        "-l",
        "render",
        "-i",
        "/etc/vizgate/id_ed25519",
        "--",
        "n8",
        "bash",
        "-s",
        "--",
        "200",
        "6100",
        "1600x1200",
        "any",
    ]
    # The script text goes first on stdin, the password line after it.
    assert stdin_prefix == START_X11.read_text()


@pytest.mark.parametrize(
    "host", ["-oProxyCommand=touch /tmp/x", "n8;reboot", "n8 extra", "n8\n", "n8\nreboot", ""]
)
def test_x11vnc_refuses_a_host_that_is_not_a_host_name(host: str) -> None:
    with pytest.raises(ScriptError, match=f"invalid host {re.escape(repr(host))}"):
        x11vnc_instance(200, host=host)


@pytest.mark.parametrize(
    "size", ["800", "800x600x24", "800x600; rm -rf /", "800x600\n", "-800x600"]
)
def test_x11vnc_refuses_a_malformed_size_before_running_anything(
    size: str, x11_display: int, capsys: pytest.CaptureFixture[str]
) -> None:
    display = x11_display
    # The offered sizes are checked when the gateway starts; a start asked for another size
    # (no gateway would) is refused too. No size at all is the first offered.
    instance = x11vnc_instance(display)

    assert instance.start("token", options={"size": size, "username": "u"}) is False

    assert "invalid size" in capsys.readouterr().err
    assert instance.host_port() is None
    assert not x11_state_dir(display).exists()


# ---------------------------------------------------------------------------------------
# x11vnc example, for real


@pytest.mark.integration
def test_x11vnc_session_starts_and_stops_on_this_machine(x11_display: int) -> None:
    require_binaries(*X11_PROGRAMS)
    instance = x11vnc_instance(x11_display)
    started = time.monotonic()

    assert instance.start("token", options={"size": "800x600", "username": "u"}) is True

    assert time.monotonic() - started < scaled(15)
    port = 5900 + x11_display
    assert instance.host_port() == ("localhost", port)
    assert read_rfb_banner("127.0.0.1", port, scaled(5)) == b"RFB 003.008\n"
    assert listening_addresses(port)
    assert listening_addresses(port) <= LOOPBACK
    password = instance.password()
    assert password is not None
    assert len(password) == 8
    assert vnc_authenticate("127.0.0.1", port, password) is True
    assert vnc_authenticate("127.0.0.1", port, b"wrong!!!") is False

    pids = recorded_pids(x11_display)
    assert pids["xvfb"] in pids_of("Xvfb")
    assert pids["x11vnc"] in pids_of("x11vnc")
    assert pids["xterm"] in pids_of("xterm")
    assert "800x600x24" in Path(f"/proc/{pids['xvfb']}/cmdline").read_bytes().decode()
    # The password is in no argv or environment, and on disk only in the file a restarted
    # gateway reads it back from, private to this account.
    state = x11_state_dir(x11_display)
    holding = {f.name for f in state.iterdir() if f.is_file() and password in f.read_bytes()}
    assert holding == {"vnc-password"}
    assert (state / "vnc-password").stat().st_mode & 0o777 == 0o600
    assert state.stat().st_mode & 0o777 == 0o700
    for pid in pids.values():
        assert password not in Path(f"/proc/{pid}/cmdline").read_bytes()
        assert password not in Path(f"/proc/{pid}/environ").read_bytes()

    # A restarted gateway's instance takes the desktop back from the saved state alone.
    saved = instance.get_state()
    assert password not in repr(saved).encode()
    again = x11vnc_instance(x11_display)
    again.load_state(saved)
    assert again.password() == password
    assert again.host_port() == ("localhost", port)
    assert again.poll() is None
    # ... but not a desktop the catalog gave another display.
    moved = x11vnc_instance(x11_display + 1)
    moved.load_state(saved)
    assert moved.password() is None
    assert moved.poll() is False

    assert instance.stop() is True

    wait_until(
        lambda: not any(is_running(pid) for pid in pids.values()),
        scaled(10),
        message=f"Xvfb/x11vnc/xterm {pids} still running after stop()",
    )
    assert pids_on_display(x11_display) == set()
    assert not port_accepts("127.0.0.1", port)
    assert not state.exists()
    assert not Path(f"/tmp/.X{x11_display}-lock").exists()
    # Once stopped, nothing is taken back.
    after = x11vnc_instance(x11_display)
    after.load_state(saved)
    assert after.password() is None
    assert after.poll() is False


@pytest.mark.integration
def test_x11vnc_stop_without_a_session_succeeds(x11_display: int) -> None:
    require_binaries("bash")
    instance = x11vnc_instance(x11_display)

    assert instance.stop() is True


@pytest.mark.integration
def test_x11vnc_a_busy_display_fails_to_start_and_leaves_the_other_session_alone(
    x11_display: int, capsys: pytest.CaptureFixture[str]
) -> None:
    require_binaries(*X11_PROGRAMS)
    first = x11vnc_instance(x11_display)
    second = x11vnc_instance(x11_display)
    assert first.start("token-1", options={"size": "800x600", "username": "u"}) is True
    pids = recorded_pids(x11_display)
    capsys.readouterr()

    assert second.start("token-2", options={"size": "800x600", "username": "v"}) is False

    err = capsys.readouterr().err
    assert f"display :{x11_display} is in use" in err
    assert len(err.strip().splitlines()) == 1
    assert second.host_port() is None
    assert all(is_running(pid) for pid in pids.values())
    password = first.password()
    assert password is not None
    assert vnc_authenticate("127.0.0.1", 5900 + x11_display, password) is True
    assert first.stop() is True


@pytest.mark.integration
def test_x11vnc_a_busy_port_fails_to_start(capsys: pytest.CaptureFixture[str]) -> None:
    require_binaries(*X11_PROGRAMS)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as other:
        other.bind(("127.0.0.1", 0))
        other.listen(1)
        port = other.getsockname()[1]
        display = port - 5900  # the display whose VNC port the OS just gave to another server
        if display < 0 or Path(f"/tmp/.X{display}-lock").exists():
            pytest.skip(f"port {port} does not map to a free display")
        instance = x11vnc_instance(display)

        assert instance.start("token", options={"size": "800x600", "username": "u"}) is False

        assert f"port {port} is in use" in capsys.readouterr().err
        assert not x11_state_dir(display).exists()
        assert pids_on_display(display) == set()


@pytest.mark.integration
def test_start_script_stops_what_it_started_when_x11vnc_fails(
    x11_display: int, tmp_path: Path
) -> None:
    require_binaries(*X11_PROGRAMS)
    # x11vnc that cannot start, so that the script fails after Xvfb and xterm are up.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    failing = bin_dir / "x11vnc"
    failing.write_text("#!/bin/sh\necho 'cannot start' >&2\nexit 1\n")
    failing.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    port = 5900 + x11_display

    result = subprocess.run(
        ["bash", str(START_X11), str(x11_display), str(port), "800x600", "localhost"],
        input=b"password\n",
        capture_output=True,
        env=env,
        timeout=scaled(60),
        check=False,
    )

    assert result.returncode != 0
    assert b"x11vnc exited" in result.stderr
    assert b"password" not in result.stderr
    wait_until(
        lambda: not pids_on_display(x11_display),
        scaled(10),
        message="processes of the display survived the failed start",
    )
    assert not x11_state_dir(x11_display).exists()
    assert not Path(f"/tmp/.X{x11_display}-lock").exists()
    assert not Path(f"/tmp/.X11-unix/X{x11_display}").exists()


@pytest.mark.integration
def test_start_script_reads_the_password_after_the_script_on_stdin(x11_display: int) -> None:
    """The ssh protocol without ssh: ``bash -s`` reads the script, then main reads the password."""
    require_binaries(*X11_PROGRAMS)
    port = 5900 + x11_display

    result = subprocess.run(
        ["bash", "-s", "--", str(x11_display), str(port), "640x480", "localhost"],
        input=START_X11.read_bytes() + b"Pa55word\n",
        capture_output=True,
        timeout=scaled(60),
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert vnc_authenticate("127.0.0.1", port, b"Pa55word") is True
    stop = subprocess.run(
        ["bash", "-s", "--", str(x11_display)],
        input=STOP_X11.read_bytes(),
        capture_output=True,
        timeout=scaled(60),
        check=False,
    )
    assert stop.returncode == 0, stop.stderr
    assert not port_accepts("127.0.0.1", port)


@pytest.mark.integration
@pytest.mark.parametrize("host", ["n8.invalid", "192.0.2.1"])
def test_x11vnc_unreachable_host_fails_fast(host: str, capsys: pytest.CaptureFixture[str]) -> None:
    require_binaries("ssh")
    instance = x11vnc_instance(free_display(start=200), host=host, ssh_connect_timeout=2)
    started = time.monotonic()

    assert instance.start("token", options={"size": "800x600", "username": "u"}) is False

    assert time.monotonic() - started < scaled(10)
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert f"start failed on {host}:" in err
    assert instance.host_port() is None
    assert instance.password() is None


@pytest.mark.integration
def test_x11vnc_host_that_never_answers_times_out(capsys: pytest.CaptureFixture[str]) -> None:
    require_binaries("ssh")
    # Accepts TCP connections (the kernel completes them from the backlog) but never says a
    # word, so ssh waits for the server's banner.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        instance = x11vnc_instance(
            free_display(start=200),
            ssh_user=getpass.getuser(),
            ssh_port=silent.getsockname()[1],
            ssh_connect_timeout=60,
            start_timeout=1,
            stop_timeout=1,
        )
        started = time.monotonic()

        assert instance.start("token", options={"size": "800x600", "username": "u"}) is False

        # The start timeout, then the same for the clean-up stop that follows it.
        assert time.monotonic() - started < scaled(8)
    err = capsys.readouterr().err
    assert "start failed on localhost: no answer within 1 s" in err
    assert instance.host_port() is None


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[SshServer]:
    """A real sshd on 127.0.0.1 (an OS-chosen free port) accepting this user by key."""
    with running_sshd(tmp_path / "sshd") as server:
        yield server


@pytest.mark.integration
def test_x11vnc_session_over_ssh(x11_display: int, sshd: SshServer) -> None:
    require_binaries(*X11_PROGRAMS)
    # ssh_user makes the script use ssh even though the host is this machine, as a site
    # does to run the desktop under another account; nothing is installed on the "node".
    instance = x11vnc_instance(
        x11_display,
        ssh_user=getpass.getuser(),
        ssh_port=sshd.port,
        ssh_key=str(sshd.client_key),
        ssh_options=[f"UserKnownHostsFile={sshd.known_hosts}", "StrictHostKeyChecking=yes"],
    )
    started = time.monotonic()

    assert instance.start("token", options={"size": "1024x768", "username": "u"}) is True

    assert time.monotonic() - started < scaled(15)
    assert "Accepted publickey" in sshd.log.read_text()
    port = 5900 + x11_display
    assert instance.host_port() == ("localhost", port)
    assert read_rfb_banner("127.0.0.1", port, scaled(5)) == b"RFB 003.008\n"
    assert listening_addresses(port) <= LOOPBACK
    password = instance.password()
    assert password is not None
    assert vnc_authenticate("127.0.0.1", port, password) is True
    pids = recorded_pids(x11_display)

    assert instance.stop() is True

    wait_until(
        lambda: not any(is_running(pid) for pid in pids.values()),
        scaled(10),
        message=f"{pids} still running after stop() over ssh",
    )
    assert not port_accepts("127.0.0.1", port)
    assert not x11_state_dir(x11_display).exists()


# ---------------------------------------------------------------------------------------
# The seed's desktop_session.py, unmodified, with TigerVNC


@pytest.mark.integration
def test_seed_desktop_session_runs_unmodified(vnc_home: VncHome, vnc_display: int) -> None:
    require_binaries("vncserver", "Xtigervnc", "xterm", "xauth")
    options = {"sizes": ["12080x1024", "1600x1200"], "display_base": vnc_display}
    [instance] = realize_instances("Local Software Session", DESKTOP_SESSION, 1, options)

    assert instance.start("token", options={"size": "800x600", "username": "u"}) is True

    port = 5900 + vnc_display
    assert instance.host_port() == ("localhost", port)
    assert read_rfb_banner("127.0.0.1", port, scaled(5)) == b"RFB 003.008\n"
    bound = listening_addresses(port)
    assert bound, f"nothing listens on {port}"
    assert bound <= LOOPBACK, f"port {port} is bound on {bound - LOOPBACK}"
    assert vnc_authenticate("127.0.0.1", port, vnc_home.password) is True
    xvnc = pids_of("Xtigervnc") & pids_on_display(vnc_display)
    assert len(xvnc) == 1
    # The session is the terminal from xstartup; it is up once vncserver has returned.
    terminals = pids_of("xterm") & pids_on_display(vnc_display)
    assert len(terminals) == 1
    session = pids_on_display(vnc_display)

    assert instance.stop() is True

    wait_until(
        lambda: not any(is_running(pid) for pid in session),
        scaled(10),
        message=f"processes of display :{vnc_display} survived vncserver -kill",
    )
    assert pids_on_display(vnc_display) == set()
    assert not port_accepts("127.0.0.1", port)
    assert not Path(f"/tmp/.X{vnc_display}-lock").exists()


def test_x11vnc_hosts_share_the_instances_in_turn() -> None:
    options = {"hosts": ["n1", "n2"], "display_base": 300, "ssh_user": "render"}

    instances = realize_instances("Render Nodes", X11VNC_SESSION, 5, options)

    assert [(i.node(), i.display(), i.port()) for i in instances] == [  # type: ignore[attr-defined]
        ("n1", 300, 6200),
        ("n2", 300, 6200),
        ("n1", 301, 6201),
        ("n2", 301, 6201),
        ("n1", 302, 6202),
    ]
    # Each instance logs in to its own node, and vizgate connects to that node.
    argv, _ = instances[3].command(START_X11, ["301", "6201", "800x600", "any"])  # type: ignore[attr-defined]
    assert argv[argv.index("--") + 1] == "n2"
    assert instances[3].gateway_host() == "n2"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("options", "said"),
    [
        ({"hosts": ["n1"], "host": "n2"}, "give host or hosts, not both"),
        ({"hosts": []}, "hosts must be a list of node names"),
        ({"hosts": "n1,n2"}, "hosts must be a list of node names"),
        ({"hosts": ["n1", "n2;reboot"]}, "invalid host 'n2;reboot'"),
        ({"ssh_user": "render;id"}, "invalid ssh_user 'render;id'"),
        ({"ssh_options": "StrictHostKeyChecking=yes"}, "ssh_options must be a list"),
        ({"ssh_options": ["-oProxyCommand=x"]}, "invalid ssh_options entry '-oProxyCommand=x'"),
        ({"sizes": ["1600x1200", "big"]}, "invalid size 'big' in sizes"),
        ({"display_base": "200"}, "display_base must be a whole number, not '200'"),
        ({"ssh_port": 22.5}, "ssh_port must be a whole number"),
        ({"start_timeout": 0}, "start_timeout must be a number of seconds above 0"),
    ],
)
def test_x11vnc_bad_options_stop_the_gateway_at_start_with_why(
    options: dict[str, Any], said: str
) -> None:
    with pytest.raises(ScriptError, match=re.escape(said)):
        realize_instances("Render Nodes", X11VNC_SESSION, 2, options)


def test_x11vnc_every_problem_is_named_at_once() -> None:
    options = {"host": "n8;x", "ssh_user": "a b", "sizes": ["1x"]}
    with pytest.raises(ScriptError) as raised:
        realize_instances("Render Nodes", X11VNC_SESSION, 1, options)
    for said in ("invalid host 'n8;x'", "invalid ssh_user 'a b'", "invalid size '1x'"):
        assert said in str(raised.value)
