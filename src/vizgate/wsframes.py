"""WebSocket framing for the tunnel's fast path, sans I/O (RFC 6455 §5).

:class:`FrameParser` reads a browser's (client's, so masked) frames from bytes as they arrive
and hands out events: payload slices unmasked as soon as they are there, pings, pongs, the
close, or a protocol failure with its close code. :func:`frame_header` and
:func:`close_frame` build the server's frames. Nothing here touches a socket.
"""

from __future__ import annotations

import codecs
import struct
from typing import NamedTuple

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover -- websockets without its C extension
    from websockets.utils import apply_mask

__all__ = [
    "CLOSE_INTERNAL_ERROR",
    "CLOSE_NO_STATUS",
    "CLOSE_PROTOCOL_ERROR",
    "CLOSE_TOO_BIG",
    "OP_BINARY",
    "OP_PING",
    "OP_PONG",
    "Close",
    "Data",
    "Failure",
    "FrameParser",
    "Ping",
    "Pong",
    "close_frame",
    "frame_end",
    "frame_header",
]


OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

CLOSE_NO_STATUS = 1005
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_INVALID_DATA = 1007
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011

# RFC 6455 §7.4: the codes an endpoint may put in a close frame (1004-1006 and 1015 are
# reserved for reporting, never sent); 3000-4999 belong to libraries and applications.
_SENDABLE_CLOSE_CODES = frozenset(
    {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014}
)

_FIRST_BYTE_OF_FINAL_BINARY = 0x80 | OP_BINARY
# A masked frame with a 7-bit length: 2 bytes and the 4-byte mask.
_SMALL_FRAME_HEADER = 6

_HEADER_SHORT = struct.Struct("!BB")
_HEADER_MEDIUM = struct.Struct("!BBH")
_HEADER_LONG = struct.Struct("!BBQ")
_CODE = struct.Struct("!H")


class Data(NamedTuple):
    """A slice of a data message's payload, unmasked; ``end`` on the message's last slice."""

    data: bytes
    end: bool


class Ping(NamedTuple):
    """A ping frame and its payload."""

    data: bytes


class Pong(NamedTuple):
    """A pong frame and its payload."""

    data: bytes


class Close(NamedTuple):
    """The peer's close frame: its code (1005 when it had none) and reason."""

    code: int
    reason: str


class Failure(NamedTuple):
    """The peer broke the protocol: close with this code and reason."""

    code: int
    reason: str


Event = Data | Ping | Pong | Close | Failure


def frame_header(length: int, opcode: int = OP_BINARY) -> bytes:
    """The header of an unmasked, final server frame with a payload of ``length`` bytes."""
    first = 0x80 | opcode
    if length < 126:
        return _HEADER_SHORT.pack(first, length)
    if length < 65536:
        return _HEADER_MEDIUM.pack(first, 126, length)
    return _HEADER_LONG.pack(first, 127, length)


def close_frame(code: int, reason: str) -> bytes:
    """A whole server close frame; code 1005 sends an empty payload, as RFC 6455 §7.1.5 says."""
    payload = b"" if code == CLOSE_NO_STATUS else _CODE.pack(code) + reason.encode()
    return frame_header(len(payload), OP_CLOSE) + payload


def _rotated(mask: bytes, offset: int) -> bytes:
    shift = offset & 3
    return mask if not shift else mask[shift:] + mask[:shift]


class FrameParser:
    """Reads a client's WebSocket frames (RFC 6455 §5) as their bytes arrive; sans-I/O.

    Data payloads come out in slices, unmasked, as soon as they are received; control frames
    whole. After a :class:`Close` or a :class:`Failure` the parser reads nothing more.

    Args:
        max_size: the largest message (all of its fragments) accepted; None for no limit.
        message: the kind of a fragmented message already begun (``"bytes"`` or ``"text"``)
            whose continuation comes first, or None.
        prefix: the part of that message already received (for its size and, for text, its
            UTF-8 validity).
    """

    def __init__(
        self, max_size: int | None = None, *, message: str | None = None, prefix: bytes = b""
    ) -> None:
        self.max_size = max_size
        self.done = False
        self._header = bytearray()
        # The frame being read.
        self._opcode = 0
        self._fin = False
        self._mask = b""
        self._remaining = 0
        self._offset = 0
        self._control = bytearray()
        # The data message being read, across its fragments.
        self._in_message = message is not None
        self._size = len(prefix)
        self._utf8: codecs.IncrementalDecoder | None = None
        self._in_frame = False
        if message == "text":
            self._utf8 = codecs.getincrementaldecoder("utf-8")()
            self._utf8.decode(prefix)

    def receive(self, data: bytes | memoryview) -> list[Event]:
        """Parse ``data``, the next bytes from the client; the events they complete.

        Nothing refers to ``data`` once this returns (the events' payloads are unmasked copies),
        so the caller may reuse its buffer.
        """
        end = len(data)
        if (
            # What a viewer mostly sends (pointer and key events): one whole, final, masked
            # binary frame of less than 126 bytes, between messages. Read without the general
            # machinery below; the result is the same.
            not self._in_frame
            and not self._in_message
            and not self._header
            and end >= _SMALL_FRAME_HEADER
            and data[0] == _FIRST_BYTE_OF_FINAL_BINARY
            and 0x80 <= data[1] < 0x80 + 126
            and end == _SMALL_FRAME_HEADER + data[1] - 0x80
            and not self.done
            and (self.max_size is None or end - _SMALL_FRAME_HEADER <= self.max_size)
        ):
            return [Data(apply_mask(data[_SMALL_FRAME_HEADER:], bytes(data[2:6])), True)]
        events: list[Event] = []
        if self.done:
            return events
        view = memoryview(data)
        pos = 0
        while pos < end:
            if not self._in_frame:
                pos = self._read_header(view, pos, end, events)
                if self.done:
                    break
                if not self._in_frame:
                    continue
                if self._remaining == 0:
                    self._payload(b"", events)
                    continue
            take = min(self._remaining, end - pos)
            chunk = view[pos : pos + take]
            pos += take
            self._payload(apply_mask(chunk, _rotated(self._mask, self._offset)), events)
        return events

    def _fail(self, events: list[Event], code: int, reason: str) -> None:
        self.done = True
        events.append(Failure(code, reason))

    def _read_header(self, view: memoryview, pos: int, end: int, events: list[Event]) -> int:
        header = self._header
        if not header and end - pos >= 2:
            size = _header_size(view[pos + 1])
            if end - pos >= size:
                self._start_frame(view[pos : pos + size], events)
                return pos + size
        while pos < end:
            need = 2 if len(header) < 2 else _header_size(header[1])
            take = min(need - len(header), end - pos)
            header += view[pos : pos + take]
            pos += take
            if len(header) == need and need > 2:
                self._start_frame(memoryview(bytes(header)), events)
                header.clear()
                break
            if len(header) == 2 and not header[1] & 0x80:
                # Unmasked: refused before waiting for a header that has no mask.
                self._start_frame(memoryview(bytes(header)), events)
                header.clear()
                break
        return pos

    def _start_frame(self, header: memoryview, events: list[Event]) -> None:
        first, second = header[0], header[1]
        fin = bool(first & 0x80)
        opcode = first & 0x0F
        if first & 0x70:
            return self._fail(events, CLOSE_PROTOCOL_ERROR, "reserved bits must be 0")
        if not second & 0x80:
            return self._fail(events, CLOSE_PROTOCOL_ERROR, "client frames must be masked")
        length = second & 0x7F
        if length == 126:
            length = _CODE.unpack_from(header, 2)[0]
        elif length == 127:
            length = struct.unpack_from("!Q", header, 2)[0]
            if length >> 63:
                return self._fail(events, CLOSE_PROTOCOL_ERROR, "invalid frame length")
        if opcode >= OP_CLOSE:
            if opcode not in (OP_CLOSE, OP_PING, OP_PONG):
                return self._fail(events, CLOSE_PROTOCOL_ERROR, f"invalid opcode {opcode}")
            if not fin:
                return self._fail(events, CLOSE_PROTOCOL_ERROR, "fragmented control frame")
            if length > 125:
                return self._fail(events, CLOSE_PROTOCOL_ERROR, "control frame too long")
        elif opcode == OP_CONTINUATION:
            if not self._in_message:
                return self._fail(events, CLOSE_PROTOCOL_ERROR, "unexpected continuation frame")
        elif opcode in (OP_TEXT, OP_BINARY):
            if self._in_message:
                return self._fail(events, CLOSE_PROTOCOL_ERROR, "expected a continuation frame")
            self._in_message = True
            self._size = 0
            self._utf8 = codecs.getincrementaldecoder("utf-8")() if opcode == OP_TEXT else None
        else:
            return self._fail(events, CLOSE_PROTOCOL_ERROR, f"invalid opcode {opcode}")
        if opcode < OP_CLOSE and self.max_size is not None:
            self._size += length
            if self._size > self.max_size:
                return self._fail(
                    events, CLOSE_TOO_BIG, f"message over the limit of {self.max_size} bytes"
                )
        self._opcode = opcode
        self._fin = fin
        self._mask = bytes(header[-4:])
        self._remaining = length
        self._offset = 0
        self._in_frame = True
        return None

    def _payload(self, data: bytes, events: list[Event]) -> None:
        self._remaining -= len(data)
        self._offset += len(data)
        complete = self._remaining == 0
        if complete:
            self._in_frame = False
        if self._opcode >= OP_CLOSE:
            self._control += data
            if complete:
                payload = bytes(self._control)
                self._control.clear()
                self._control_frame(payload, events)
            return
        end = complete and self._fin
        if self._utf8 is not None:
            try:
                self._utf8.decode(data, end)
            except UnicodeDecodeError:
                return self._fail(events, CLOSE_INVALID_DATA, "invalid UTF-8 in a text message")
        if end:
            self._in_message = False
            self._utf8 = None
        if data or end:
            events.append(Data(data, end))
        return None

    def _control_frame(self, payload: bytes, events: list[Event]) -> None:
        if self._opcode == OP_PING:
            events.append(Ping(payload))
        elif self._opcode == OP_PONG:
            events.append(Pong(payload))
        elif not payload:
            self.done = True
            events.append(Close(CLOSE_NO_STATUS, ""))
        elif len(payload) == 1:
            self._fail(events, CLOSE_PROTOCOL_ERROR, "close frame too short")
        else:
            code = _CODE.unpack_from(payload)[0]
            if code not in _SENDABLE_CLOSE_CODES and not 3000 <= code < 5000:
                return self._fail(events, CLOSE_PROTOCOL_ERROR, f"invalid close code {code}")
            try:
                reason = payload[2:].decode()
            except UnicodeDecodeError:
                return self._fail(events, CLOSE_INVALID_DATA, "invalid UTF-8 in a close reason")
            self.done = True
            events.append(Close(code, reason))
        return None


def _header_size(second: int) -> int:
    """The size of a client frame's header, from its second byte (with the mask key)."""
    length = second & 0x7F
    extended = 2 if length == 126 else 8 if length == 127 else 0
    return 2 + extended + (4 if second & 0x80 else 0)


def frame_end(buffer: bytearray, start: int) -> int | None:
    """Where the frame that starts at ``start`` ends, or None while it is incomplete."""
    if len(buffer) - start < 2:
        return None
    size = _header_size(buffer[start + 1])
    if len(buffer) - start < size:
        return None
    length = buffer[start + 1] & 0x7F
    if length == 126:
        length = _CODE.unpack_from(buffer, start + 2)[0]
    elif length == 127:
        length = struct.unpack_from("!Q", buffer, start + 2)[0]
    return start + size + length
