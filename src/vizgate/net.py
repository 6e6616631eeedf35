"""Small network checks."""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ["port_answers", "server_greets"]

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


async def server_greets(host: str, port: int, timeout: float = CONNECT_TIMEOUT) -> bool:
    """Does a server at host:port send something first, as an RFB server sends its version
    (RFC 6143 §7.1.1)?

    Stricter than :func:`port_answers`: the kernel completes a TCP connection to a listening
    socket by itself, even while the process behind it is being killed; only a live server
    speaks.
    """
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError):
        return False
    try:
        greeting = await asyncio.wait_for(reader.read(12), timeout)
    except (OSError, TimeoutError):
        greeting = b""
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return bool(greeting)
