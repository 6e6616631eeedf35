"""A renewed TLS certificate taken up without a restart (:mod:`vizgate.certificates`): the
reloader's rules, then a real gateway serving https that gets SIGHUP after its certificate
and key were replaced, and one that gets a key which does not match."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import ssl
from pathlib import Path

import pytest

from gateway import GatewayProcess, self_signed_certificate, start_gateway, write_config
from support import scaled, wait_until
from vizgate.certificates import CertificateReloader


def pair(directory: Path) -> tuple[Path, Path]:
    directory.mkdir(parents=True)
    return self_signed_certificate(directory)


def put_in_place(cert: Path, key: Path, served_cert: Path, served_key: Path) -> None:
    """Replace the served files as an ACME client does: a new file renamed over the old."""
    for source, target in ((cert, served_cert), (key, served_key)):
        temporary = target.with_name(target.name + ".new")
        shutil.copyfile(source, temporary)
        os.replace(temporary, target)


def test_a_changed_pair_is_loaded_once_and_a_broken_one_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    served_cert, served_key = pair(tmp_path / "served")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(served_cert, served_key)
    reloader = CertificateReloader(context, served_cert, served_key)
    assert reloader.check() is False
    renewed = pair(tmp_path / "renewed")
    put_in_place(*renewed, served_cert, served_key)
    with caplog.at_level(logging.WARNING, logger="vizgate.certificates"):
        assert reloader.check() is True
    assert f"serving the TLS certificate {served_cert} as it is now" in caplog.text
    assert reloader.check() is False
    # A certificate whose key is another's: refused, said once, and not tried again unchanged.
    other_cert, _ = pair(tmp_path / "other")
    put_in_place(other_cert, renewed[1], served_cert, served_key)
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="vizgate.certificates"):
        assert reloader.check() is False
        assert reloader.check() is False
    assert caplog.text.count("cannot use the renewed TLS certificate") == 1
    assert "keeping the one in use" in caplog.text
    # Forced (SIGHUP), the same broken pair is tried and refused again.
    assert reloader.check(force=True) is False
    # A missing key is refused the same way.
    served_key.unlink()
    assert reloader.check() is False


def served_certificate(gateway: GatewayProcess) -> bytes:
    """The DER certificate the gateway's TLS port presents now (a fresh handshake)."""
    client = ssl.create_default_context()
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", gateway.port), timeout=scaled(10)) as raw,
        client.wrap_socket(raw) as tls,
    ):
        certificate = tls.getpeercert(binary_form=True)
    assert certificate is not None
    return certificate


def der(cert: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(cert.read_text())


@pytest.mark.integration
def test_a_gateway_serves_a_renewed_certificate_after_sighup_without_a_restart(
    tmp_path: Path,
) -> None:
    served_cert, served_key = pair(tmp_path / "tls")
    config = write_config(tmp_path / "config", {"Desktop": {"count": 1}})
    gateway = start_gateway(
        tmp_path / "run", config, "--cert", str(served_cert), "--key", str(served_key)
    )
    try:
        assert served_certificate(gateway) == der(served_cert)
        renewed_cert, renewed_key = pair(tmp_path / "renewed")
        put_in_place(renewed_cert, renewed_key, served_cert, served_key)
        gateway.process.send_signal(signal.SIGHUP)
        wait_until(
            lambda: served_certificate(gateway) == der(renewed_cert),
            scaled(10),
            message="the renewed certificate was not served",
        )
        # A key that does not match: refused with why, the renewed pair still served.
        other_cert, _ = pair(tmp_path / "other")
        put_in_place(other_cert, renewed_key, served_cert, served_key)
        gateway.process.send_signal(signal.SIGHUP)
        wait_until(
            lambda: "cannot use the renewed TLS certificate" in gateway.output(),
            scaled(10),
            message="the broken pair was not refused",
        )
        assert served_certificate(gateway) == der(renewed_cert)
        gateway.ssl_context = ssl.create_default_context(cafile=str(renewed_cert))
        assert gateway.request("/v1/status").status == 200
        assert gateway.process.poll() is None
    finally:
        gateway.stop()
    assert gateway.process.returncode == 0


@pytest.mark.integration
def test_sighup_to_a_gateway_without_tls_is_logged_not_fatal(tmp_path: Path) -> None:
    config = write_config(tmp_path / "config", {"Desktop": {"count": 1}})
    gateway = start_gateway(tmp_path / "run", config)
    try:
        gateway.process.send_signal(signal.SIGHUP)
        wait_until(
            lambda: "SIGHUP: nothing to reload" in gateway.output(),
            scaled(10),
            message="SIGHUP was not handled",
        )
        assert gateway.request("/v1/status").status == 200
    finally:
        gateway.stop()
    assert gateway.process.returncode == 0
