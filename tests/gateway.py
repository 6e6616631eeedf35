"""Running ``vizgate serve`` as a real process in tests (``python -m vizgate.server``).

Servers listen on 127.0.0.1 on ports the OS picks; every one is stopped by its PID.
"""

from __future__ import annotations

import datetime
import http.client
import json
import os
import ssl
import subprocess
import sys
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from support import scaled, wait_until
from vizgate.testing import DOUBLE_SESSION_SCRIPT

# ---------------------------------------------------------------------------------------
# Running a gateway process


LISTENING = "vizgate listening on "


@dataclass(frozen=True)
class Response:
    """An HTTP response, whatever its status."""

    status: int
    headers: http.client.HTTPMessage  # names are case-insensitive
    body: bytes

    def json(self) -> Any:
        assert self.headers.get("Content-Type", "").startswith("application/json"), self.headers
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode()


@dataclass
class GatewayProcess:
    """A ``python -m vizgate.server`` process and the files its output goes to."""

    process: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path
    url: str = ""
    ssl_context: ssl.SSLContext | None = None
    tokens_seen: list[str] = field(default_factory=list)

    @property
    def port(self) -> int:
        port = urllib.parse.urlsplit(self.url).port
        assert port is not None
        return port

    def output(self) -> str:
        """Everything the process wrote so far, stdout then stderr."""
        return self.stdout_path.read_text(errors="replace") + self.stderr_path.read_text(
            errors="replace"
        )

    def request(
        self,
        path: str,
        query: Mapping[str, str] | None = None,
        *,
        method: str = "GET",
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        target = path + ("?" + urllib.parse.urlencode(query) if query else "")
        connection: http.client.HTTPConnection
        if self.ssl_context is not None:
            connection = http.client.HTTPSConnection(
                "127.0.0.1", self.port, timeout=scaled(10), context=self.ssl_context
            )
        else:
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=scaled(10))
        try:
            connection.request(method, target, headers=dict(headers or {}))
            reply = connection.getresponse()
            return Response(reply.status, reply.headers, reply.read())
        finally:
            connection.close()

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout=scaled(timeout))

    def stop(self) -> None:
        """Stop the process by its PID: SIGTERM, wait, SIGKILL."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=scaled(15))
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=scaled(5))


def gateway_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("VIZGATE_")}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env.update(extra or {})
    return env


def run_python(
    *argv: str, stdin: str = "", check: bool = True, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python ARGV`` in the gateway's environment (a vizgate command, a snippet of setup),
    with ``env`` added: its output is returned, and with ``check`` its status asserted 0."""
    result = subprocess.run(
        [sys.executable, *argv],
        input=stdin,
        capture_output=True,
        text=True,
        env=gateway_env(env),
        timeout=scaled(60),
        check=False,
    )
    assert not check or result.returncode == 0, result.stderr
    return result


def vizgate_command(data: Path, *args: str) -> tuple[int, str, str]:
    """``vizgate ARGS --data-dir DATA``: its status, stdout and stderr."""
    result = run_python("-m", "vizgate", *args, "--data-dir", str(data), check=False)
    return result.returncode, result.stdout, result.stderr


def launch_gateway(
    directory: Path,
    config: Path,
    *args: str,
    env: Mapping[str, str] | None = None,
) -> GatewayProcess:
    """Start ``python -m vizgate.server`` with its output in files under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    stdout_path = directory / "stdout.txt"
    stderr_path = directory / "stderr.txt"
    command = [sys.executable, "-m", "vizgate.server", "--config", str(config)]
    if "--port" not in args:
        command += ["--port", "0"]
    if "--data-dir" not in args:
        command += ["--data-dir", str(directory / "data")]
    with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            [*command, *args], stdout=stdout, stderr=stderr, env=gateway_env(env)
        )
    return GatewayProcess(process, stdout_path, stderr_path)


def wait_listening(gateway: GatewayProcess) -> GatewayProcess:
    """Wait for the ``vizgate listening on URL`` line; fail with the output if it exits."""

    def listening_url() -> str:
        for line in gateway.stdout_path.read_text(errors="replace").splitlines():
            # A script's print() on another thread may have been cut by this line, before its
            # newline: the announcement is then in the middle of a line.
            _, found, rest = line.partition(LISTENING)
            if found:
                return rest.split()[0]
        if gateway.process.poll() is not None:
            raise AssertionError(
                f"the server exited with {gateway.process.returncode}:\n{gateway.output()}"
            )
        return ""

    gateway.url = wait_until(listening_url, scaled(20), message="the server did not listen")
    return gateway


def start_gateway(
    directory: Path,
    config: Path,
    *args: str,
    env: Mapping[str, str] | None = None,
) -> GatewayProcess:
    """Start a gateway and wait until it accepts requests; stop it on failure."""
    gateway = launch_gateway(directory, config, *args, env=env)
    try:
        return wait_listening(gateway)
    except BaseException:
        gateway.stop()
        raise


def write_config(directory: Path, types: Mapping[str, Mapping[str, Any]]) -> Path:
    """Write an external_services.json whose types all use vizgate's test-double script."""
    directory.mkdir(parents=True, exist_ok=True)
    catalog = {
        name: {
            "script": str(DOUBLE_SESSION_SCRIPT),
            "count": spec.get("count", 1),
            "options": dict(spec.get("options", {})),
        }
        for name, spec in types.items()
    }
    path = directory / "external_services.json"
    path.write_text(json.dumps(catalog, indent=1), encoding="utf-8")
    return path


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, written into ``directory``."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vizgate test")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path = directory / "cert.pem"
    key_path = directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


#: The examples folder: the seed's config and scripts.
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
#: The seed's desktop script wrapped to report when its desktops end, as a batch job's do.
TIME_LIMITED_DESKTOP = Path(__file__).resolve().parent / "data" / "time_limited_desktop.py"


def seed_desktop_type(
    display_base: int,
    sizes: Sequence[str],
    *,
    count: int = 1,
    script: Path = EXAMPLES / "desktop_session.py",
    **options: Any,
) -> dict[str, Any]:
    """A catalog entry for the seed's unmodified ``desktop_session.py`` (real TigerVNC), or a
    ``script`` that wraps it, on displays from ``display_base``, with the VNC password file the
    gateway answers with."""
    return {
        "script": str(script),
        "count": count,
        "options": {
            "sizes": list(sizes),
            "display_base": display_base,
            "vnc_password_file": "~/.vnc/passwd",
            **options,
        },
    }


def write_catalog(folder: Path, catalog: Mapping[str, Any]) -> Path:
    """Write ``catalog`` as ``folder/external_services.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "external_services.json"
    path.write_text(json.dumps(catalog, indent=1), encoding="utf-8")
    return path
