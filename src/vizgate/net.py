"""Small network checks."""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ["port_answers"]

#: A single connection attempt gives up after this many seconds.
CONNECT_TIMEOUT = 2.0


async def port_answers(host: str, port: int, timeout: float = CONNECT_TIMEOUT) -> bool:
    """Does host:port accept a TCP connection (closed again at once)?"""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True
