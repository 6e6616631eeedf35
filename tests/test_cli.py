"""Tests of the ``vizgate`` command line (``vizgate check``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from vizgate import __version__
from vizgate.cli import EXIT_OK, EXIT_PROBLEMS, main

SEED_CONFIG = """{
"Local Software Session": {"script": "desktop_session.py", "count": 2,
"options": {"sizes": ["12080x1024", "1600x1200"], "display_base": 100}},
"Cluster Node Session": {"script": "x11vnc_desktop_session.py", "count": 1,
"options": {"sizes": ["1600x1200"], "group": "ClusterRendering", "host": "n8"}}
}
"""

# The seed's desktop_session.py (indentation restored, one long line wrapped); check only
# imports and realizes it.
SEED_DESKTOP_SESSION = """\
# Simple example remote service. The loader will call a method to
# realize the services associated with a specific service name.
# All services must subclass RemoteServiceScript.
#
from nexus_remote_service import RemoteServiceScript
import subprocess
import time
# Launch a vnc server (tightvnc) and run an optional command in the token json map file
class SimpleVNC(RemoteServiceScript):
    def __init__(self, *args, **kwargs):
        super(SimpleVNC, self).__init__(*args, **kwargs)
    def display_base(self):
        return self._common_options.get("display_base", 100)
    def start(self, token, timestamp=time.time(), options=dict()):
        username = options.get('username', '')
        size = options.get('size', '1600x1200')
        cmd = ["vncserver", "-depth", "24", "-geometry", size,
               ":"+str(self.display_base()+self._index)]
        try:
            print("SimpleVNC start: {} {}".format(self, cmd))
            code = subprocess.call(cmd)
            if code != 0:
                return False
        except:
            return False
        self.set_host_port("localhost", 5900+self._index+self.display_base())
        return super(SimpleVNC, self).start(token, timestamp=timestamp, options=options)
    def stop(self):
        cmd = ["vncserver", "-kill", ":"+str(self.display_base()+self._index)]
        try:
            print("SimpleVNC stop: {} {}".format(self, cmd))
            code = subprocess.call(cmd)
        except:
            pass
        return super(SimpleVNC, self).stop()
def realize_service(name="", count=1, index=0, common_options=dict()):
    print("Realizing SimpleVNC service: {} {} {} {}".format(name, count, index, common_options))
    return SimpleVNC(name, count=count, index=index, common_options=common_options)
"""

# A script that writes down every realize_service() call into the file options["record"].
RECORDING_SCRIPT = """\
import json
from nexus_remote_service import RemoteServiceScript

class Recorded(RemoteServiceScript):
    def start(self, token, timestamp=None, options=None):
        return super().start(token, timestamp=timestamp, options=options)

    def stop(self):
        return super().stop()

def realize_service(name="", count=1, index=0, common_options=None):
    with open(common_options["record"], "a") as record:
        record.write(json.dumps([name, count, index, common_options]) + "\\n")
    common_options["record"] = "changed by index %d" % index
    return Recorded(name, count=count, index=index, common_options=common_options)
"""

GOOD_SCRIPT = """\
from nexus_remote_service import RemoteServiceScript

class Good(RemoteServiceScript):
    def start(self, token, timestamp=None, options=None):
        return super().start(token, timestamp=timestamp, options=options)

    def stop(self):
        return super().stop()

def realize_service(name="", count=1, index=0, common_options=None):
    return Good(name, count=count, index=index, common_options=common_options)
"""

BROKEN_SCRIPTS = [
    pytest.param(
        "import nexus_remote_service\nraise RuntimeError('no license server')\n",
        "failed to import: RuntimeError: no license server",
        id="raises-on-import",
    ),
    pytest.param(
        "def realise_service(**kwargs):\n    return None\n",
        "defines no realize_service() function",
        id="no-realize-service",
    ),
    pytest.param(
        "def realize_service(name='', count=1, index=0, common_options=None):\n"
        "    return {'host': 'localhost'}\n",
        "realize_service(index=0) returned dict, not a RemoteServiceScript",
        id="returns-dict",
    ),
    pytest.param(
        "from nexus_remote_service import RemoteServiceScript\n"
        "class NoStop(RemoteServiceScript):\n"
        "    def start(self, token, timestamp=None, options=None):\n"
        "        return super().start(token, timestamp=timestamp, options=options)\n"
        "def realize_service(name='', count=1, index=0, common_options=None):\n"
        "    return NoStop(name, count=count, index=index, common_options=common_options)\n",
        "NoStop must implement stop()",
        id="no-stop",
    ),
    pytest.param(
        GOOD_SCRIPT.replace(
            "    return Good(",
            "    if index == 2:\n        raise OSError('GPU 2 is gone')\n    return Good(",
        ),
        "realize_service(index=2) raised OSError: GPU 2 is gone",
        id="raises-in-realize",
    ),
]


@pytest.fixture(autouse=True)
def _restore_sys_path(monkeypatch: pytest.MonkeyPatch) -> None:
    # Loading a script appends its folder to sys.path; keep that from leaking between tests.
    monkeypatch.setattr(sys, "path", list(sys.path))


def write_site(folder: Path, config: Any, scripts: dict[str, str]) -> Path:
    for name, text in scripts.items():
        (folder / name).write_text(text)
    path = folder / "external_services.json"
    path.write_text(config if isinstance(config, str) else json.dumps(config, indent=1))
    return path


def seed_site(folder: Path) -> Path:
    return write_site(
        folder,
        SEED_CONFIG,
        {
            "desktop_session.py": SEED_DESKTOP_SESSION,
            "x11vnc_desktop_session.py": GOOD_SCRIPT,
        },
    )


def test_check_seed_config_prints_the_catalog_and_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = seed_site(tmp_path)

    assert main(["check", str(path)]) == EXIT_OK

    out, err = capsys.readouterr()
    assert err == ""
    # The seed's realize_service() prints once per index; it runs before the listing.
    realized = [line for line in out.splitlines() if line.startswith("Realizing SimpleVNC")]
    assert len(realized) == 2
    listing = out[out.index("Catalog ") :]
    assert listing == textwrap.dedent(
        f"""\
        Catalog {path}

        Local Software Session
          count:    2 (indexes 0-1)
          sizes:    12080x1024, 1600x1200
          group:    everyone
          file_ext: (none)
          script:   {tmp_path.resolve() / "desktop_session.py"}
          options:  display_base=100

        Cluster Node Session
          count:    1 (index 0)
          sizes:    1600x1200
          group:    ClusterRendering
          file_ext: (none)
          script:   {tmp_path.resolve() / "x11vnc_desktop_session.py"}
          options:  host="n8"

        1 warning:
          {path}: "Local Software Session" > options > sizes[0]: "12080x1024" is 12080 pixels \
wide; more than 8192 is unusual (a typo for 1280x1024?)

        OK: 2 session types, 3 instances
        """
    )


def test_check_realizes_every_index_with_its_own_copy_of_the_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    record = tmp_path / "record.jsonl"
    options = {"record": str(record), "sizes": ["800x600"], "nested": {"a": [1]}}
    path = write_site(
        tmp_path,
        {"Rec": {"script": "rec.py", "count": 3, "options": options}},
        {"rec.py": RECORDING_SCRIPT},
    )

    assert main(["check", str(path)]) == EXIT_OK

    calls = [json.loads(line) for line in record.read_text().splitlines()]
    # Index 0 changed its options; later indexes must still see the file's values.
    assert calls == [["Rec", 3, index, options] for index in range(3)]
    assert capsys.readouterr().out.endswith("OK: 1 session type, 3 instances\n")


def test_check_shows_defaults_file_ext_timeouts_and_hides_secret_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    options = {
        "file_ext": [".evsn", ".csf"],
        "idle_timeout": 600,
        "linger": 2.5,
        "password": "hunter2-do-not-show",
        "ssh_key": "/etc/vizgate/id_ed25519",
        "partition": "viz",
        "choices": {"time_limit": ["2:00:00", "8:00:00"]},
    }
    path = write_site(
        tmp_path,
        {"Slurm Session": {"script": "good.py", "count": 1, "options": options}},
        {"good.py": GOOD_SCRIPT},
    )

    assert main(["check", str(path)]) == EXIT_OK

    out = capsys.readouterr().out
    # Labels are padded to the longest (the choice's): compare with single spaces.
    shown = {" ".join(line.split()) for line in out.splitlines()}
    assert "sizes: 1024x768, 1280x1024, 1600x1200, 1920x1080 (default)" in shown
    assert "file_ext: .evsn, .csf" in shown
    assert "idle_timeout: 600 s" in shown
    assert "linger: 2.5 s" in shown
    assert "choice time_limit: 2:00:00, 8:00:00 (users pick; the first is the default)" in shown
    assert 'options: password=(hidden), ssh_key=(hidden), partition="viz"' in shown
    assert "hunter2" not in out
    assert "id_ed25519" not in out


def test_check_shows_which_instances_run_on_which_node(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from vizgate.testing import DOUBLE_SESSION_SCRIPT

    config = tmp_path / "external_services.json"
    config.write_text(
        json.dumps(
            {
                "Pool": {
                    "script": str(DOUBLE_SESSION_SCRIPT),
                    "count": 3,
                    "options": {"nodes": ["render01", "render02"]},
                },
                "Alone": {"script": str(DOUBLE_SESSION_SCRIPT), "count": 1, "options": {}},
            }
        )
    )

    assert main(["check", str(config)]) == EXIT_OK

    out = capsys.readouterr().out
    shown = [" ".join(line.split()) for line in out.splitlines()]
    assert "nodes: render01 (#0, #2), render02 (#1)" in shown
    # A type whose script names no node has no such line.
    assert sum(line.startswith("nodes:") for line in shown) == 1


def test_check_missing_file_exits_2_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "nope.json"

    assert main(["check", str(path)]) == EXIT_PROBLEMS

    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"{path}: no such file\nvizgate check: 1 problem in {path}; the catalog is not usable\n"
    )


def test_check_prints_every_config_problem_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = {
        "A": {"script": "missing.py", "count": 0, "options": {"sizes": ["1600*1200"]}},
        "B": {"script": "good.py", "count": 1},
    }
    path = write_site(tmp_path, config, {"good.py": GOOD_SCRIPT})

    assert main(["check", str(path)]) == EXIT_PROBLEMS

    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert [line.split(": ")[1] for line in lines[:-1]] == [
        '"A" > script',
        '"A" > count',
        '"A" > options > sizes[0]',
        '"B" > options',
    ]
    assert all(line.startswith(f"{path}: ") for line in lines[:-1])
    assert lines[-1] == f"vizgate check: 4 problems in {path}; the catalog is not usable"


@pytest.mark.parametrize(("script", "reason"), BROKEN_SCRIPTS)
def test_check_reports_script_that_cannot_be_realized(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], script: str, reason: str
) -> None:
    path = write_site(
        tmp_path,
        {
            "Good": {"script": "good.py", "count": 1, "options": {}},
            "Broken": {"script": "broken.py", "count": 3, "options": {}},
        },
        {"good.py": GOOD_SCRIPT, "broken.py": script},
    )

    assert main(["check", str(path)]) == EXIT_PROBLEMS

    out, err = capsys.readouterr()
    broken = tmp_path.resolve() / "broken.py"
    assert err == (
        f'{path}: "Broken" > script: {broken}: {reason}\n'
        f"vizgate check: 1 problem in {path}; the catalog is not usable\n"
    )
    # The listing still shows the admin what was understood; it just does not end in OK.
    assert "\nGood\n" in out
    assert "\nBroken\n" in out
    assert "OK:" not in out
    assert "Traceback" not in out + err


def test_check_reports_every_broken_script(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = {name: {"script": f"{name}.py", "count": 1, "options": {}} for name in ("one", "two")}
    path = write_site(tmp_path, config, {"one.py": "x = 1\n", "two.py": "y = 2\n"})

    assert main(["check", str(path)]) == EXIT_PROBLEMS

    err = capsys.readouterr().err
    assert err.count("defines no realize_service() function") == 2
    assert "2 problems" in err


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == EXIT_PROBLEMS
    assert "check" in capsys.readouterr().err


def test_unknown_command_and_missing_argument_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["frobnicate"]) == EXIT_PROBLEMS
    assert "invalid choice: 'frobnicate'" in capsys.readouterr().err
    assert main(["check"]) == EXIT_PROBLEMS
    assert "vizgate check: which CONFIG?" in capsys.readouterr().err


def test_help_and_version_exit_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == EXIT_OK
    assert "check" in capsys.readouterr().out
    assert main(["check", "--help"]) == EXIT_OK
    assert "external_services.json" in capsys.readouterr().out
    assert main(["--version"]) == EXIT_OK
    assert capsys.readouterr().out == f"vizgate {__version__}\n"


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )


def test_console_script_checks_the_seed_config(tmp_path: Path) -> None:
    vizgate = Path(sys.executable).parent / "vizgate"
    if not vizgate.is_file():
        pytest.skip(f"the console script is not installed next to {sys.executable}")
    seed_site(tmp_path)

    result = _run([str(vizgate), "check", "external_services.json"], cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.endswith("OK: 2 session types, 3 instances\n")
    assert 'sizes[0]: "12080x1024" is 12080 pixels wide' in result.stdout


def test_python_dash_m_vizgate_reports_problems_with_exit_2(tmp_path: Path) -> None:
    write_site(tmp_path, {"T": {"script": "nope.py", "count": 1, "options": {}}}, {})

    result = _run([sys.executable, "-m", "vizgate", "check", "external_services.json"], tmp_path)

    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines()[0] == (
        'external_services.json: "T" > script: script file not found: looked for '
        f"{tmp_path.resolve() / 'nope.py'}"
    )
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("name", ["external_services.seed.json", "external_services.json"])
def test_check_examples_config(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    config = Path(__file__).resolve().parent.parent / "examples" / name

    assert main(["check", str(config)]) == EXIT_OK

    out = capsys.readouterr().out
    assert out.count("is 12080 pixels wide") == 1
    assert "1 warning:" in out
    assert out.endswith("OK: 2 session types, 3 instances\n")
