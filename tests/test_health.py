"""``GET /healthz`` (:mod:`vizgate.web.api.health`): open to load balancers, and 503 with why when
the gateway cannot serve sessions."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import GatewayProcess, run_python, start_gateway, write_config

pytestmark = pytest.mark.integration


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[GatewayProcess]:
    config = write_config(tmp_path / "config", {"Desktop": {}})
    gateway = start_gateway(
        tmp_path / "run", config, env={"VIZGATE_SECURITY_TOKEN": "health-needs-no-token-41"}
    )
    try:
        yield gateway
    finally:
        gateway.stop()


def test_a_running_gateway_is_healthy_without_a_token(gateway: GatewayProcess) -> None:
    answer = gateway.request("/healthz")
    assert answer.status == 200
    assert answer.json() == {"status": "ok"}
    assert "no-cache" in answer.headers["Cache-Control"]
    assert gateway.request("/healthz", method="HEAD").status == 200
    assert gateway.request("/healthz", method="POST").status == 405
    # The token still guards what says more.
    assert gateway.request("/metrics").status == 401


# Django on a data directory of its own, in a process of its own; the view through Django's test
# client, first without a broker, then with one, then with the database gone.
_PROBE = """
import json, shutil, sys
from pathlib import Path
from vizgate.web import runtime, setup_django
data = Path(sys.argv[1])
setup_django(data, allowed_hosts=["testserver"])
from django.db import connection
from django.test import Client
def probe():
    answer = Client().get("/healthz")
    return [answer.status_code, json.loads(answer.content)]
results = [probe()]
runtime.set_broker(object())
results.append(probe())
connection.close()
shutil.rmtree(data)
results.append(probe())
print(json.dumps(results))
"""


def test_without_a_broker_or_a_database_the_gateway_is_unavailable(tmp_path: Path) -> None:
    result = run_python("-c", _PROBE, str(tmp_path / "data"))
    assert json.loads(result.stdout) == [
        [503, {"status": "unavailable", "reason": "the session broker is not running"}],
        [200, {"status": "ok"}],
        [503, {"status": "unavailable", "reason": "the database does not answer"}],
    ]
    assert "health check: the database does not answer" in result.stderr
