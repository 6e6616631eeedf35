"""Tests for vizgate.view_only_server.ViewOnlyServerFilter: what the VNC server sends a watcher,
less the session's clipboard.

The messages are built from RFC 6143 §7.3.2 and §7.6 and rfbproto's extensions, the rectangles
in the encodings a watcher's SetEncodings is restricted to. Pixel data is random bytes, so that
a filter measuring a rectangle wrongly reads message types out of pixels and goes astray. The
realistic stream is fed whole, byte by byte, cut once at every offset, in chunks of every fixed
size, cut twice around every boundary, and cut at random places; after every call, what came out
must be the beginning of the expected output, behind the input by at most one header.
"""

from __future__ import annotations

import itertools
import random
import struct
import tracemalloc
from collections.abc import Iterable, Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chunking import CHUNKINGS, chunks_of, cut, every_chunking
from vizgate.view_only import ViewOnlyFilter
from vizgate.view_only_server import ViewOnlyServerFilter

_random = random.Random(6143)


def noise(length: int) -> bytes:
    """Bytes to stand for pixels or compressed data: any value, message types included."""
    return _random.randbytes(length)


# --------------------------------------------------------------------------------------------
# ServerInit and server messages


def pixel_format(bits_per_pixel: int = 32) -> bytes:
    depth = {8: 8, 16: 16, 32: 24}.get(bits_per_pixel, 24)
    return struct.pack("!BBBBHHHBBBxxx", bits_per_pixel, depth, 0, 1, 255, 255, 255, 16, 8, 0)


def server_init(name: bytes = b"alice's desktop", bits_per_pixel: int = 32) -> bytes:
    return (
        struct.pack("!HH", 1280, 800)
        + pixel_format(bits_per_pixel)
        + struct.pack("!I", len(name))
        + name
    )


def framebuffer_update(rectangles: Sequence[bytes], count: int | None = None) -> bytes:
    """A FramebufferUpdate; ``count`` when it is not the number of ``rectangles`` (LastRect)."""
    header = struct.pack("!BxH", 0, len(rectangles) if count is None else count)
    return header + b"".join(rectangles)


def rectangle(encoding: int, width: int = 0, height: int = 0, x: int = 0, y: int = 0) -> bytes:
    return struct.pack("!HHHHi", x, y, width, height, encoding)


def raw(width: int, height: int, bits_per_pixel: int = 32) -> bytes:
    return rectangle(0, width, height, 10, 20) + noise(width * height * bits_per_pixel // 8)


def copy_rect(width: int = 64, height: int = 32) -> bytes:
    return rectangle(1, width, height, 0, 100) + struct.pack("!HH", 0, 132)


def zrle(data_length: int, width: int = 64, height: int = 64) -> bytes:
    return rectangle(16, width, height, 64, 0) + struct.pack("!I", data_length) + noise(data_length)


def compact_length(length: int) -> bytes:
    """Tight's compact length: 7 bits a byte, least significant first, the third byte whole."""
    if length < 0x80:
        return bytes([length])
    if length < 0x4000:
        return bytes([length & 0x7F | 0x80, length >> 7])
    return bytes([length & 0x7F | 0x80, length >> 7 & 0x7F | 0x80, length >> 14])


def tight_fill(pixel: int = 3, width: int = 64, height: int = 64) -> bytes:
    return rectangle(7, width, height, 8, 8) + bytes([0x80]) + noise(pixel)


def tight_jpeg(data_length: int, width: int = 64, height: int = 64) -> bytes:
    # 0x9_: JPEG, the low bits resetting zlib streams 0 and 2 (JPEG has none; allowed anyway).
    return (
        rectangle(7, width, height, 0, 0)
        + bytes([0x95])
        + compact_length(data_length)
        + noise(data_length)
    )


def tight_basic(
    width: int,
    height: int,
    *,
    stream: int = 0,
    kind: int | None = None,
    colours: int = 0,
    compressed: int = 20,
    pixel: int = 3,
) -> bytes:
    """Basic compression: ``kind`` None (no filter byte, copy), 0 copy, 1 palette of
    ``colours``, 2 gradient; data under 12 bytes as it is, else ``compressed`` bytes after
    their compact length."""
    control = stream << 4 | (0x40 if kind is not None else 0)
    body = bytes([control])
    if kind is not None:
        body += bytes([kind])
    if kind == 1:
        body += bytes([colours - 1]) + noise(colours * pixel)
        size = (width + 7) // 8 * height if colours == 2 else width * height
    else:
        size = width * height * pixel
    if size < 12:
        body += noise(size)
    else:
        body += compact_length(compressed) + noise(compressed)
    return rectangle(7, width, height, 16, 16) + body


def cursor(width: int, height: int, bits_per_pixel: int = 32) -> bytes:
    # The pixels, then a bitmask of ceil(width / 8) bytes per row.
    pixels = noise(width * height * bits_per_pixel // 8)
    mask = noise((width + 7) // 8 * height)
    return rectangle(-239, width, height, 3, 4) + pixels + mask


def desktop_name(name: bytes) -> bytes:
    return rectangle(-307) + struct.pack("!I", len(name)) + name


def extended_desktop_size(screens: int, width: int = 1920, height: int = 1080) -> bytes:
    screen = struct.pack("!IHHHHI", 7, 0, 0, width, height, 0)
    return rectangle(-308, width, height, 0, 0) + struct.pack("!Bxxx", screens) + screen * screens


def desktop_size(width: int = 1920, height: int = 1080) -> bytes:
    return rectangle(-223, width, height)


def last_rect() -> bytes:
    return rectangle(-224)


def set_colour_map_entries(colours: int, first: int = 0) -> bytes:
    return struct.pack("!BxHH", 1, first, colours) + noise(6 * colours)


def bell() -> bytes:
    return b"\x02"


def server_cut_text(text: bytes) -> bytes:
    return struct.pack("!BxxxI", 3, len(text)) + text


def extended_server_cut_text(payload: bytes) -> bytes:
    """A ServerCutText of the Extended Clipboard extension: its length is negated."""
    return struct.pack("!Bxxxi", 3, -len(payload)) + payload


def end_of_continuous_updates() -> bytes:
    return b"\x96"


def server_fence(payload: bytes = b"", flags: int = 0x00000003) -> bytes:
    return struct.pack("!BxxxIB", 248, flags, len(payload)) + payload


def xvp(code: int = 1) -> bytes:
    return bytes([250, 0, 1, code])


SECRET = b"the session owner's password, copied by mistake\n"
# Bytes that would read as a ServerCutText message, hidden inside pixels.
DECOY = struct.pack("!BxxxI", 3, 4) + b"oops"

# A session as a VNC server sends it: (message, whether the watcher may see it).
SESSION_MESSAGES: list[tuple[bytes, bool]] = [
    (server_init(b"alice@node042:1 (vizgate)"), True),
    (
        framebuffer_update(
            [
                raw(4, 3),
                rectangle(0, 3, 1) + DECOY,  # 3 x 1 pixels of 4 bytes: exactly the decoy
                copy_rect(),
                zrle(37),
                zrle(0),
                cursor(9, 4),
                cursor(16, 2),
                cursor(0, 0),  # no cursor shown
                desktop_name(b"alice@node042:1 \xe2\x80\x94 shared"),
                extended_desktop_size(2),
                extended_desktop_size(0),
                desktop_size(),
            ]
        ),
        True,
    ),
    (bell(), True),
    (
        framebuffer_update(
            [
                tight_fill(),
                tight_jpeg(0),
                tight_jpeg(127),
                tight_jpeg(128),
                tight_jpeg(16384),
                tight_basic(1, 1),  # 3 bytes, as they are
                tight_basic(2, 2, stream=3),  # 12 bytes: compressed
                tight_basic(2, 1, kind=0),
                tight_basic(20, 10, kind=0, stream=1, compressed=300),
                tight_basic(5, 3, kind=1, colours=2),  # a bit a pixel: 3 rows of 1 byte
                tight_basic(16, 6, kind=1, colours=2, compressed=7),  # 2 bytes a row: 12
                tight_basic(3, 3, kind=1, colours=3),  # a byte a pixel: 9, as they are
                tight_basic(40, 30, kind=1, colours=256, stream=2, compressed=500),
                tight_basic(4, 4, kind=2, compressed=12),
                rectangle(7, 2, 2) + bytes([0x00]) + compact_length(len(DECOY)) + DECOY,
            ]
        ),
        True,
    ),
    (server_cut_text(SECRET), False),
    (framebuffer_update([raw(2, 2), zrle(300), copy_rect(), last_rect()], count=65535), True),
    (framebuffer_update([]), True),
    (extended_server_cut_text(struct.pack("!I", 0x10000001) + noise(20)), False),
    (set_colour_map_entries(3, first=16), True),
    (server_cut_text(b""), False),
    (server_fence(b"\x00\x01\x02"), True),
    (end_of_continuous_updates(), True),
    (xvp(1), True),
    (framebuffer_update([zrle(5), raw(1, 1)]), True),
]
SESSION = b"".join(message for message, _ in SESSION_MESSAGES)
EXPECTED = b"".join(message for message, shown in SESSION_MESSAGES if shown)
EXPECTED_DROPPED = sum(not shown for _, shown in SESSION_MESSAGES)
# How many of the first n bytes of the session reach the watcher, for every n.
SHOWN_BEFORE = list(
    itertools.accumulate(
        (shown for message, shown in SESSION_MESSAGES for _ in message),
        initial=0,
    )
)
# The longest header the filter holds back in this session: the Tight rectangle with a palette
# of 256 colours (12 + control, filter, palette size + 768 + a 3-byte compact length).
LONGEST_HEADER = 12 + 3 + 256 * 3 + 3


def feed_all(
    shown: ViewOnlyServerFilter, chunks: Iterable[bytes], expected: bytes = EXPECTED
) -> bytes:
    """Feed ``chunks`` in order and return everything the filter let through.

    After every call, what came out so far must be the beginning of what is expected, and behind
    what was fed by no more than one header (nothing else is held back).
    """
    out = b""
    fed = 0
    for chunk in chunks:
        out += shown.feed(chunk)
        fed += len(chunk)
        assert expected.startswith(out)
        if expected is EXPECTED:
            assert SHOWN_BEFORE[fed] - LONGEST_HEADER <= len(out) <= SHOWN_BEFORE[fed]
    return out


def check_session(chunks: Sequence[bytes]) -> None:
    assert b"".join(chunks) == SESSION
    shown = ViewOnlyServerFilter()
    assert feed_all(shown, chunks) == EXPECTED
    assert shown.dropped == EXPECTED_DROPPED
    assert shown.refusal is None


# --------------------------------------------------------------------------------------------
# The session in every chunking


def test_the_session_is_realistic() -> None:
    # What the test relies on: the secret is in the stream and nowhere in what is expected.
    assert SECRET in SESSION
    assert SECRET not in EXPECTED
    assert len(DECOY) == 3 * 4
    assert DECOY in EXPECTED
    assert len(EXPECTED) + len(server_cut_text(SECRET)) < len(SESSION)


@pytest.mark.parametrize("chunking", CHUNKINGS)
def test_session_in_every_chunking(chunking: str) -> None:
    boundaries = itertools.accumulate(len(message) for message, _ in SESSION_MESSAGES)
    for chunks in every_chunking(SESSION, boundaries, 13)[chunking]:
        check_session(chunks)


@given(st.sets(st.integers(min_value=1, max_value=len(SESSION) - 1)))
def test_session_cut_anywhere(offsets: set[int]) -> None:
    check_session(cut(SESSION, sorted(offsets)))


# Messages that may follow ServerInit in any order, each with whether the watcher sees it.
CATALOGUE: list[tuple[bytes, bool]] = [
    (framebuffer_update([raw(3, 2), copy_rect()]), True),
    (framebuffer_update([zrle(17), cursor(7, 3), desktop_size()]), True),
    (framebuffer_update([desktop_name(b"x"), extended_desktop_size(1), raw(0, 5)]), True),
    (framebuffer_update([cursor(1, 1), last_rect()], count=65535), True),
    (framebuffer_update([copy_rect(), last_rect()], count=3), True),
    (framebuffer_update([]), True),
    (framebuffer_update([tight_fill(), tight_jpeg(300), tight_basic(2, 2)]), True),
    (framebuffer_update([tight_basic(9, 9, kind=1, colours=2), tight_basic(1, 3, kind=2)]), True),
    (set_colour_map_entries(2), True),
    (set_colour_map_entries(0), True),
    (bell(), True),
    (end_of_continuous_updates(), True),
    (server_fence(), True),
    (server_fence(bytes(range(64))), True),
    (xvp(0), True),
    (server_cut_text(SECRET), False),
    (server_cut_text(DECOY), False),
    (server_cut_text(b""), False),
    (extended_server_cut_text(struct.pack("!I", 0x08000001) + noise(9)), False),
]


@st.composite
def sessions(draw: st.DrawFn) -> list[tuple[bytes, bool]]:
    return [(server_init(), True), *draw(st.lists(st.sampled_from(CATALOGUE), max_size=25))]


@given(sessions(), st.data())
def test_random_sessions_in_random_chunks(
    session: list[tuple[bytes, bool]], data: st.DataObject
) -> None:
    stream = b"".join(message for message, _ in session)
    expected = b"".join(message for message, seen in session if seen)
    offsets = data.draw(st.sets(st.integers(min_value=1, max_value=len(stream) - 1)))
    shown = ViewOnlyServerFilter()
    assert feed_all(shown, cut(stream, sorted(offsets)), expected) == expected
    assert shown.dropped == sum(not seen for _, seen in session)
    assert shown.refusal is None


# --------------------------------------------------------------------------------------------
# One message at a time


def test_server_init_passes_with_its_name() -> None:
    shown = ViewOnlyServerFilter()
    init = server_init(b"a name with \x03 and \xf8 in it")
    assert shown.feed(init[:23]) == b""
    assert shown.feed(init[23:24]) == init[:24]  # the header whole; the name as it comes
    assert shown.feed(init[24:30]) == init[24:30]
    assert shown.feed(init[30:] + bell()) == init[30:] + bell()


def test_server_init_with_an_empty_name() -> None:
    shown = ViewOnlyServerFilter()
    assert shown.feed(server_init(b"") + bell()) == server_init(b"") + bell()


@pytest.mark.parametrize(
    "message",
    [
        server_cut_text(SECRET),
        server_cut_text(b""),
        server_cut_text(DECOY),
        extended_server_cut_text(b""),
        extended_server_cut_text(struct.pack("!I", 0x02000001) + b"\x78\x9c" + noise(30)),
    ],
    ids=["text", "empty", "text that reads as a message", "extended empty", "extended"],
)
def test_cut_text_is_withheld_and_measured_exactly(message: bytes) -> None:
    # A Bell right after it comes through: neither a byte too few nor one too many skipped.
    shown = ViewOnlyServerFilter()
    shown.feed(server_init())
    assert shown.feed(message + bell()) == bell()
    assert shown.dropped == 1
    assert shown.refusal is None


def test_extended_clipboard_negative_length() -> None:
    # Extended Clipboard's "provide" message: as an unsigned length, -N would be nearly 4 GiB.
    payload = struct.pack("!I", 0x08000001) + struct.pack("!I", 12) + b"\x78\x9c" + noise(10)
    message = extended_server_cut_text(payload)
    assert message[4:8] == struct.pack("!i", -len(payload))
    shown = ViewOnlyServerFilter()
    shown.feed(server_init())
    out = b"".join(shown.feed(chunk) for chunk in chunks_of(message, 3))
    assert out == b""
    assert shown.feed(bell()) == bell()
    assert shown.dropped == 1


def test_dropped_counts_cut_texts() -> None:
    shown = ViewOnlyServerFilter()
    shown.feed(server_init())
    assert shown.dropped == 0
    shown.feed(server_cut_text(b"a") + bell() + server_cut_text(b"b"))
    assert shown.dropped == 2
    shown.feed(server_cut_text(b"c")[:7])
    assert shown.dropped == 2  # counted once its length is known
    shown.feed(server_cut_text(b"c")[7:])
    assert shown.dropped == 3


@pytest.mark.parametrize("payload", [b"", b"\x01", bytes(range(64))], ids=["0", "1", "64"])
def test_server_fence_passes(payload: bytes) -> None:
    shown = ViewOnlyServerFilter()
    shown.feed(server_init())
    assert shown.feed(server_fence(payload) + bell()) == server_fence(payload) + bell()


def test_last_rect_ends_an_update_whatever_its_count() -> None:
    # rfbproto: the client stops at LastRect; noVNC does so for any count, so does the filter.
    update = framebuffer_update([copy_rect(), last_rect()], count=5)
    shown = ViewOnlyServerFilter()
    shown.feed(server_init())
    assert shown.feed(update + server_cut_text(SECRET) + bell()) == update + bell()
    assert shown.dropped == 1


def test_update_of_65535_rectangles() -> None:
    update = framebuffer_update([copy_rect(1, 1)] * 65535)
    shown = ViewOnlyServerFilter()
    shown.feed(server_init())
    out = b"".join(shown.feed(chunk) for chunk in chunks_of(update, 4096))
    assert out == update
    assert shown.feed(server_cut_text(SECRET) + bell()) == bell()


def test_feeding_nothing_returns_nothing() -> None:
    shown = ViewOnlyServerFilter()
    assert shown.feed(b"") == b""
    assert shown.feed(server_init()) == server_init()
    update = framebuffer_update([raw(2, 2)])
    assert shown.feed(update[:20]) == update[:20]
    assert shown.feed(b"") == b""
    assert shown.feed(update[20:]) == update[20:]


# --------------------------------------------------------------------------------------------
# Pixel formats


def test_bits_per_pixel_come_from_server_init() -> None:
    update = framebuffer_update([raw(4, 3, 16), cursor(9, 4, 16)])
    shown = ViewOnlyServerFilter()
    stream = server_init(bits_per_pixel=16) + update + server_cut_text(SECRET) + bell()
    assert shown.feed(stream) == server_init(bits_per_pixel=16) + update + bell()
    assert shown.dropped == 1


@pytest.mark.parametrize("bits_per_pixel", [8, 16, 32])
def test_set_pixel_format_changes_raw_and_cursor_lengths(bits_per_pixel: int) -> None:
    update = framebuffer_update([raw(4, 3, bits_per_pixel), cursor(9, 4, bits_per_pixel)])
    stream = server_init(bits_per_pixel=32) + update + server_cut_text(SECRET) + bell()
    for offset in range(1, len(stream)):
        shown = ViewOnlyServerFilter()
        shown.set_pixel_format(pixel_format(bits_per_pixel))
        out = b"".join(shown.feed(chunk) for chunk in cut(stream, [offset]))
        assert out == server_init() + update + bell()
        assert shown.dropped == 1
        assert shown.refusal is None


def test_set_pixel_format_after_server_init() -> None:
    shown = ViewOnlyServerFilter()
    assert shown.feed(server_init()) == server_init()
    shown.set_pixel_format(pixel_format(16))
    update = framebuffer_update([raw(4, 3, 16), cursor(9, 4, 16)])
    assert shown.feed(update + server_cut_text(SECRET) + bell()) == update + bell()


def test_measured_with_the_wrong_bits_per_pixel_the_stream_goes_astray() -> None:
    # The same 16-bit update without being told: the filter reads pixels as headers.
    update = framebuffer_update([raw(4, 3, 16), cursor(9, 4, 16)])
    shown = ViewOnlyServerFilter()
    out = shown.feed(server_init() + update + server_cut_text(SECRET) + bell())
    assert out != server_init() + update + bell()


def test_watcher_and_server_filters_together() -> None:
    # The watcher's SetPixelFormat, passed by its filter, tells the server filter.
    shown = ViewOnlyServerFilter()
    view_only = ViewOnlyFilter(on_pixel_format=shown.set_pixel_format)
    assert shown.feed(server_init(bits_per_pixel=32)) == server_init()
    set_pixel_format = b"\x00\x00\x00\x00" + pixel_format(16)
    assert view_only.feed(set_pixel_format) == set_pixel_format
    update = framebuffer_update([raw(5, 5, 16), cursor(3, 3, 16)])
    assert shown.feed(update + bell()) == update + bell()


@pytest.mark.parametrize("bits_per_pixel", [0, 1, 4, 12, 24, 64, 255])
def test_unmeasurable_bits_per_pixel_are_refused_at_the_next_pixels(bits_per_pixel: int) -> None:
    shown = ViewOnlyServerFilter()
    shown.set_pixel_format(pixel_format(bits_per_pixel))
    # What has no pixels of the watcher's format still passes.
    before = server_init() + framebuffer_update([copy_rect(), zrle(4), desktop_size()]) + bell()
    assert shown.feed(before) == before
    assert shown.refusal is None
    update = framebuffer_update([copy_rect(), raw(1, 1)])
    assert shown.feed(update + bell()) == update[:4] + copy_rect()
    assert shown.refusal == (
        f"a watcher's pixel format has {bits_per_pixel} bits per pixel "
        "(the gateway measures only 8, 16 or 32)"
    )
    assert shown.feed(bell()) == b""


def test_unmeasurable_bits_per_pixel_refused_at_a_cursor() -> None:
    shown = ViewOnlyServerFilter()
    update = framebuffer_update([cursor(2, 2)])
    stream = server_init(bits_per_pixel=24) + update
    # ServerInit and the update's header come out; the cursor does not.
    assert shown.feed(stream) == server_init(bits_per_pixel=24) + update[:4]
    assert shown.refusal is not None
    assert "24 bits per pixel" in shown.refusal


# --------------------------------------------------------------------------------------------
# Large payloads: never held


SIZE = 5 * 1024 * 1024
CHUNK = 64 * 1024


def test_large_raw_rectangle_streams_through_without_being_held() -> None:
    # 1024 x 1280 pixels of 4 bytes: 5 MiB, handed over in 64 KiB chunks as a socket would.
    # Each chunk comes out as it goes in; what the filter allocates meanwhile stays far below
    # 5 MiB: at most a copy of the chunk in hand, to return.
    head = server_init() + framebuffer_update([rectangle(0, 1024, 1280)], count=2)
    assert SIZE == 1024 * 1280 * 4
    chunks = [bytes([i]) * CHUNK for i in range(4)]  # made before measuring
    shown = ViewOnlyServerFilter()
    assert shown.feed(head) == head
    passed = 0
    tracemalloc.start()
    try:
        for i in range(SIZE // CHUNK):
            out = shown.feed(chunks[i % 4])
            assert out == chunks[i % 4]
            passed += len(out)
            del out
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * CHUNK
    assert passed == SIZE
    after = copy_rect() + server_cut_text(SECRET) + bell()
    assert shown.feed(after) == copy_rect() + bell()
    assert shown.refusal is None


def test_large_raw_rectangle_arrives_whole_in_uneven_chunks() -> None:
    # The same rectangle, its header and the messages around it cut anywhere by the chunks.
    pixels = noise(SIZE)
    update = framebuffer_update([rectangle(0, 1024, 1280) + pixels])
    stream = server_init() + update + server_cut_text(SECRET) + bell()
    shown = ViewOnlyServerFilter()
    out = [shown.feed(chunk) for chunk in chunks_of(stream, CHUNK + 7)]
    assert b"".join(out) == server_init() + update + bell()
    # Every call handed on what it got: nothing was saved up for later.
    assert all(len(piece) >= CHUNK + 7 - LONGEST_HEADER for piece in out[:-2])


def test_large_zrle_rectangle_streams_through() -> None:
    shown = ViewOnlyServerFilter()
    head = server_init() + framebuffer_update([rectangle(16, 1280, 800)]) + struct.pack("!I", SIZE)
    assert shown.feed(head) == head
    chunk = noise(CHUNK)
    tracemalloc.start()
    try:
        for _ in range(SIZE // CHUNK):
            assert shown.feed(chunk) == chunk
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * CHUNK
    assert shown.feed(bell()) == bell()


def test_large_cut_text_is_skipped_without_being_held() -> None:
    shown = ViewOnlyServerFilter()
    assert shown.feed(server_init() + bell() + struct.pack("!BxxxI", 3, SIZE)) == (
        server_init() + bell()
    )
    chunk = b"x" * CHUNK
    tracemalloc.start()
    try:
        for _ in range(SIZE // CHUNK):
            assert shown.feed(chunk) == b""
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < CHUNK
    assert shown.feed(bell()) == bell()
    assert shown.dropped == 1
    assert shown.refusal is None


def test_large_cut_text_ending_inside_a_chunk() -> None:
    text = noise(SIZE)
    update = framebuffer_update([raw(8, 8)])
    stream = server_init() + server_cut_text(text) + update + server_cut_text(text) + bell()
    shown = ViewOnlyServerFilter()
    out = b"".join(shown.feed(chunk) for chunk in chunks_of(stream, CHUNK))
    assert out == server_init() + update + bell()
    assert shown.dropped == 2


# --------------------------------------------------------------------------------------------
# Refusals

OPENING = server_init() + framebuffer_update([copy_rect()])


@pytest.mark.parametrize("kind", [4, 5, 6, 7, 127, 149, 151, 249, 251, 252, 253, 254, 255])
def test_unknown_message_type_is_refused(kind: int) -> None:
    shown = ViewOnlyServerFilter()
    # What came before still goes; what follows the unknown byte never does.
    stream = OPENING + bytes([kind]) + server_cut_text(SECRET) + bell()
    assert shown.feed(stream) == OPENING
    assert shown.refusal == f"the VNC server sent a watcher an RFB message of unknown type {kind}"
    assert shown.feed(bell()) == b""
    assert shown.feed(server_cut_text(SECRET)) == b""


@pytest.mark.parametrize(
    "encoding",
    [
        2,  # RRE
        5,  # Hextile
        6,  # Zlib
        21,  # JPEG
        50,  # H.264
        -260,  # TightPNG
        -258,  # QEMU Extended Key Event
        -261,  # QEMU LED state
        -309,  # xvp
        -312,  # Fence: a pseudo-encoding, never a rectangle
        -313,  # ContinuousUpdates: likewise
        -314,  # Cursor with alpha
        -316,  # ExtendedMouseButtons
        -26,  # a quality level
        -254,  # a compression level
        0x574D5664,  # VMware cursor
        -1063131698,  # Extended Clipboard (0xC0A1E5CE)
    ],
)
def test_rectangle_in_unmeasurable_encoding_is_refused(encoding: int) -> None:
    update = framebuffer_update([copy_rect(), rectangle(encoding, 16, 16) + noise(600), raw(1, 1)])
    stream = server_init() + update + server_cut_text(SECRET) + bell()
    shown = ViewOnlyServerFilter()
    out = b"".join(shown.feed(chunk) for chunk in chunks_of(stream, 1))
    # The update's header and the rectangle before come out; nothing from the unknown one on.
    assert out == server_init() + update[:4] + copy_rect()
    assert shown.refusal == (
        f"the VNC server sent a watcher a rectangle in encoding {encoding}, "
        "which the gateway cannot measure"
    )
    assert shown.dropped == 0


@pytest.mark.parametrize("length", [65, 128, 255])
def test_oversize_fence_payload_is_refused(length: int) -> None:
    message = struct.pack("!BxxxIB", 248, 0, length) + bytes(length)
    shown = ViewOnlyServerFilter()
    assert shown.feed(OPENING + message + bell()) == OPENING
    assert shown.refusal == (
        f"the VNC server sent a watcher a ServerFence with a {length}-byte payload "
        "(at most 64 allowed)"
    )
    assert shown.feed(bell()) == b""


def test_refusal_does_not_depend_on_chunking() -> None:
    stream = OPENING + server_cut_text(SECRET) + bell() + b"\x7f" + server_cut_text(SECRET) + bell()
    for offset in range(1, len(stream)):
        shown = ViewOnlyServerFilter()
        out = b"".join(shown.feed(chunk) for chunk in cut(stream, [offset]))
        assert out == OPENING + bell()
        assert shown.refusal is not None
        assert "unknown type 127" in shown.refusal
        assert shown.dropped == 1


def test_refusal_right_after_a_skipped_cut_text() -> None:
    # The cut text's tail arrives with an unknown type behind it: skipped to its end, then the
    # byte after it is read as a type and refused.
    shown = ViewOnlyServerFilter()
    shown.feed(server_init())
    assert shown.feed(server_cut_text(b"0123456789")[:11]) == b""
    assert shown.feed(b"3456789" + b"\xfe" + bell()) == b""
    assert shown.refusal is not None
    assert "unknown type 254" in shown.refusal
    assert shown.feed(bell()) == b""


# --------------------------------------------------------------------------------------------
# Tight


def pixel_format_with(
    bits_per_pixel: int = 32,
    depth: int = 24,
    true_colour: int = 1,
    maximum: int = 255,
    shifts: tuple[int, int, int] = (16, 8, 0),
) -> bytes:
    return struct.pack(
        "!BBBBHHHBBBxxx", bits_per_pixel, depth, 0, true_colour, maximum, maximum, maximum, *shifts
    )


@pytest.mark.parametrize("length", [0, 1, 127, 128, 129, 16383, 16384, 16385, 4194303])
def test_tight_compact_lengths_are_read_exactly(length: int) -> None:
    update = framebuffer_update([tight_jpeg(length), tight_basic(10, 10, compressed=length)])
    stream = server_init() + update + server_cut_text(SECRET) + bell()
    shown = ViewOnlyServerFilter()
    size = 1 if length < 20000 else 65536
    out = b"".join(shown.feed(chunk) for chunk in chunks_of(stream, size))
    assert out == server_init() + update + bell()
    assert shown.dropped == 1
    assert shown.refusal is None


@pytest.mark.parametrize("bits_per_pixel", [8, 16])
def test_tight_pixels_are_a_pixels_size_outside_the_24_bit_format(bits_per_pixel: int) -> None:
    pixel = bits_per_pixel // 8
    update = framebuffer_update(
        [
            tight_fill(pixel),
            tight_basic(2, 1, pixel=pixel),  # under 12 bytes either way
            tight_basic(3, 2, kind=1, colours=5, pixel=pixel),
            tight_basic(8, 8, kind=1, colours=2, pixel=pixel),
            tight_basic(5, 5, kind=2, pixel=pixel),
        ]
    )
    stream = server_init() + update + server_cut_text(SECRET) + bell()
    for offset in range(1, len(stream)):
        shown = ViewOnlyServerFilter()
        shown.set_pixel_format(pixel_format(bits_per_pixel))
        out = b"".join(shown.feed(chunk) for chunk in cut(stream, [offset]))
        assert out == server_init() + update + bell()
        assert shown.refusal is None


def test_tight_in_the_watchers_pixel_format_through_both_filters() -> None:
    shown = ViewOnlyServerFilter()
    view_only = ViewOnlyFilter(on_pixel_format=shown.set_pixel_format)
    assert shown.feed(server_init()) == server_init()
    set_pixel_format = b"\x00\x00\x00\x00" + pixel_format(16)
    assert view_only.feed(set_pixel_format) == set_pixel_format
    update = framebuffer_update([tight_fill(2), tight_basic(2, 2, kind=1, colours=3, pixel=2)])
    assert shown.feed(update + server_cut_text(SECRET) + bell()) == update + bell()


def test_a_palette_of_256_colours_is_held_whole_and_no_more() -> None:
    rect = tight_basic(40, 30, kind=1, colours=256, compressed=500)
    header_length = 12 + 3 + 256 * 3 + 2  # 500 takes two bytes of compact length
    shown = ViewOnlyServerFilter()
    shown.feed(server_init() + framebuffer_update([rect])[:4])
    assert shown.feed(rect[: header_length - 1]) == b""
    assert shown.feed(rect[header_length - 1 : header_length + 10]) == rect[: header_length + 10]
    assert shown.feed(rect[header_length + 10 :] + bell()) == rect[header_length + 10 :] + bell()


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (
            bytes([0xA0]) + compact_length(4) + noise(4),
            "a Tight rectangle with compression control 0xa, which standard Tight does not have",
        ),
        (
            bytes([0xF0]),
            "a Tight rectangle with compression control 0xf, which standard Tight does not have",
        ),
        (bytes([0x40, 3]) + noise(20), "a Tight filter 3"),
        (bytes([0x40, 255]) + noise(20), "a Tight filter 255"),
        (
            bytes([0x40, 1, 0]) + noise(3) + noise(8),
            "a Tight palette of one colour, which the gateway cannot measure",
        ),
    ],
    ids=["PNG", "0xF", "filter 3", "filter 255", "one colour"],
)
def test_unmeasurable_tight_rectangles_are_refused(body: bytes, reason: str) -> None:
    before = framebuffer_update([tight_fill()])
    update = framebuffer_update([copy_rect(), rectangle(7, 4, 4) + body, raw(1, 1)])
    stream = server_init() + before + update + server_cut_text(SECRET) + bell()
    shown = ViewOnlyServerFilter()
    out = b"".join(shown.feed(chunk) for chunk in chunks_of(stream, 1))
    assert out == server_init() + before + update[:4] + copy_rect()
    assert shown.refusal == f"the VNC server sent a watcher {reason}"
    assert shown.feed(bell()) == b""


@pytest.mark.parametrize(
    "watcher_format",
    [
        pixel_format_with(true_colour=0),  # a colour map: libvncserver 3 bytes, TigerVNC 4
        pixel_format_with(shifts=(12, 4, 0)),  # odd shifts: likewise
        pixel_format_with(bits_per_pixel=24),  # no such pixel size
    ],
    ids=["colour map", "odd shifts", "24 bits"],
)
def test_tight_in_a_format_servers_disagree_on_is_refused(watcher_format: bytes) -> None:
    shown = ViewOnlyServerFilter()
    shown.set_pixel_format(watcher_format)
    before = server_init() + framebuffer_update([copy_rect(), zrle(10)])
    assert shown.feed(before) == before
    update = framebuffer_update([tight_fill()])
    assert shown.feed(update + bell()) == update[:4]
    assert shown.refusal == (
        "a watcher's pixel format leaves the size of Tight's pixels open "
        "(the gateway measures Tight in 8, 16 and 32 bits per pixel)"
    )


def test_tight_in_a_24_bit_server_format_is_measured_with_3_byte_pixels() -> None:
    # No SetPixelFormat: the server's own format from ServerInit counts.
    update = framebuffer_update([tight_fill(3), tight_basic(3, 3, kind=2, compressed=40)])
    shown = ViewOnlyServerFilter()
    stream = server_init() + update + server_cut_text(SECRET) + bell()
    assert shown.feed(stream) == server_init() + update + bell()
