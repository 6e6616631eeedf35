"""Tests for vizgate.view_only: the filter that keeps a view-only viewer's input from the server.

(The filter over what the server sends such a viewer is tested in test_view_only_server.py.)

The messages are built the way noVNC 1.7 (the copy the gateway serves, under
src/vizgate/web/portal/static/novnc) builds them in ``RFB.messages``. The realistic stream is fed
in every chunking that can matter: whole, byte by byte, cut once at every offset, in chunks of
every fixed size, and cut at random places.
"""

from __future__ import annotations

import itertools
import struct
import tracemalloc
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chunking import CHUNKINGS, chunks_of, cut, every_chunking
from vizgate.view_only import MAX_CUT_TEXT_LENGTH, WATCHER_ENCODINGS, ViewOnlyFilter

# --------------------------------------------------------------------------------------------
# Messages (RFC 6143 §7.5 and rfbproto's extensions), as noVNC sends them


def set_pixel_format(depth: int = 24, bits_per_pixel: int = 32) -> bytes:
    bits = depth // 3
    return (
        bytes([0, 0, 0, 0, bits_per_pixel, depth, 0, 1])
        + struct.pack("!HHH", (1 << bits) - 1, (1 << bits) - 1, (1 << bits) - 1)
        + bytes([0, bits, 2 * bits, 0, 0, 0])
    )


def set_encodings(encodings: Sequence[int]) -> bytes:
    return struct.pack(f"!BBH{len(encodings)}i", 2, 0, len(encodings), *encodings)


def framebuffer_update_request(incremental: bool = True, width: int = 1280) -> bytes:
    return struct.pack("!BBHHHH", 3, incremental, 0, 0, width, 800)


def enable_continuous_updates(enable: bool = True) -> bytes:
    return struct.pack("!BBHHHH", 150, enable, 0, 0, 1280, 800)


def client_fence(payload: bytes = b"", flags: int = 0x80000003) -> bytes:
    return struct.pack("!BxxxIB", 248, flags, len(payload)) + payload


def key_event(keysym: int, down: bool) -> bytes:
    return struct.pack("!BBxxI", 4, down, keysym)


def pointer_event(x: int, y: int, mask: int = 0) -> bytes:
    return struct.pack("!BBHH", 5, mask, x, y)


def client_cut_text(text: bytes) -> bytes:
    return struct.pack("!BxxxI", 6, len(text)) + text


def extended_cut_text(payload: bytes) -> bytes:
    """A ClientCutText of the Extended Clipboard extension: its length is negated."""
    return struct.pack("!Bxxxi", 6, -len(payload)) + payload


def xvp(operation: int) -> bytes:
    return bytes([250, 0, 1, operation])


def set_desktop_size(width: int, height: int, screens: int = 1) -> bytes:
    screen = struct.pack("!IHHHHI", 0, 0, 0, width, height, 0)
    return struct.pack("!BxHHBx", 251, width, height, screens) + screen * screens


def qemu_extended_key_event(keysym: int, down: bool, keycode: int) -> bytes:
    return struct.pack("!BBHII", 255, 0, down, keysym, keycode)


EXTENDED_MOUSE_BUTTONS = -316
EXTENDED_CLIPBOARD = struct.unpack("!i", struct.pack("!I", 0xC0A1E5CE))[0]
VMWARE_CURSOR = 0x574D5664

# What noVNC 1.7's _sendEncodings() lists at depth 24 without H.264, in its order.
NOVNC_ENCODINGS = [
    1,  # CopyRect
    7,  # Tight
    -260,  # TightPNG
    16,  # ZRLE
    21,  # JPEG
    5,  # Hextile
    2,  # RRE
    6,  # Zlib
    0,  # Raw
    -32 + 6,  # quality level 6
    -256 + 2,  # compression level 2
    -223,  # DesktopSize
    -224,  # LastRect
    -258,  # QEMU Extended Key Event
    -261,  # QEMU LED state
    -308,  # ExtendedDesktopSize
    -309,  # xvp
    -312,  # Fence
    -313,  # ContinuousUpdates
    -307,  # DesktopName
    EXTENDED_CLIPBOARD,
    EXTENDED_MOUSE_BUTTONS,
    VMWARE_CURSOR,
    -239,  # Cursor
]
# The same list as a watcher's SetEncodings reaches the server: what can be measured, in order.
NOVNC_ENCODINGS_FORWARDED = [1, 7, 16, 0, -26, -254, -223, -224, -308, -312, -313, -307, -239]

# One message of each kind the filter forwards unchanged, and of each kind it withholds.
PASSED = {
    "SetPixelFormat": set_pixel_format(),
    "SetEncodings": set_encodings(NOVNC_ENCODINGS_FORWARDED),
    "FramebufferUpdateRequest": framebuffer_update_request(),
    "EnableContinuousUpdates": enable_continuous_updates(),
    "EnableContinuousUpdates (disable)": enable_continuous_updates(enable=False),
    "ClientFence": client_fence(b"\x01\x02\x03"),
    "ClientFence (empty payload)": client_fence(),
    "ClientFence (64-byte payload)": client_fence(bytes(range(64))),
}
WITHHELD = {
    "KeyEvent": key_event(0x61, True),
    "PointerEvent": pointer_event(10, 20, 1),
    "PointerEvent (button 8, the top bit)": pointer_event(10, 20, 0x80),
    "ClientCutText": client_cut_text(b"rm -rf ~\n"),
    "ClientCutText (empty)": client_cut_text(b""),
    "ClientCutText (Extended Clipboard)": extended_cut_text(b"\x01\x00\x00\x01" + b"\0" * 4),
    "xvp (shutdown)": xvp(2),
    "SetDesktopSize": set_desktop_size(1920, 1080),
    "SetDesktopSize (no screens)": set_desktop_size(1920, 1080, screens=0),
    "SetDesktopSize (three screens)": set_desktop_size(1920, 1080, screens=3),
    "QEMU Extended Key Event": qemu_extended_key_event(0xFF0D, True, 0x1C),
}

# A session's opening as noVNC sends it, then a few seconds of a person using the desktop:
# (message, whether the filter forwards it). SetEncodings loses what a watcher may not ask for.
NOVNC_SESSION: list[tuple[bytes, bool]] = [
    (set_pixel_format(), True),
    (set_encodings(NOVNC_ENCODINGS), True),
    (framebuffer_update_request(incremental=False), True),
    (extended_cut_text(struct.pack("!I", 0x1F000001) + struct.pack("!I", 0)), False),
    (client_fence(b"\x00\x01"), True),
    (enable_continuous_updates(), True),
    (pointer_event(100, 100), False),
    (pointer_event(101, 102, 1), False),
    (framebuffer_update_request(), True),
    (qemu_extended_key_event(0x61, True, 0x1E), False),
    (qemu_extended_key_event(0x61, False, 0x1E), False),
    (key_event(0xFFE3, True), False),
    (pointer_event(101, 102, 0), False),
    (client_cut_text(b"a line of text copied in the browser\n" * 3), False),
    (framebuffer_update_request(), True),
    (set_desktop_size(1920, 1080), False),
    (xvp(3), False),
    (key_event(0xFFE3, False), False),
    (client_fence(), True),
    (pointer_event(5, 5, 0x08), False),
    (pointer_event(5, 5, 0x00), False),
    (framebuffer_update_request(), True),
]
SESSION = b"".join(message for message, _ in NOVNC_SESSION)


class Verdict(NamedTuple):
    """What the filter must make of a session (a model of it, written independently)."""

    forwarded: list[bytes]  # the messages the server receives, in order
    dropped: int
    refused: bool  # a SetPixelFormat came after the viewer asked for pictures


def expected_output(session: Iterable[tuple[bytes, bool]]) -> Verdict:
    """What the server must receive for ``session``: the forwarded messages, noVNC's SetEncodings
    restricted, up to a SetPixelFormat sent after a FramebufferUpdateRequest or an enabling
    EnableContinuousUpdates."""
    out = []
    dropped = 0
    asked_for_pictures = False
    for message, forwarded in session:
        if not forwarded:
            dropped += 1
            continue
        if message[0] == 0 and asked_for_pictures:
            return Verdict(out, dropped, refused=True)
        if message[0] == 3 or (message[0] == 150 and message[1]):
            asked_for_pictures = True
        if message == set_encodings(NOVNC_ENCODINGS):
            message = set_encodings(NOVNC_ENCODINGS_FORWARDED)
        out.append(message)
    return Verdict(out, dropped, refused=False)


EXPECTED = expected_output(NOVNC_SESSION).forwarded
EXPECTED_DROPPED = sum(not forwarded for _, forwarded in NOVNC_SESSION)
# Every prefix of the expected output that ends between two messages.
BOUNDARIES = {b"".join(EXPECTED[:n]) for n in range(len(EXPECTED) + 1)}


def feed_all(view_only: ViewOnlyFilter, chunks: Iterable[bytes]) -> bytes:
    """Feed ``chunks`` in order and return everything the filter let through.

    After every call, what came out so far must end at a message boundary: the filter hands out
    whole messages only.
    """
    out = b""
    for chunk in chunks:
        out += view_only.feed(chunk)
        assert out in BOUNDARIES or view_only.refusal is not None
    return out


def check_session(chunks: Sequence[bytes]) -> None:
    assert b"".join(chunks) == SESSION
    view_only = ViewOnlyFilter()
    assert feed_all(view_only, chunks) == b"".join(EXPECTED)
    assert view_only.dropped == EXPECTED_DROPPED
    assert view_only.refusal is None


# --------------------------------------------------------------------------------------------
# One message at a time


@pytest.mark.parametrize("message", PASSED.values(), ids=PASSED.keys())
def test_allowed_message_passes_unchanged(message: bytes) -> None:
    view_only = ViewOnlyFilter()
    assert view_only.feed(message) == message
    assert view_only.dropped == 0
    assert view_only.refusal is None


@pytest.mark.parametrize("message", WITHHELD.values(), ids=WITHHELD.keys())
def test_input_message_is_withheld(message: bytes) -> None:
    view_only = ViewOnlyFilter()
    assert view_only.feed(message) == b""
    assert view_only.dropped == 1
    assert view_only.refusal is None


@pytest.mark.parametrize("message", WITHHELD.values(), ids=WITHHELD.keys())
def test_withheld_message_is_measured_exactly(message: bytes) -> None:
    # A FramebufferUpdateRequest right after it comes through whole: the filter skipped
    # neither a byte too few (the request would be read from inside the input message) nor one
    # too many (its first byte would be eaten).
    request = framebuffer_update_request()
    view_only = ViewOnlyFilter()
    assert view_only.feed(message + request) == request
    assert view_only.dropped == 1


def test_no_input_reaches_the_server() -> None:
    # Every withheld message, each with a request before and after: only the requests come out.
    request = framebuffer_update_request()
    stream = request + request.join(WITHHELD.values()) + request
    view_only = ViewOnlyFilter()
    assert view_only.feed(stream) == request * (len(WITHHELD) + 1)
    assert view_only.dropped == len(WITHHELD)


def test_dropped_counts_withheld_messages() -> None:
    view_only = ViewOnlyFilter()
    view_only.feed(key_event(0x61, True) + key_event(0x61, False))
    assert view_only.dropped == 2
    view_only.feed(framebuffer_update_request())
    assert view_only.dropped == 2
    view_only.feed(pointer_event(1, 2)[:3])
    view_only.feed(pointer_event(1, 2)[3:])
    assert view_only.dropped == 3


def test_feeding_nothing_returns_nothing() -> None:
    view_only = ViewOnlyFilter()
    assert view_only.feed(b"") == b""
    assert view_only.feed(framebuffer_update_request()[:4]) == b""
    assert view_only.feed(b"") == b""
    assert view_only.feed(framebuffer_update_request()[4:]) == framebuffer_update_request()


# --------------------------------------------------------------------------------------------
# SetEncodings: only what the server filter can measure

TIGHT_PNG, JPEG, HEXTILE, RRE, ZLIB, H264 = -260, 21, 5, 2, 6, 50
QEMU_EXTENDED_KEY, QEMU_LED, XVP, CURSOR_WITH_ALPHA = -258, -261, -309, -314
# Everything a client might ask for that a watcher may not.
REMOVED = [
    TIGHT_PNG,
    JPEG,
    HEXTILE,
    RRE,
    ZLIB,
    H264,
    EXTENDED_CLIPBOARD,
    QEMU_EXTENDED_KEY,
    QEMU_LED,
    XVP,
    EXTENDED_MOUSE_BUTTONS,
    VMWARE_CURSOR,
    CURSOR_WITH_ALPHA,
]


def test_watcher_encodings_are_the_measurable_ones() -> None:
    assert frozenset({0, 1, 7, 16, -223, -224, -239, -307, -308, -312, -313}) == WATCHER_ENCODINGS
    assert WATCHER_ENCODINGS.isdisjoint(REMOVED)


def test_novnc_set_encodings_is_restricted() -> None:
    view_only = ViewOnlyFilter()
    assert view_only.feed(set_encodings(NOVNC_ENCODINGS)) == set_encodings(
        NOVNC_ENCODINGS_FORWARDED
    )
    assert view_only.dropped == 0


def test_novnc_set_encodings_with_h264_is_restricted() -> None:
    # noVNC puts H.264 right after CopyRect when the browser decodes it.
    view_only = ViewOnlyFilter()
    sent = [1, H264, *NOVNC_ENCODINGS[1:]]
    assert view_only.feed(set_encodings(sent)) == set_encodings(NOVNC_ENCODINGS_FORWARDED)


@pytest.mark.parametrize("level", range(10))
def test_quality_and_compression_hints_are_kept(level: int) -> None:
    sent = [16, -32 + level, -256 + level]
    view_only = ViewOnlyFilter()
    assert view_only.feed(set_encodings(sent)) == set_encodings(sent)


@pytest.mark.parametrize(
    ("sent", "forwarded"),
    [
        ([0], [0]),
        ([16, 1, 0, -239], [16, 1, 0, -239]),
        ([EXTENDED_MOUSE_BUTTONS, 0, EXTENDED_MOUSE_BUTTONS], [0]),
        ([HEXTILE, -316, 16], [16]),
        ([-313, -312, -308, -307, -239, -224, -223, 16, 1, 0], None),  # all kept, in this order
        # Just outside the hint ranges: -33, -22, -257, -246.
        ([0, -33, -32, -23, -22, -257, -256, -247, -246], [0, -32, -23, -256, -247]),
        # Nothing left that paints pixels: Raw is added, last.
        ([HEXTILE, RRE, -26, -223], [-26, -223, 0]),
        ([HEXTILE], [0]),  # one taken out, one added: as long as before, but not the same
        ([-223, HEXTILE], [-223, 0]),
        ([1], [1, 0]),
        (REMOVED, [0]),
        ([], [0]),
        # ZRLE or Tight alone paints pixels: no Raw added.
        ([HEXTILE, 16], [16]),
        ([HEXTILE, 7, -223], [7, -223]),
    ],
)
def test_set_encodings_rewritten(sent: list[int], forwarded: list[int] | None) -> None:
    view_only = ViewOnlyFilter()
    assert view_only.feed(set_encodings(sent)) == set_encodings(
        sent if forwarded is None else forwarded
    )


def test_set_encodings_keeps_its_padding_byte() -> None:
    # The rewritten message keeps the viewer's bytes where it can, as an unchanged one does.
    message = bytearray(set_encodings([HEXTILE, 0]))
    message[1] = 0x5A
    view_only = ViewOnlyFilter()
    assert view_only.feed(bytes(message)) == bytes([2, 0x5A]) + struct.pack("!Hi", 1, 0)


def test_set_encodings_of_the_largest_count() -> None:
    sent = [HEXTILE, 0] * 32767 + [16]
    message = set_encodings(sent)
    view_only = ViewOnlyFilter()
    out = b"".join(view_only.feed(chunk) for chunk in chunks_of(message, 1000))
    assert out == set_encodings([0] * 32767 + [16])
    assert view_only.refusal is None


def test_pointer_event_with_top_bit_stays_six_bytes() -> None:
    # With ExtendedMouseButtons never confirmed, bit 7 is button 8 and the message is 6 bytes.
    request = framebuffer_update_request()
    view_only = ViewOnlyFilter()
    view_only.feed(set_encodings(NOVNC_ENCODINGS))
    assert view_only.feed(pointer_event(3, 4, 0xFF) + request) == request


# --------------------------------------------------------------------------------------------
# SetPixelFormat: told to the server filter, and only before pictures were asked for


@pytest.mark.parametrize(("depth", "bits_per_pixel"), [(24, 32), (16, 16), (8, 8), (24, 24)])
def test_pixel_format_is_reported(depth: int, bits_per_pixel: int) -> None:
    # Whatever the value: judging it is the server filter's business.
    reported: list[bytes] = []
    view_only = ViewOnlyFilter(on_pixel_format=reported.append)
    message = set_pixel_format(depth, bits_per_pixel)
    assert view_only.feed(message) == message
    assert reported == [message[4:]]
    assert len(reported[0]) == 16
    assert reported[0][0] == bits_per_pixel


def test_pixel_format_is_reported_once_whole() -> None:
    reported: list[bytes] = []
    view_only = ViewOnlyFilter(on_pixel_format=reported.append)
    message = set_pixel_format(16, 16)
    for i in range(len(message) - 1):
        assert view_only.feed(message[i : i + 1]) == b""
    assert reported == []
    assert view_only.feed(message[-1:]) == message
    assert reported == [message[4:]]


def test_pixel_format_is_reported_for_each_before_pictures() -> None:
    reported: list[bytes] = []
    view_only = ViewOnlyFilter(on_pixel_format=reported.append)
    stream = (
        set_pixel_format(8, 8)
        + set_encodings([0])
        + enable_continuous_updates(enable=False)
        + set_pixel_format(24, 32)
        + framebuffer_update_request()
    )
    assert view_only.feed(stream) == stream
    assert reported == [set_pixel_format(8, 8)[4:], set_pixel_format(24, 32)[4:]]
    assert view_only.refusal is None


def test_no_callback_no_problem() -> None:
    view_only = ViewOnlyFilter()
    assert view_only.feed(set_pixel_format()) == set_pixel_format()


@pytest.mark.parametrize(
    "asking",
    [
        framebuffer_update_request(incremental=False),
        framebuffer_update_request(incremental=True),
        enable_continuous_updates(enable=True),
    ],
    ids=["full request", "incremental request", "continuous updates"],
)
def test_pixel_format_after_asking_for_pictures_is_refused(asking: bytes) -> None:
    reported: list[bytes] = []
    view_only = ViewOnlyFilter(on_pixel_format=reported.append)
    before = set_pixel_format() + set_encodings([0]) + asking + key_event(0x61, True)
    stream = before + set_pixel_format(16, 16) + framebuffer_update_request()
    # The messages before it still go (the key event withheld); the new format never does.
    assert view_only.feed(stream) == set_pixel_format() + set_encodings([0]) + asking
    assert view_only.refusal == (
        "a view-only viewer changed its pixel format after asking for pictures"
    )
    assert reported == [set_pixel_format()[4:]]
    assert view_only.dropped == 1
    assert view_only.feed(framebuffer_update_request()) == b""


def test_late_pixel_format_refused_in_any_chunking() -> None:
    request = framebuffer_update_request()
    stream = set_pixel_format() + request + set_pixel_format(16, 16) + request
    for offset in range(1, len(stream)):
        reported: list[bytes] = []
        view_only = ViewOnlyFilter(on_pixel_format=reported.append)
        out = b"".join(view_only.feed(chunk) for chunk in cut(stream, [offset]))
        assert out == set_pixel_format() + request
        assert view_only.refusal is not None
        assert reported == [set_pixel_format()[4:]]


# --------------------------------------------------------------------------------------------
# Chunking


@pytest.mark.parametrize("chunking", CHUNKINGS)
def test_session_in_every_chunking(chunking: str) -> None:
    boundaries = itertools.accumulate(len(message) for message, _ in NOVNC_SESSION)
    for chunks in every_chunking(SESSION, boundaries, 9)[chunking]:
        check_session(chunks)


@given(st.sets(st.integers(min_value=1, max_value=len(SESSION) - 1)))
def test_session_cut_anywhere(offsets: set[int]) -> None:
    check_session(cut(SESSION, sorted(offsets)))


@st.composite
def sessions(draw: st.DrawFn) -> list[tuple[bytes, bool]]:
    """Random sequences of the messages above, the expected verdict with each."""
    catalogue = [(m, True) for m in PASSED.values()] + [(m, False) for m in WITHHELD.values()]
    return draw(st.lists(st.sampled_from(catalogue), max_size=30))


@given(sessions(), st.data())
def test_random_sessions_in_random_chunks(
    session: list[tuple[bytes, bool]], data: st.DataObject
) -> None:
    # Random sessions often send a SetPixelFormat after a FramebufferUpdateRequest: the model
    # tells where the filter must stop.
    stream = b"".join(message for message, _ in session)
    offsets = data.draw(st.sets(st.integers(min_value=1, max_value=max(1, len(stream) - 1))))
    view_only = ViewOnlyFilter()
    out = b"".join(view_only.feed(chunk) for chunk in cut(stream, sorted(offsets)) if chunk)
    verdict = expected_output(session)
    assert out == b"".join(verdict.forwarded)
    assert view_only.dropped == verdict.dropped
    assert (view_only.refusal is not None) == verdict.refused


# --------------------------------------------------------------------------------------------
# Clipboard


def test_extended_clipboard_negative_length() -> None:
    # As an unsigned length, -8 would be nearly 4 GiB: over the limit, and a refusal.
    payload = struct.pack("!I", 0x08000001) + b"\x78\x9c\x03\x00\x00\x00\x00\x01"
    message = extended_cut_text(payload)
    assert message[4:8] == struct.pack("!i", -len(payload))
    request = framebuffer_update_request()
    view_only = ViewOnlyFilter()
    assert view_only.feed(message + request) == request
    assert view_only.dropped == 1
    assert view_only.refusal is None


def test_large_cut_text_is_skipped_without_being_held() -> None:
    # 5 MiB of clipboard in 64 KiB chunks, as a WebSocket would hand them over. What the filter
    # allocates while they pass must stay far below 5 MiB: it counts them down, it keeps none.
    size = 5 * 1024 * 1024
    chunk = b"x" * (64 * 1024)
    request = framebuffer_update_request()
    view_only = ViewOnlyFilter()
    assert view_only.feed(request + struct.pack("!BxxxI", 6, size)) == request
    tracemalloc.start()
    try:
        for _ in range(size // len(chunk)):
            assert view_only.feed(chunk) == b""
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024
    assert view_only.feed(request) == request
    assert view_only.dropped == 1
    assert view_only.refusal is None


def test_cut_text_ending_inside_a_chunk() -> None:
    # The clipboard text ends part-way through a chunk that also holds the next messages.
    text = b"y" * 100_000
    request = framebuffer_update_request()
    stream = client_cut_text(text) + request + key_event(0x62, True) + request
    view_only = ViewOnlyFilter()
    out = b"".join(view_only.feed(chunk) for chunk in chunks_of(stream, 4096))
    assert out == request * 2
    assert view_only.dropped == 2


def test_cut_text_at_the_limit_is_accepted() -> None:
    view_only = ViewOnlyFilter()
    assert view_only.feed(struct.pack("!BxxxI", 6, MAX_CUT_TEXT_LENGTH)) == b""
    assert view_only.refusal is None
    assert view_only.dropped == 1


@pytest.mark.parametrize(
    "length",
    [MAX_CUT_TEXT_LENGTH + 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF - MAX_CUT_TEXT_LENGTH],
    ids=["limit+1", "2GiB-1", "2GiB or -2GiB", "negative past the limit"],
)
def test_oversize_cut_text_is_refused(length: int) -> None:
    view_only = ViewOnlyFilter()
    assert view_only.feed(struct.pack("!BxxxI", 6, length) + b"x" * 100) == b""
    assert view_only.refusal is not None
    assert "clipboard" in view_only.refusal
    assert view_only.feed(framebuffer_update_request()) == b""


# --------------------------------------------------------------------------------------------
# Refusals


@pytest.mark.parametrize("kind", [1, 7, 127, 149, 249, 252, 253, 254])
def test_unknown_type_is_refused(kind: int) -> None:
    request = framebuffer_update_request()
    view_only = ViewOnlyFilter()
    # The request before it still goes; what follows the unknown byte never does.
    assert view_only.feed(request + bytes([kind]) + request) == request
    assert view_only.refusal == f"a view-only viewer sent an RFB message of unknown type {kind}"
    assert view_only.feed(request) == b""
    assert view_only.feed(set_pixel_format()) == b""


def test_refusal_does_not_depend_on_chunking() -> None:
    request = framebuffer_update_request()
    stream = request + key_event(0x61, True) + b"\x7f" + request
    view_only = ViewOnlyFilter()
    out = b"".join(view_only.feed(chunk) for chunk in chunks_of(stream, 1))
    assert out == request
    assert view_only.refusal is not None
    assert "127" in view_only.refusal
    assert view_only.dropped == 1


@pytest.mark.parametrize("subtype", [1, 2, 255])
def test_qemu_message_other_than_extended_key_event_is_refused(subtype: int) -> None:
    view_only = ViewOnlyFilter()
    assert view_only.feed(bytes([255, subtype]) + bytes(10) + framebuffer_update_request()) == b""
    assert view_only.refusal is not None
    assert f"subtype {subtype}" in view_only.refusal
    assert view_only.dropped == 0


def test_qemu_subtype_waits_for_its_byte() -> None:
    view_only = ViewOnlyFilter()
    assert view_only.feed(b"\xff") == b""
    assert view_only.refusal is None
    assert view_only.feed(b"\x01") == b""
    assert view_only.refusal is not None


@pytest.mark.parametrize("length", [65, 255])
def test_oversize_fence_payload_is_refused(length: int) -> None:
    message = struct.pack("!BxxxIB", 248, 0, length) + bytes(length)
    view_only = ViewOnlyFilter()
    assert view_only.feed(message + framebuffer_update_request()) == b""
    assert view_only.refusal is not None
    assert f"{length}-byte payload" in view_only.refusal


def test_refusal_right_after_a_skipped_message() -> None:
    # The tail of a withheld clipboard text arrives in a later call with an unknown type behind
    # it: the text is skipped to its end, the byte after it is read as a type and refused.
    request = framebuffer_update_request()
    view_only = ViewOnlyFilter()
    assert view_only.feed(client_cut_text(b"0123456789")[:11]) == b""
    assert view_only.feed(b"3456789" + b"\x7f" + request) == b""
    assert view_only.refusal is not None
    assert "unknown type 127" in view_only.refusal
    assert view_only.dropped == 1
    assert view_only.feed(request) == b""
