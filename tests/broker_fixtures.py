"""Brokers over catalogs of test-double sessions, for the tests of the broker and of what it
does with a reservation's options (a pytest plugin: ``conftest.py`` loads it)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

import pytest

from support import scaled
from vizgate.broker import Broker
from vizgate.catalog import load_catalog
from vizgate.lifecycle import Timeouts
from vizgate.testing import DOUBLE_SESSION_SCRIPT
from vizgate.testing.doubles import forget, release_hung

__all__ = ["FAST", "WAIT", "MakeBroker", "bounded_close", "make_broker"]

# Small timeouts keep the tests fast; VIZGATE_TEST_TIME_SCALE stretches the waits, not these.
FAST = Timeouts(reservation=5.0, start=1.0, ready=0.5, linger=0.2, stop=0.5)
WAIT = scaled(5.0)


class MakeBroker(Protocol):
    def __call__(
        self,
        services: Mapping[str, Mapping[str, Any]],
        *,
        count: int = ...,
        **timeouts: float,
    ) -> Awaitable[Broker]: ...


async def bounded_close(broker: Broker) -> None:
    """Close a broker; fail, rather than hang, when close() does not return."""
    async with asyncio.timeout(2 * WAIT) as limit:
        await broker.close(timeout=WAIT)
    # close() may swallow the cancellation the limit sends; expired() still tells.
    assert not limit.expired(), "Broker.close() did not return"


@pytest.fixture
async def make_broker(tmp_path: Path) -> AsyncIterator[MakeBroker]:
    """Open brokers over a catalog of double sessions; close them all after the test."""
    brokers: list[Broker] = []

    async def make(
        services: Mapping[str, Mapping[str, Any]], *, count: int = 2, **timeouts: float
    ) -> Broker:
        config = {
            name: {"script": str(DOUBLE_SESSION_SCRIPT), "count": count, "options": dict(options)}
            for name, options in services.items()
        }
        path = tmp_path / f"external_services_{len(brokers)}.json"
        path.write_text(json.dumps(config))
        broker = Broker(load_catalog(path), timeouts=replace(FAST, **timeouts), probe_interval=0.02)
        await broker.open()
        brokers.append(broker)
        return broker

    yield make
    # A hung start() or stop() must not hold up the closing brokers.
    release_hung()
    try:
        for broker in brokers:
            await bounded_close(broker)
    finally:
        forget()
