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

A FramebufferUpdate is measured rectangle by rectangle, and the length of Raw and Cursor
rectangles depends on the bits per pixel the server sends in: the watcher's, once its
SetPixelFormat has passed (which is why :class:`vizgate.view_only.ViewOnlyFilter` takes an
``on_pixel_format`` callback and refuses a SetPixelFormat sent after asking for pictures: an
update already on its way would be in the old format), else the server's own from ServerInit.

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
_SERVER_INIT_BITS = 4
# A rectangle of a FramebufferUpdate: u16 x, y, width, height, s32 encoding, then its data.
_RECTANGLE_HEADER = 12
# Encodings whose data opens with a 4-byte field that tells the rest's length: a u32 length
# (ZRLE, DesktopName) or a u8 number-of-screens and 3 padding (ExtendedDesktopSize).
_RECTANGLE_LENGTH_FIELD = frozenset({_ZRLE, _DESKTOP_NAME, _EXTENDED_DESKTOP_SIZE})
# The encodings whose rectangles the server filter measures: those a watcher may ask for, less
# the two that bring no rectangle (Fence and ContinuousUpdates add messages, not rectangles).
_MEASURED = WATCHER_ENCODINGS - {Encoding.FENCE, Encoding.CONTINUOUS_UPDATES}
_BITS_PER_PIXEL = frozenset({8, 16, 32})

_Bytes = bytes | bytearray | memoryview


class ViewOnlyServerFilter:
    """Sans-I/O filter over the server-to-client RFB stream of a viewer that may only watch.

    Feed it every byte the VNC server sends from its ServerInit (RFC 6143 §7.3.2) on, and send
    the watcher what :meth:`feed` returns: the same stream without its ServerCutText messages
    (counted in :attr:`dropped`). Headers of messages and rectangles come out whole; the data
    after them (a desktop name, colour map entries, a fence payload, pixels) comes out as it
    arrives, never held. Clipboard text is counted down and discarded as it arrives, whatever its
    size. The filter holds at most the incomplete header of one message or rectangle (24 bytes).

    Tell it the bits per pixel of the watcher's SetPixelFormat with :meth:`set_bits_per_pixel`
    (the ``on_pixel_format`` callback of :class:`vizgate.view_only.ViewOnlyFilter`); until then
    Raw and Cursor rectangles are measured with the server's own pixel format, from ServerInit.

    The output depends only on the bytes fed, never on how they were cut into calls.

    When the server sends something the filter cannot measure (a message of a type not listed in
    the module's description, a rectangle in an encoding not in
    :data:`vizgate.view_only.WATCHER_ENCODINGS`, a ServerFence payload over 64 bytes, pixels
    whose size is not 8, 16 or 32 bits), :attr:`refusal` says why and the caller disconnects the
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
        # Bits per pixel of the FramebufferUpdates to come; None until ServerInit or the
        # watcher's SetPixelFormat tells.
        self._bits: int | None = None
        self._dropped = 0
        self._refusal: str | None = None

    def set_bits_per_pixel(self, bits: int) -> None:
        """Measure pixels with ``bits`` per pixel from now on: the watcher's SetPixelFormat passed.

        8, 16 and 32 are measured (RFC 6143 §7.4 allows no other); any other value makes the
        next Raw or Cursor rectangle a refusal.

        The server applies a format to the updates it sends after reading the SetPixelFormat,
        and :class:`vizgate.view_only.ViewOnlyFilter` passes none after the watcher first asked
        for pictures; so every Raw and Cursor rectangle from here on is measured with ``bits``,
        even when the call comes before ServerInit has been fed (the server sends ServerInit
        before it reads any message of the watcher, so ServerInit does not override it).
        """
        self._bits = bits

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
                self._bits = int(buf[pos + _SERVER_INIT_BITS])
            self._initialised = True
            self._passing = name_length
            return True
        if self._rectangles:
            header: tuple[int, int, int, int, int] = struct.unpack_from("!HHHHi", buf, pos)
            _, _, width, height, encoding = header
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
