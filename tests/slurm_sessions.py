"""Slurm sessions in tests: the catalog of a Slurm session type, the cluster's jobs by name, and
an RFB handshake through the gateway's bridge (which answers the job's VNC password)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from rfb_client import RfbClient
from slurm_cluster import SlurmCluster
from support import scaled
from vizgate.rfb import RfbBridge

__all__ = [
    "JOB_NAME_0",
    "SIZE",
    "TYPE",
    "BridgedVnc",
    "handshake_through_bridge",
    "jobs_named",
    "write_catalog",
]

TYPE = "Slurm Desktop"
JOB_NAME_0 = "vizgate-Slurm_Desktop-0"
SIZE = "800x600"


def write_catalog(folder: Path, state_dir: Path, count: int = 1, **options: Any) -> Path:
    options = {
        "sizes": [SIZE, "1024x768"],
        "state_dir": str(state_dir),
        "linger": 0.2,
        "start_timeout": 30,
        **options,
    }
    path = folder / "external_services.json"
    path.write_text(
        json.dumps({TYPE: {"script": "builtin:slurm", "count": count, "options": options}})
    )
    return path


def jobs_named(cluster: SlurmCluster, name: str) -> list[str]:
    """States of the cluster's unfinished jobs called ``name``."""
    result = cluster.run("squeue", "-h", "-n", name, "-o", "%T")
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


class BridgedVnc:
    """A byte source for :class:`RfbClient` that goes through the gateway's RFB bridge.

    The test client speaks to the bridge as a browser would (security None); the bridge answers
    the VNC server's password challenge with the session's password, as the tunnel does.
    """

    def __init__(
        self, bridge: RfbBridge, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.bridge = bridge
        self.reader = reader
        self.writer = writer

    async def _flush(self) -> None:
        if self.bridge.failure:
            raise AssertionError(f"RFB bridge failed: {self.bridge.failure}")
        data = self.bridge.data_to_server()
        if data:
            self.writer.write(data)
            await self.writer.drain()

    async def read(self) -> bytes:
        while True:
            await self._flush()
            data = self.bridge.data_to_client()
            if data:
                return data
            chunk = await self.reader.read(65536)
            if not chunk:
                self.bridge.receive_eof_from_server()
                await self._flush()
                raise EOFError("the VNC server closed the connection")
            self.bridge.receive_from_server(chunk)

    async def write(self, data: bytes) -> None:
        self.bridge.receive_from_client(data)
        await self._flush()


async def handshake_through_bridge(host: str, port: int, password: bytes) -> RfbClient:
    """The full RFB handshake up to ServerInit, with the gateway answering the password."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        client = RfbClient(BridgedVnc(RfbBridge(password), reader, writer))
        await asyncio.wait_for(client.handshake(), scaled(10))
        return client
    finally:
        writer.close()
        await writer.wait_closed()
