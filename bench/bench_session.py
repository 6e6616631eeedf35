"""The benchmark's session script: a session that "starts" at once on the backend's port.

Named by the catalog the benchmark writes for ``vizgate serve``::

    {"bench": {"script": "bench/bench_session.py", "count": 1100,
               "options": {"port": 40123, "start_log": "/tmp/.../starts.txt"}}}

``start()`` points the session at ``127.0.0.1:<options.port>`` (a backend process the harness
runs) and returns True. When ``start_log`` is set it appends one line per start, the session's
public id and how long ``start()`` took, so that the harness can subtract the script's own
time from the start latency it measures and keep only what the gateway adds. The token itself
is never written.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from typing import Any

from nexus_remote_service import RemoteServiceScript

__all__ = ["BenchSession", "public_id", "realize_service"]


def public_id(token: str) -> str:
    """The session's public id, as the gateway's reservation answer gives it."""
    return hashlib.sha256(token.encode()).hexdigest()[:16]


class BenchSession(RemoteServiceScript):
    """A session whose VNC server is already running: the benchmark's backend."""

    def start(
        self,
        token: str,
        timestamp: float | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> bool:
        began = time.perf_counter()
        self.set_host_port("127.0.0.1", int(self._common_options["port"]))
        started = super().start(token, timestamp=timestamp, options=options)
        took = time.perf_counter() - began
        log = self._common_options.get("start_log")
        if log:
            # One short append per start; lines from instances' threads do not interleave.
            with open(log, "a", encoding="ascii") as file:
                file.write(f"{public_id(token)} {took:.9f}\n")
        return started

    def stop(self) -> bool:
        return super().stop()


def realize_service(
    name: str = "",
    count: int = 1,
    index: int = 0,
    common_options: Mapping[str, Any] | None = None,
) -> BenchSession:
    """The seed's entry point: one :class:`BenchSession` per index."""
    return BenchSession(name, count=count, index=index, common_options=common_options)
