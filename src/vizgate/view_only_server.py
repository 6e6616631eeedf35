"""Keep the desktop's clipboard out of the sight of a view-only viewer.

A view-only share link lets a person watch a session without controlling it. The VNC server
cannot be told which of its clients may read the clipboard, so the gateway reads the stream the
server sends such a viewer (a *watcher*) once the RFB handshake is done, and forwards all of it
but the clipboard. RFB has no framing: the only way to find where a message starts is to know
the length of every message before it, so the filter measures each message the way its reader
measures it, and ends the connection on a message it cannot measure. (What the watcher sends the
server is filtered by :class:`vizgate.view_only.ViewOnlyFilter`.)

**What the watcher is sent** (:class:`ViewOnlyServerFilter`): the server's ServerInit
(§7.3.2), then the server-to-client messages of §7.6 and rfbproto.

* passed: FramebufferUpdate (§7.6.1) whose rectangles are in one of
  :data:`vizgate.view_only.WATCHER_ENCODINGS`, SetColourMapEntries (§7.6.2), Bell (§7.6.3),
  EndOfContinuousUpdates (150), ServerFence (248) and xvp (250);
* withheld: ServerCutText (§7.6.4, including the Extended Clipboard form, whatever its size):
  the session's clipboard is its owner's, not the watcher's.

Another message type, a rectangle in another encoding (which the server would only send against
the SetEncodings that :class:`vizgate.view_only.ViewOnlyFilter` restricted), a ServerFence
payload over 64 bytes, or pixels that are not 8, 16 or 32 bits, ends the watcher's connection:
see :attr:`ViewOnlyServerFilter.refusal`.

A FramebufferUpdate is measured rectangle by rectangle, and the length of Raw, Cursor and Tight
rectangles depends on the pixel format the server sends in: the watcher's, once its
SetPixelFormat has passed (which is why :class:`vizgate.view_only.ViewOnlyFilter` takes an
``on_pixel_format`` callback and refuses a SetPixelFormat sent after asking for pictures: an
update already on its way would be in the old format), else the server's own from ServerInit.

A Tight rectangle (rfbproto "Tight Encoding") is measured by its sub-header, read the way noVNC
reads it: the compression control byte, then for a fill its colour, for JPEG a compact length
(one to three bytes), and for basic compression an optional filter byte (copy, palette with its
colours, or gradient) and the data, sent as it is under 12 bytes and otherwise after a compact
length. Its pixels (TPIXEL) are 3 bytes in the 32-bit, depth 24, 8-bit-per-colour true-colour
format every viewer of the gateway uses, and as many bytes as a pixel otherwise. VNC servers
disagree on TPIXEL in the odd formats that are almost that one (32 bits, depth 24, maxima of 255,
but a colour map or a shift that is no multiple of 8): there a Tight rectangle is refused, as is
a compression control that standard Tight does not have (PNG is TightPNG's), a filter that is
none of the three, and a palette of one colour (sent as a fill by every server; whether its
pixels would be bits or bytes is not agreed).

The filter does no I/O, in the style of :class:`vizgate.rfb.RfbBridge`; its output depends only
on the bytes fed, never on how they were cut into calls. It holds no large message: clipboard
text is counted down and discarded as it arrives, pixel data is counted down and handed on as it
arrives. Only the incomplete head of one message or rectangle is ever buffered.
"""

from __future__ import annotations

import logging
import struct

from vizgate.view_only import (
    MAX_FENCE_PAYLOAD,
    SCREEN_LENGTH,
    WATCHER_ENCODINGS,
    Encoding,
    StreamRefused,
)

__all__ = ["ViewOnlyServerFilter"]

logger = logging.getLogger(__name__)

# The encodings a rectangle's encoding is compared with, as plain ints: the comparisons run for
# every rectangle, and one with an Encoding member looked up on its class costs several times more.
_RAW = int(Encoding.RAW)
_COPY_RECT = int(Encoding.COPY_RECT)
_TIGHT = int(Encoding.TIGHT)
_ZRLE = int(Encoding.ZRLE)
_LAST_RECT = int(Encoding.LAST_RECT)
_CURSOR = int(Encoding.CURSOR)
_DESKTOP_NAME = int(Encoding.DESKTOP_NAME)
_EXTENDED_DESKTOP_SIZE = int(Encoding.EXTENDED_DESKTOP_SIZE)

# Server-to-client message types (RFC 6143 §7.6; rfbproto "Server to Client Messages").
_FRAMEBUFFER_UPDATE = 0
_SET_COLOUR_MAP_ENTRIES = 1
_BELL = 2
_SERVER_CUT_TEXT = 3
_END_OF_CONTINUOUS_UPDATES = 150
_SERVER_FENCE = 248
_SERVER_XVP = 250

# The head of each server message, up to and including the field that tells the rest's length.
_SERVER_HEADERS: dict[int, int] = {
    _FRAMEBUFFER_UPDATE: 4,  # type, padding, u16 number-of-rectangles
    _SET_COLOUR_MAP_ENTRIES: 6,  # type, padding, u16 first-colour, u16 number-of-colours
    _BELL: 1,  # type
    _SERVER_CUT_TEXT: 8,  # type, 3 padding, s32 length (negative: Extended Clipboard)
    _END_OF_CONTINUOUS_UPDATES: 1,  # type
    _SERVER_FENCE: 9,  # type, 3 padding, u32 flags, u8 length
    _SERVER_XVP: 4,  # type, padding, xvp-extension-version, xvp-message-code
}
# ServerInit: u16 width, u16 height, 16-byte PIXEL_FORMAT (bits-per-pixel first), u32
# name-length, then the name.
_SERVER_INIT_HEADER = 24
_SERVER_INIT_FORMAT = 4
# A rectangle of a FramebufferUpdate: u16 x, y, width, height, s32 encoding, then its data.
_RECTANGLE_HEADER = 12
# Encodings whose data opens with a 4-byte field that tells the rest's length: a u32 length
# (ZRLE, DesktopName) or a u8 number-of-screens and 3 padding (ExtendedDesktopSize).
_RECTANGLE_LENGTH_FIELD = frozenset({_ZRLE, _DESKTOP_NAME, _EXTENDED_DESKTOP_SIZE})
# The encodings whose rectangles the server filter measures: those a watcher may ask for, less
# the two that bring no rectangle (Fence and ContinuousUpdates add messages, not rectangles).
_MEASURED = WATCHER_ENCODINGS - {Encoding.FENCE, Encoding.CONTINUOUS_UPDATES}
_BITS_PER_PIXEL = frozenset({8, 16, 32})
# Tight (rfbproto "Tight Encoding"): the compression control's high nibble names the method.
_TIGHT_FILL = 0x8
_TIGHT_JPEG = 0x9
# ... below 0x8, basic compression: bit 2 says a filter byte follows.
_TIGHT_FILTER_FLAG = 0x4
_TIGHT_COPY_FILTER, _TIGHT_PALETTE_FILTER, _TIGHT_GRADIENT_FILTER = 0, 1, 2
# Basic compression sends data shorter than this as it is, without a compact length.
_TIGHT_MIN_TO_COMPRESS = 12
# The longest header the filter may hold: a Tight rectangle's with a palette of 256 colours of
# 4 bytes and a 3-byte compact length.
LONGEST_HEADER = _RECTANGLE_HEADER + 3 + 256 * 4 + 3

_Bytes = bytes | bytearray | memoryview


class ViewOnlyServerFilter:
    """Sans-I/O filter over the server-to-client RFB stream of a viewer that may only watch.

    Feed it every byte the VNC server sends from its ServerInit (RFC 6143 §7.3.2) on, and send
    the watcher what :meth:`feed` returns: the same stream without its ServerCutText messages
    (counted in :attr:`dropped`). Headers of messages and rectangles come out whole; the data
    after them (a desktop name, colour map entries, a fence payload, pixels) comes out as it
    arrives, never held. Clipboard text is counted down and discarded as it arrives, whatever its
    size. The filter holds at most the incomplete header of one message or rectangle
    (:data:`LONGEST_HEADER`, 1,042 bytes: a Tight rectangle's, with its palette).

    Tell it the pixel format of the watcher's SetPixelFormat with :meth:`set_pixel_format`
    (the ``on_pixel_format`` callback of :class:`vizgate.view_only.ViewOnlyFilter`); until then
    Raw, Cursor and Tight rectangles are measured with the server's own pixel format, from
    ServerInit.

    The output depends only on the bytes fed, never on how they were cut into calls.

    When the server sends something the filter cannot measure (a message of a type not listed in
    the module's description, a rectangle in an encoding not in
    :data:`vizgate.view_only.WATCHER_ENCODINGS`, a ServerFence payload over 64 bytes, pixels
    whose size is not 8, 16 or 32 bits, a Tight rectangle it cannot measure), :attr:`refusal`
    says why and the caller disconnects the
    watcher. The :meth:`feed` call that meets it still returns the bytes before it; every later
    call returns ``b""``.
    """

    def __init__(self) -> None:
        self._initialised = False  # ServerInit has been read
        # Rectangles still to come in the current FramebufferUpdate (0: a message comes next).
        self._rectangles = 0
        # The incomplete header of the next message or rectangle, when the last feed ended in it.
        self._head = bytearray()
        # Bytes of data after the last header still to come and to pass, or to discard.
        self._passing = 0
        self._skipping = 0
        # Bits per pixel of the FramebufferUpdates to come, and the size of a Tight pixel in
        # them (None: not measurable); unknown until ServerInit or the watcher's SetPixelFormat.
        self._bits: int | None = None
        self._tight_pixel: int | None = None
        self._dropped = 0
        self._refusal: str | None = None

    def set_pixel_format(self, pixel_format: bytes) -> None:
        """Measure pixels in ``pixel_format`` (a 16-byte PIXEL_FORMAT, RFC 6143 §7.4) from now
        on: the watcher's SetPixelFormat passed.

        8, 16 and 32 bits per pixel are measured (RFC 6143 §7.4 allows no other); any other
        value makes the next Raw, Cursor or Tight rectangle a refusal.

        The server applies a format to the updates it sends after reading the SetPixelFormat,
        and :class:`vizgate.view_only.ViewOnlyFilter` passes none after the watcher first asked
        for pictures; so every rectangle from here on is measured in ``pixel_format``, even
        when the call comes before ServerInit has been fed (the server sends ServerInit before
        it reads any message of the watcher, so ServerInit does not override it).
        """
        self._bits = int(pixel_format[0])
        self._tight_pixel = _tight_pixel_size(pixel_format)

    @property
    def refusal(self) -> str | None:
        """Why the watcher must be disconnected, for a person; None otherwise.

        Once set, :meth:`feed` returns ``b""`` forever.
        """
        return self._refusal

    @property
    def dropped(self) -> int:
        """ServerCutText messages withheld (counted once their 8-byte header has arrived)."""
        return self._dropped

    def feed(self, data: bytes) -> bytes:
        """Take bytes the VNC server sent, from ServerInit on; return those the watcher may see.

        Headers come out whole and the data after them as it arrives, so a result may end inside
        a message; all the results together are the server's stream without its ServerCutText
        messages.
        """
        if self._refusal is not None:
            return b""
        if not self._head:
            # The common cases while pixels stream: the whole call is data to pass or to skip.
            if self._passing >= len(data):
                self._passing -= len(data)
                return bytes(data)
            if self._skipping >= len(data):
                self._skipping -= len(data)
                return b""
        view = memoryview(data)
        pieces: list[_Bytes] = []
        try:
            pos = self._finish_head(view, pieces)
            self._walk(view, pos, pieces)
        except StreamRefused as refused:
            self._refuse(str(refused))
        return b"".join(pieces)

    def _finish_head(self, view: memoryview, pieces: list[_Bytes]) -> int:
        """Complete a header begun in an earlier call from the start of ``view``, and take it.

        Returns where in ``view`` the walk goes on (its end if the header is still incomplete).
        """
        head = self._head
        if not head:
            return 0
        pos = 0
        length = self._header_length(head, 0, len(head))
        while len(head) < length and pos < len(view):
            take = min(length - len(head), len(view) - pos)
            head += view[pos : pos + take]
            pos += take
            length = self._header_length(head, 0, len(head))
        if len(head) < length:
            return len(view)
        if self._take_header(head, 0, length):
            pieces.append(bytes(head))
        self._head = bytearray()
        return pos

    def _walk(self, view: memoryview, pos: int, pieces: list[_Bytes]) -> None:
        """Go through ``view`` from ``pos``, adding to ``pieces`` the runs of bytes that pass."""
        end = len(view)
        start = pos  # where the run of passed bytes not yet in pieces begins
        try:
            while pos < end:
                if self._passing:
                    step = min(self._passing, end - pos)
                    self._passing -= step
                    pos += step
                elif self._skipping:
                    step = min(self._skipping, end - pos)
                    self._skipping -= step
                    pos += step
                    start = pos
                else:
                    length = self._header_length(view, pos, end - pos)
                    if length > end - pos:
                        # Hold the head until the rest arrives; the run ends before it.
                        self._head = bytearray(view[pos:])
                        break
                    if not self._take_header(view, pos, length):
                        if pos > start:
                            pieces.append(view[start:pos])
                        start = pos + length
                    pos += length
        finally:
            # Also on a refusal: pos is then where the refused header starts.
            if pos > start:
                pieces.append(view[start:pos])

    def _header_length(self, buf: _Bytes, pos: int, available: int) -> int:
        """Return the length of the header starting at ``buf[pos]``, as far as the ``available``
        bytes there tell it: when the result is more than ``available``, more are needed (and the
        result may grow once they are here); otherwise it is the header's whole length.

        Raises:
            StreamRefused: a message type or rectangle encoding that cannot be measured.
        """
        if not self._initialised:
            return _SERVER_INIT_HEADER
        if self._rectangles:
            if available < _RECTANGLE_HEADER:
                return _RECTANGLE_HEADER
            (encoding,) = struct.unpack_from("!i", buf, pos + 8)
            if encoding not in _MEASURED:
                raise StreamRefused(
                    f"the VNC server sent a watcher a rectangle in encoding {encoding}, "
                    "which the gateway cannot measure"
                )
            if encoding == _TIGHT:
                return self._tight_layout(buf, pos, available)[0]
            return _RECTANGLE_HEADER + (4 if encoding in _RECTANGLE_LENGTH_FIELD else 0)
        kind = int(buf[pos])
        length = _SERVER_HEADERS.get(kind)
        if length is None:
            raise StreamRefused(
                f"the VNC server sent a watcher an RFB message of unknown type {kind}"
            )
        return length

    def _take_header(self, buf: _Bytes, pos: int, length: int) -> bool:
        """Read the whole header of ``length`` bytes at ``buf[pos]``: note what follows it.

        Returns whether it (and the data after it) passes. Raises before changing any state.

        Raises:
            StreamRefused: a ServerFence payload over 64 bytes; pixels of an unknown size.
        """
        if not self._initialised:
            (name_length,) = struct.unpack_from("!I", buf, pos + _SERVER_INIT_HEADER - 4)
            if self._bits is None:
                self.set_pixel_format(
                    bytes(buf[pos + _SERVER_INIT_FORMAT : pos + _SERVER_INIT_FORMAT + 16])
                )
            self._initialised = True
            self._passing = name_length
            return True
        if self._rectangles:
            header: tuple[int, int, int, int, int] = struct.unpack_from("!HHHHi", buf, pos)
            _, _, width, height, encoding = header
            if encoding == _TIGHT:
                self._passing = self._tight_layout(buf, pos, length)[1]
            else:
                self._passing = self._rectangle_data_length(width, height, encoding, buf, pos)
            # LastRect ends the update whatever its count said (rfbproto; noVNC reads it so).
            self._rectangles = 0 if encoding == _LAST_RECT else self._rectangles - 1
            return True
        kind = int(buf[pos])
        if kind == _FRAMEBUFFER_UPDATE:
            (self._rectangles,) = struct.unpack_from("!H", buf, pos + 2)
        elif kind == _SET_COLOUR_MAP_ENTRIES:
            (colours,) = struct.unpack_from("!H", buf, pos + 4)
            self._passing = 6 * colours  # u16 red, green, blue each
        elif kind == _SERVER_CUT_TEXT:
            (signed,) = struct.unpack_from("!i", buf, pos + 4)
            self._skipping = abs(signed)
            self._dropped += 1
            return False
        elif kind == _SERVER_FENCE:
            fence = int(buf[pos + 8])
            if fence > MAX_FENCE_PAYLOAD:
                raise StreamRefused(
                    f"the VNC server sent a watcher a ServerFence with a {fence}-byte payload "
                    f"(at most {MAX_FENCE_PAYLOAD} allowed)"
                )
            self._passing = fence
        return True

    def _rectangle_data_length(
        self, width: int, height: int, encoding: int, buf: _Bytes, pos: int
    ) -> int:
        """Return the length of the data after the (whole) rectangle header at ``buf[pos]``,
        of a ``width`` by ``height`` rectangle in ``encoding``."""
        if encoding == _RAW:
            return width * height * self._bytes_per_pixel()
        if encoding == _COPY_RECT:
            return 4  # u16 src-x-position, src-y-position
        if encoding in (_ZRLE, _DESKTOP_NAME):
            return int(struct.unpack_from("!I", buf, pos + _RECTANGLE_HEADER)[0])
        if encoding == _EXTENDED_DESKTOP_SIZE:
            return SCREEN_LENGTH * int(buf[pos + _RECTANGLE_HEADER])
        if encoding == _CURSOR:
            # The pixels, then a bitmask with a row of whole bytes per line (RFC 6143 §7.8.1).
            return width * height * self._bytes_per_pixel() + (width + 7) // 8 * height
        return 0  # DesktopSize, LastRect

    def _tight_layout(self, buf: _Bytes, pos: int, available: int) -> tuple[int, int]:
        """Return the header length and the data length of the Tight rectangle at ``buf[pos]``
        (whose 12-byte rectangle header is there), as far as the ``available`` bytes tell them.

        The header runs to the end of Tight's sub-header: the compression control, then a fill
        colour, or a compact length, or a filter byte, a palette and the compact length. When
        the header length is more than ``available``, more bytes are needed (and it may grow
        once they are here) and the data length means nothing.

        Raises:
            StreamRefused: what the filter cannot measure (see the module's description).
        """
        width, height = struct.unpack_from("!HH", buf, pos + 4)
        end = pos + available
        at = pos + _RECTANGLE_HEADER
        if at >= end:
            return at + 1 - pos, 0
        control = int(buf[at]) >> 4
        at += 1
        pixel = self._tight_pixel_size()
        if control == _TIGHT_FILL:
            return at + pixel - pos, 0
        if control == _TIGHT_JPEG:
            return _compact_length(buf, at, end, pos)
        if control > _TIGHT_JPEG:
            raise StreamRefused(
                f"the VNC server sent a watcher a Tight rectangle with compression control "
                f"{control:#x}, which standard Tight does not have"
            )
        kind = _TIGHT_COPY_FILTER
        if control & _TIGHT_FILTER_FLAG:
            if at >= end:
                return at + 1 - pos, 0
            kind = int(buf[at])
            at += 1
        if kind == _TIGHT_PALETTE_FILTER:
            if at >= end:
                return at + 1 - pos, 0
            colours = int(buf[at]) + 1
            if colours < 2:
                raise StreamRefused(
                    "the VNC server sent a watcher a Tight palette of one colour, "
                    "which the gateway cannot measure"
                )
            at += 1 + colours * pixel
            if at > end:
                return at - pos, 0
            # Two colours: a bit a pixel, rows padded to whole bytes; more: a byte a pixel.
            size = (width + 7) // 8 * height if colours == 2 else width * height
        elif kind in (_TIGHT_COPY_FILTER, _TIGHT_GRADIENT_FILTER):
            size = width * height * pixel
        else:
            raise StreamRefused(f"the VNC server sent a watcher a Tight filter {kind}")
        if size < _TIGHT_MIN_TO_COMPRESS:
            return at - pos, size
        return _compact_length(buf, at, end, pos)

    def _tight_pixel_size(self) -> int:
        pixel = self._tight_pixel
        if pixel is None:
            raise StreamRefused(
                "a watcher's pixel format leaves the size of Tight's pixels open "
                "(the gateway measures Tight in 8, 16 and 32 bits per pixel)"
            )
        return pixel

    def _bytes_per_pixel(self) -> int:
        bits = self._bits
        if bits is None or bits not in _BITS_PER_PIXEL:
            raise StreamRefused(
                f"a watcher's pixel format has {bits} bits per pixel "
                "(the gateway measures only 8, 16 or 32)"
            )
        return bits // 8

    def _refuse(self, reason: str) -> None:
        self._refusal = reason
        # Nothing after what could not be measured can be told apart from clipboard text.
        self._head = bytearray()
        self._passing = 0
        self._skipping = 0
        logger.debug("view-only server filter refused the watcher's stream: %s", reason)


def _tight_pixel_size(pixel_format: bytes) -> int | None:
    """The bytes of a Tight pixel (TPIXEL) in ``pixel_format``; None where servers disagree.

    rfbproto: 3 bytes when the format is true colour, 32 bits per pixel, depth 24, with maxima of
    255; otherwise a pixel's own size. TigerVNC also asks for shifts that are multiples of 8,
    libvncserver does not ask for true colour: where the two part, nothing is measured.
    """
    bits, depth, _, true_colour = pixel_format[0], pixel_format[1], pixel_format[2], pixel_format[3]
    if bits not in _BITS_PER_PIXEL:
        return None
    maxima = struct.unpack_from("!HHH", pixel_format, 4)
    if bits == 32 and depth == 24 and maxima == (255, 255, 255):
        shifts = pixel_format[10:13]
        return 3 if true_colour and all(shift % 8 == 0 for shift in shifts) else None
    return bits // 8


def _compact_length(buf: _Bytes, at: int, end: int, pos: int) -> tuple[int, int]:
    """Read Tight's compact length at ``buf[at]`` (one to three bytes, seven bits each but the
    third's eight, least significant first): ``(header length from pos, the length)``, or with
    fewer bytes than it needs before ``end``, ``(a longer header length, 0)``."""
    if at >= end:
        return at + 1 - pos, 0
    first = int(buf[at])
    if not first & 0x80:
        return at + 1 - pos, first
    if at + 1 >= end:
        return at + 2 - pos, 0
    second = int(buf[at + 1])
    length = first & 0x7F | (second & 0x7F) << 7
    if not second & 0x80:
        return at + 2 - pos, length
    if at + 2 >= end:
        return at + 3 - pos, 0
    return at + 3 - pos, length | int(buf[at + 2]) << 14
