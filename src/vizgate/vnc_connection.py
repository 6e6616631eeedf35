"""The tunnel's TCP connection to a VNC server, as the ASGI relay reads and writes it."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import cast

__all__ = ["READ_HIGH_WATER", "READ_LOW_WATER", "SERVER_WRITE_HIGH_WATER", "VncConnection"]

# Bytes from the VNC server waiting for the browser: reading from the server pauses above the
# high mark and resumes below the low one, so a slow browser holds the gateway's memory down.
READ_HIGH_WATER = 512 * 1024
READ_LOW_WATER = 128 * 1024

# The VNC server's socket buffers at most this much before writes from the browser wait.
SERVER_WRITE_HIGH_WATER = 256 * 1024


class VncConnection(asyncio.Protocol):
    """The TCP connection to a VNC server, with flow control both ways.

    Unlike asyncio's StreamReader it hands each received chunk on as it came, without copying
    it into and out of a buffer: the framebuffer direction is where the bytes are.
    """

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._chunks: deque[bytes] = deque()
        self._queued = 0
        self._reading_paused = False
        self._closed = False
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without inheriting from it.
        self._transport = cast(asyncio.Transport, transport)
        self._transport.set_write_buffer_limits(high=SERVER_WRITE_HIGH_WATER)

    def data_received(self, data: bytes) -> None:
        self._chunks.append(data)
        self._queued += len(data)
        self._readable.set()
        if self._queued >= READ_HIGH_WATER and not self._reading_paused and self._transport:
            self._reading_paused = True
            self._transport.pause_reading()

    def eof_received(self) -> bool:
        self._closed = True
        self._readable.set()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._readable.set()
        self._writable.set()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    async def read(self) -> bytes:
        """The next chunk from the server; ``b""`` once it has closed."""
        while not self._chunks:
            if self._closed:
                return b""
            self._readable.clear()
            await self._readable.wait()
        data = self._chunks.popleft()
        self._queued -= len(data)
        if self._reading_paused and self._queued <= READ_LOW_WATER and self._transport:
            self._reading_paused = False
            self._transport.resume_reading()
        return data

    async def write(self, data: bytes) -> None:
        """Send to the server; waits while its socket buffer is full."""
        if self._transport is None or self._transport.is_closing():
            raise ConnectionResetError("the VNC server's connection is closed")
        self._transport.write(data)
        await self._writable.wait()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def hand_over(self) -> tuple[asyncio.Transport, list[bytes], bool]:
        """Give up the connection to a fast-path link: its transport, the chunks received and
        not yet read, and whether the server's socket buffer is full."""
        assert self._transport is not None
        chunks = list(self._chunks)
        self._chunks.clear()
        self._queued = 0
        return self._transport, chunks, not self._writable.is_set()
