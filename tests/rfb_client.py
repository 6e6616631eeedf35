"""A small RFB 3.8 client for tests (RFC 6143), over a WebSocket or a plain TCP stream.

It speaks only what tests need: the handshake with security None (or VNC Authentication when
given a password), ServerInit, FramebufferUpdateRequest and raw-encoded FramebufferUpdates, so a
test can read the colour of a pixel of a real VNC desktop.
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass
from typing import Protocol

from websockets.asyncio.client import ClientConnection

SECURITY_NONE = 1
SECURITY_VNC_AUTH = 2


class ByteSource(Protocol):
    async def read(self) -> bytes: ...

    async def write(self, data: bytes) -> None: ...


class WebSocketSource:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    async def read(self) -> bytes:
        message = await self.ws.recv()
        return message if isinstance(message, bytes) else message.encode()

    async def write(self, data: bytes) -> None:
        await self.ws.send(data)


class StreamSource:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def read(self) -> bytes:
        data = await self.reader.read(65536)
        if not data:
            raise EOFError("connection closed")
        return data

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()


class RfbRefused(Exception):
    """The server refused the handshake."""


@dataclass
class PixelFormat:
    bits_per_pixel: int
    depth: int
    big_endian: bool
    true_colour: bool
    red_max: int
    green_max: int
    blue_max: int
    red_shift: int
    green_shift: int
    blue_shift: int

    @classmethod
    def parse(cls, data: bytes) -> PixelFormat:
        (bpp, depth, big, true_colour, rmax, gmax, bmax, rshift, gshift, bshift) = struct.unpack(
            ">BBBBHHHBBB3x", data
        )
        return cls(
            bpp, depth, bool(big), bool(true_colour), rmax, gmax, bmax, rshift, gshift, bshift
        )

    def rgb(self, pixel: bytes) -> tuple[int, int, int]:
        value = int.from_bytes(pixel, "big" if self.big_endian else "little")

        def channel(shift: int, maximum: int) -> int:
            return ((value >> shift) & maximum) * 255 // maximum

        return (
            channel(self.red_shift, self.red_max),
            channel(self.green_shift, self.green_max),
            channel(self.blue_shift, self.blue_max),
        )


class RfbClient:
    """Speaks RFB 3.8 as a viewer over ``source``."""

    def __init__(self, source: ByteSource) -> None:
        self.source = source
        self.buffer = bytearray()
        self.width = 0
        self.height = 0
        self.name = ""
        self.pixel_format: PixelFormat | None = None
        self.offered_security: list[int] = []

    async def read_exactly(self, count: int) -> bytes:
        while len(self.buffer) < count:
            self.buffer += await self.source.read()
        data = bytes(self.buffer[:count])
        del self.buffer[:count]
        return data

    async def handshake(self, *, password: bytes | None = None, shared: bool = True) -> None:
        """Version, security, ClientInit and ServerInit (RFC 6143 §7.1, §7.3)."""
        version = await self.read_exactly(12)
        if not version.startswith(b"RFB "):
            raise RfbRefused(f"not RFB: {version!r}")
        await self.source.write(b"RFB 003.008\n")
        (count,) = struct.unpack(">B", await self.read_exactly(1))
        if count == 0:
            raise RfbRefused(await self._reason())
        self.offered_security = list(await self.read_exactly(count))
        if SECURITY_NONE in self.offered_security:
            await self.source.write(bytes([SECURITY_NONE]))
        elif SECURITY_VNC_AUTH in self.offered_security and password is not None:
            from vizgate.vnc_password import vnc_auth_response

            await self.source.write(bytes([SECURITY_VNC_AUTH]))
            challenge = await self.read_exactly(16)
            await self.source.write(vnc_auth_response(challenge, password))
        else:
            raise RfbRefused(f"no usable security type in {self.offered_security}")
        (result,) = struct.unpack(">I", await self.read_exactly(4))
        if result != 0:
            raise RfbRefused(await self._reason())
        await self.source.write(bytes([1 if shared else 0]))
        header = await self.read_exactly(24)
        self.width, self.height = struct.unpack(">HH", header[:4])
        self.pixel_format = PixelFormat.parse(header[4:20])
        (name_length,) = struct.unpack(">I", header[20:24])
        self.name = (await self.read_exactly(name_length)).decode(errors="replace")

    async def _reason(self) -> str:
        (length,) = struct.unpack(">I", await self.read_exactly(4))
        return (await self.read_exactly(length)).decode(errors="replace")

    async def request_update(
        self,
        x: int = 0,
        y: int = 0,
        w: int | None = None,
        h: int | None = None,
        *,
        incremental: bool = False,
    ) -> None:
        w = self.width if w is None else w
        h = self.height if h is None else h
        await self.source.write(struct.pack(">BBHHHH", 3, int(incremental), x, y, w, h))

    async def read_update(self) -> list[tuple[int, int, int, int, bytes]]:
        """Read server messages until a FramebufferUpdate; return its raw rectangles."""
        assert self.pixel_format is not None
        bytes_per_pixel = self.pixel_format.bits_per_pixel // 8
        while True:
            (kind,) = struct.unpack(">B", await self.read_exactly(1))
            if kind == 0:
                _, count = struct.unpack(">BH", await self.read_exactly(3))
                rects = []
                for _ in range(count):
                    x, y, w, h, encoding = struct.unpack(">HHHHi", await self.read_exactly(12))
                    if encoding != 0:
                        raise RfbRefused(f"unexpected encoding {encoding}")
                    rects.append((x, y, w, h, await self.read_exactly(w * h * bytes_per_pixel)))
                return rects
            if kind == 2:  # Bell
                continue
            if kind == 3:  # ServerCutText
                await self.read_exactly(3)
                (length,) = struct.unpack(">I", await self.read_exactly(4))
                await self.read_exactly(length)
                continue
            if kind == 1:  # SetColourMapEntries
                _, _, count = struct.unpack(">BHH", await self.read_exactly(5))
                await self.read_exactly(6 * count)
                continue
            raise RfbRefused(f"unexpected server message type {kind}")

    async def pixel(self, x: int = 0, y: int = 0) -> tuple[int, int, int]:
        """The colour of one pixel, read with a non-incremental 1x1 update request."""
        assert self.pixel_format is not None
        await self.request_update(x, y, 1, 1)
        for rx, ry, w, h, data in await self.read_update():
            if rx <= x < rx + w and ry <= y < ry + h:
                bpp = self.pixel_format.bits_per_pixel // 8
                offset = ((y - ry) * w + (x - rx)) * bpp
                return self.pixel_format.rgb(data[offset : offset + bpp])
        raise RfbRefused("the update did not cover the pixel")
