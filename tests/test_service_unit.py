"""The systemd unit in examples/systemd: its command lines are ones vizgate accepts, and it keeps
what a restart of the gateway relies on (sessions outlive it; secrets stay off the command
line)."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from vizgate.cli import build_parser
from vizgate.server import run_serve

UNIT = Path(__file__).resolve().parent.parent / "examples" / "systemd" / "vizgate.service"
ENVIRONMENT = UNIT.with_name("environment")


def settings_of(unit: Path) -> dict[str, list[str]]:
    """Each ``Key=value`` of the unit (keys may repeat), comments and sections left out."""
    found: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, separator, value = line.partition("=")
        assert separator, f"not a setting: {line!r}"
        found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_the_units_command_line_is_one_vizgate_serve_accepts() -> None:
    [command] = settings_of(UNIT)["ExecStart"]
    program, *argv = shlex.split(command)
    assert Path(program).name == "vizgate"
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit:
        pytest.fail(f"vizgate rejects the unit's arguments {argv} (exit {exit.code})")
    assert args.func is run_serve
    # The data directory is the one systemd makes for the service, private to it.
    settings = settings_of(UNIT)
    assert args.data_dir == "/var/lib/" + settings["StateDirectory"][0]
    assert settings["StateDirectoryMode"] == ["0700"]
    assert args.host == "127.0.0.1"
    assert not args.security_token


def test_a_stop_ends_the_gateway_only_so_that_its_successor_adopts_the_sessions() -> None:
    assert settings_of(UNIT)["KillMode"] == ["process"]


def test_secrets_come_from_the_environment_file() -> None:
    assert settings_of(UNIT)["EnvironmentFile"] == ["-/etc/vizgate/environment"]
    names = {
        line.lstrip("#").partition("=")[0]
        for line in ENVIRONMENT.read_text().splitlines()
        if "=" in line and not line.startswith("# ")
    }
    assert names == {"VIZGATE_SECURITY_TOKEN", "VIZGATE_DATABASE_URL", "FORWARDED_ALLOW_IPS"}
