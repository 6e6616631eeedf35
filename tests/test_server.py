"""Tests of ``vizgate serve`` (:mod:`vizgate.server`): options, start-up failures, signals, TLS.

Servers run as real processes (``python -m vizgate.server``) on 127.0.0.1, on ports the OS
picks; every one is stopped by its PID when its test ends.
The process helpers are in ``gateway.py``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import signal
import socket
import sqlite3
import ssl
import stat
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from gateway import (
    LISTENING,
    GatewayProcess,
    gateway_env,
    self_signed_certificate,
    start_gateway,
    write_config,
)
from support import scaled
from vizgate.server import EXIT_USAGE, add_serve_arguments, main

# ---------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(
        tmp_path / "config",
        {"Desktop": {"count": 2, "options": {"behaviour": "starts"}}},
    )


def run_to_exit(
    tmp_path: Path, config: Path, *args: str, timeout: float = 20
) -> subprocess.CompletedProcess[str]:
    """Run a server that is expected to exit on its own (a start-up failure)."""
    command = [sys.executable, "-m", "vizgate.server", "--config", str(config)]
    command += ["--port", "0", "--data-dir", str(tmp_path / "data"), *args]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=scaled(timeout),
        env=gateway_env(),
        check=False,
    )


# ---------------------------------------------------------------------------------------
# Options


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return parser.parse_args(argv)


def test_defaults_of_the_serve_options() -> None:
    args = parse(["--config", "services.json"])
    assert args.config == "services.json"
    assert (args.host, args.port) == ("127.0.0.1", 8000)
    assert (args.cert, args.key, args.security_token) == (None, None, None)
    assert args.timeout == 300
    assert args.linger == 10
    assert args.start_timeout == 120
    assert args.ready_timeout == 30
    assert (args.idle_timeout, args.max_lifetime) == (None, None)
    assert args.stop_timeout == 60
    assert args.ping_interval == 20
    assert args.data_dir is None
    assert args.log_level == "info"
    assert args.allowed_host == []
    assert args.url_prefix == ""


@pytest.mark.parametrize(
    ("given", "prefix"),
    [
        ("/vizgate", "/vizgate"),
        ("/vizgate/", "/vizgate"),
        ("/", ""),
        ("/a/b.c-d_e~", "/a/b.c-d_e~"),
    ],
)
def test_url_prefix_is_a_path_without_its_trailing_slash(given: str, prefix: str) -> None:
    assert parse(["--config", "c", "--url-prefix", given]).url_prefix == prefix


def test_allowed_host_repeats_and_log_level_ignores_case() -> None:
    args = parse(
        [
            "--config",
            "c",
            "--allowed-host",
            "a.example",
            "--allowed-host",
            "b",
            "--log-level",
            "DEBUG",
        ]
    )
    assert args.allowed_host == ["a.example", "b"]
    assert args.log_level == "debug"


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--config", "c", "--timeout", "-1"],
        ["--config", "c", "--linger", "soon"],
        ["--config", "c", "--port", "70000"],
        ["--config", "c", "--log-level", "loud"],
        ["--config", "c", "--url-prefix", "vizgate"],
        ["--config", "c", "--url-prefix", "/viz gate"],
        ["--config", "c", "--url-prefix", "/a//b"],
        ["--config", "c", "--url-prefix", "/../etc"],
        ["--config", "c", "--url-prefix", "/vizgate?x=1"],
    ],
)
def test_bad_usage_returns_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == EXIT_USAGE
    assert "usage:" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------
# Start-up failures


def test_a_bad_config_exits_2_naming_every_problem(tmp_path: Path) -> None:
    config = tmp_path / "external_services.json"
    config.write_text(
        json.dumps(
            {
                "Desktop": {"script": "missing_session.py", "count": "two", "options": {}},
                "Other": {"count": 1, "options": {}},
            }
        )
    )
    result = run_to_exit(tmp_path, config)
    assert result.returncode == 2, result.stderr
    assert "count" in result.stderr
    assert "missing_session.py" in result.stderr
    assert "script" in result.stderr
    assert "Other" in result.stderr
    assert "Traceback" not in result.stderr
    assert LISTENING not in result.stdout


def test_a_missing_config_file_exits_2(tmp_path: Path) -> None:
    result = run_to_exit(tmp_path, tmp_path / "nowhere.json")
    assert result.returncode == 2
    assert "nowhere.json" in result.stderr
    assert "no such file" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_script_that_cannot_be_realized_exits_2(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"Broken": {"options": {"behaviour": "no-such-behaviour"}}})
    result = run_to_exit(tmp_path, config)
    assert result.returncode == 2, result.stderr
    assert "no-such-behaviour" in result.stderr
    assert LISTENING not in result.stdout


def test_cert_without_key_exits_2(tmp_path: Path, config: Path) -> None:
    result = run_to_exit(tmp_path, config, "--cert", str(tmp_path / "cert.pem"))
    assert result.returncode == 2
    assert "--cert and --key go together" in result.stderr


def test_an_unreadable_certificate_exits_2(tmp_path: Path, config: Path) -> None:
    missing = str(tmp_path / "missing.pem")
    result = run_to_exit(tmp_path, config, "--cert", missing, "--key", missing)
    assert result.returncode == 2
    assert "missing.pem" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_port_in_use_exits_1(tmp_path: Path, config: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_to_exit(tmp_path, config, "--port", str(port))
    assert result.returncode == 1
    assert f"port {port}" in result.stderr
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------------------------------
# Running and stopping


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_gracefully_with_status_0(
    tmp_path: Path, config: Path, gateways: list[GatewayProcess], signum: signal.Signals
) -> None:
    gateway = start_gateway(tmp_path / "run", config, "--stop-sessions-on-exit")
    gateways.append(gateway)
    stdout_lines = gateway.stdout_path.read_text().splitlines()
    assert stdout_lines == [f"{LISTENING}http://127.0.0.1:{gateway.port}/"]

    reserved = gateway.request("/v1/reserve/Desktop").json()
    assert reserved["service"] == "Desktop"

    gateway.process.send_signal(signum)
    assert gateway.wait(15) == 0
    output = gateway.output()
    assert "ended (shutdown)" in output
    assert "Traceback" not in output


def test_by_default_a_stop_keeps_sessions_and_the_next_start_adopts_them(
    tmp_path: Path, config: Path, gateways: list[GatewayProcess]
) -> None:
    first = start_gateway(tmp_path / "run", config)
    gateways.append(first)
    reserved = first.request("/v1/reserve/Desktop").json()
    first.process.send_signal(signal.SIGTERM)
    assert first.wait(15) == 0
    assert "ended (shutdown)" not in first.output()

    second = start_gateway(tmp_path / "run2", config, "--data-dir", str(tmp_path / "run" / "data"))
    gateways.append(second)
    [session] = second.request("/v1/status").json()["sessions"]
    assert session["id"] == reserved["session_id"]
    assert session["state"] == "reserved"
    # The same token still names it.
    assert second.request(f"/v1/release/{reserved['token']}").status == 200
    assert second.request("/v1/status").json()["sessions"] == []


def test_data_dir_keeps_a_private_secret_key_and_a_migrated_database(
    tmp_path: Path, config: Path, gateways: list[GatewayProcess]
) -> None:
    data = tmp_path / "state"
    keys = []
    for run in ("first", "second"):
        gateway = start_gateway(tmp_path / run, config, "--data-dir", str(data))
        gateways.append(gateway)
        gateway.stop()
        assert gateway.process.returncode == 0
        secret = data / "secret_key"
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        keys.append(secret.read_text().strip())
        assert keys[-1] not in gateway.output()
    assert len(keys[0]) >= 50
    assert keys[0] == keys[1], "the secret key must survive a restart"

    with sqlite3.connect(data / "vizgate.sqlite3") as database:
        applied = {app for (app,) in database.execute("SELECT app FROM django_migrations")}
    assert {"auth", "contenttypes", "sessions", "admin"} <= applied


def test_https_with_cert_and_key_and_allowed_hosts(
    tmp_path: Path, config: Path, gateways: list[GatewayProcess]
) -> None:
    cert, key = self_signed_certificate(tmp_path)
    gateway = start_gateway(
        tmp_path / "run",
        config,
        "--cert",
        str(cert),
        "--key",
        str(key),
        "--allowed-host",
        "127.0.0.1",
        "--allowed-host",
        "gate.example",
    )
    gateways.append(gateway)
    assert gateway.url == f"https://127.0.0.1:{gateway.port}/"
    gateway.ssl_context = ssl.create_default_context(cafile=str(cert))

    status = gateway.request("/v1/status")
    assert status.status == 200
    assert [s["name"] for s in status.json()["services"]] == ["Desktop"]

    assert gateway.request("/login/", headers={"Host": "gate.example"}).status == 200
    # Not listed: Django refuses a Host header it was not told about.
    assert gateway.request("/login/", headers={"Host": "localhost"}).status == 400

    # Plain http on the https port is not served.
    plain = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=scaled(5))
    try:
        plain.request("GET", "/v1/status")
        with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError)):
            plain.getresponse()
    finally:
        plain.close()


@pytest.mark.integration
def test_json_logs_are_one_object_per_line_from_start_to_stop(tmp_path: Path, config: Path) -> None:
    token = "json-logs-keep-this-out-29"
    gateway = start_gateway(tmp_path / "run", config, "--log-format", "json")
    try:
        assert gateway.request("/v1/status", {"security_token": token}).status == 200
    finally:
        gateway.stop()
    records = [json.loads(line) for line in gateway.stderr_path.read_text().splitlines()]
    loggers = {record["logger"] for record in records}
    assert {"uvicorn.error", "uvicorn.access", "vizgate.server"} <= loggers, loggers
    assert any(record["message"].startswith("broker open:") for record in records)
    assert token not in gateway.output()
