"""The byte protocol between the benchmark's clients and its backends.

A backend stands in for a VNC server. As a VNC server does (RFC 6143 §7.1.1), it speaks first:
it sends :data:`HELLO` (16 bytes) when a connection opens. The client (over raw TCP, or a
WebSocket through a proxy that relays to the backend) waits for it, then sends a 16-byte header
naming a mode and a byte count; the backend answers :data:`READY` (16 bytes) and then:

* ``SRCE`` (source): streams ``count`` bytes of :data:`PATTERN`, repeated, in 64 KiB writes;
* ``SINK``: reads ``count`` bytes, checks them against the pattern and answers a 16-byte
  verdict (:func:`sink_verdict`);
* ``ECHO``: sends back every byte it receives.

Every stream of payload is the same periodic pattern, so either end checks what it receives
with one ``memcmp`` per chunk (:class:`PatternChecker`) and a wrong, lost or reordered byte is
found at its offset. Timing starts at :data:`READY`, so connection set-up (a session start,
websockify's fork) is not counted as transfer time.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = [
    "HEADER_SIZE",
    "HELLO",
    "MODES",
    "MODE_ECHO",
    "MODE_SINK",
    "MODE_SOURCE",
    "PATTERN",
    "PATTERN_PERIOD",
    "READY",
    "RFB_BANNER",
    "PatternChecker",
    "SinkVerdict",
    "header",
    "parse_header",
    "parse_sink_verdict",
    "sink_verdict",
]

#: The pattern's period: one 64 KiB block, the size of the source's writes.
PATTERN_PERIOD = 64 * 1024
#: The payload block; the stream is this block repeated. Seeded, so both ends agree.
PATTERN: bytes = random.Random(0x56697A67).randbytes(PATTERN_PERIOD)

# The pattern repeated, so that any chunk up to _CHECK_SPAN bytes long starting at any phase of
# the period is one contiguous slice of it: checking a chunk is one startswith (a memcmp).
_CHECK_SPAN = 4 * 1024 * 1024
_EXTENDED: bytes = PATTERN * (1 + _CHECK_SPAN // PATTERN_PERIOD)

HEADER_SIZE = 16
MODE_SINK = b"SINK"
MODE_SOURCE = b"SRCE"
MODE_ECHO = b"ECHO"
MODES = (MODE_SINK, MODE_SOURCE, MODE_ECHO)

#: What the backend sends first on every connection.
HELLO = b"HELO" + bytes(HEADER_SIZE - 4)

#: The backend's answer to a header: it is ready, timing may start.
READY = b"REDY" + bytes(HEADER_SIZE - 4)

#: What the RFB backend sends first on every connection (RFC 6143 §7.1.1).
RFB_BANNER = b"RFB 003.008\n"

_GOOD = b"GOOD"
_BAD = b"BAD!"
_NO_OFFSET = (1 << 64) - 1


def header(mode: bytes, count: int = 0) -> bytes:
    """The 16-byte header that opens a connection to a backend in ``mode``."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}")
    return mode + count.to_bytes(8, "big") + bytes(4)


def parse_header(data: bytes) -> tuple[bytes, int]:
    """The mode and byte count of a header.

    Raises:
        ValueError: not a header.
    """
    if len(data) != HEADER_SIZE or data[:4] not in MODES:
        raise ValueError(f"not a benchmark header: {bytes(data[:HEADER_SIZE])!r}")
    return bytes(data[:4]), int.from_bytes(data[4:12], "big")


@dataclass(frozen=True)
class SinkVerdict:
    """What a sink found: how many bytes it took and the offset of the first wrong one."""

    received: int
    first_bad: int | None

    @property
    def ok(self) -> bool:
        return self.first_bad is None


def sink_verdict(received: int, first_bad: int | None) -> bytes:
    """The sink's 16-byte answer once it has read the announced count."""
    if first_bad is None:
        return _GOOD + received.to_bytes(8, "big") + bytes(4)
    return _BAD + received.to_bytes(8, "big") + min(first_bad, 0xFFFFFFFF).to_bytes(4, "big")


def parse_sink_verdict(data: bytes) -> SinkVerdict:
    """Read a sink's answer.

    Raises:
        ValueError: not a verdict.
    """
    if len(data) != HEADER_SIZE or data[:4] not in (_GOOD, _BAD):
        raise ValueError(f"not a sink verdict: {bytes(data)!r}")
    received = int.from_bytes(data[4:12], "big")
    if data[:4] == _GOOD:
        return SinkVerdict(received, None)
    return SinkVerdict(received, int.from_bytes(data[12:16], "big"))


class PatternChecker:
    """Checks a stream against the repeated :data:`PATTERN`, chunk by chunk.

    Attributes:
        offset: bytes checked so far.
        first_bad: the stream offset of the first byte that differs, or None.
    """

    __slots__ = ("first_bad", "offset")

    def __init__(self) -> None:
        self.offset = 0
        self.first_bad: int | None = None

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Check the next ``data`` bytes of the stream."""
        view = memoryview(data)
        size = len(view)
        if self.first_bad is None:
            start = 0
            while start < size:
                piece = view[start : start + _CHECK_SPAN]
                phase = (self.offset + start) % PATTERN_PERIOD
                if not _EXTENDED.startswith(piece, phase):
                    self.first_bad = self.offset + start + _first_difference(piece, phase)
                    break
                start += len(piece)
        self.offset += size

    @property
    def ok(self) -> bool:
        return self.first_bad is None


def _first_difference(piece: memoryview, phase: int) -> int:
    expected = _EXTENDED[phase : phase + len(piece)]
    for index, byte in enumerate(piece):
        if byte != expected[index]:
            return index
    return len(piece)
