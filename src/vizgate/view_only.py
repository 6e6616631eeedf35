"""Keep a view-only viewer's hands off the desktop, and the desktop's clipboard out of its sight.

A view-only share link lets a person watch a session without controlling it. The VNC server
cannot be told which of its clients may type, nor which may read the clipboard, so the gateway
reads both byte streams of such a viewer (a *watcher*) once the RFB handshake is done, and
forwards only what watching needs. RFB has no framing: the only way to find where a message
starts is to know the length of every message before it, so both filters measure each message
the way its reader measures it, and end the connection on a message they cannot measure.

**What the watcher sends** (:class:`ViewOnlyFilter`): the client-to-server messages of RFC 6143
§7.5 and of the extensions in the community specification (rfbproto's ``rfbproto.rst``), after
ClientInit.

* passed: SetPixelFormat (§7.5.1), SetEncodings (§7.5.2, restricted: see below),
  FramebufferUpdateRequest (§7.5.3), EnableContinuousUpdates (150) and ClientFence (248);
* withheld: KeyEvent (§7.5.4), PointerEvent (§7.5.5), ClientCutText (§7.5.6, including the
  Extended Clipboard form), xvp (250: reboot or shut down the machine), SetDesktopSize (251) and
  the QEMU Extended Key Event (255, subtype 0).

A message whose length the filter cannot tell (an unknown type, another QEMU subtype) or will not
accept (a ClientFence payload over 64 bytes, clipboard text over :data:`MAX_CUT_TEXT_LENGTH`, a
SetPixelFormat after the watcher asked for pictures) ends the watcher's connection: see
:attr:`ViewOnlyFilter.refusal`. Whatever goes wrong, what reaches the server is a sequence of
whole messages of the passed types, so the server's reading of the stream can never drift into
one of the withheld messages.

SetEncodings reaches the server holding only :data:`WATCHER_ENCODINGS` and the QualityLevel and
CompressLevel hints, for two reasons:

* the server-to-client stream has to be walked (below), which needs the length of every
  rectangle of every FramebufferUpdate; the encodings kept are those whose length the rectangle
  header, or a length field right after it, tells. Tight, Hextile, RRE and the like could only
  be measured by decoding them.
* a pseudo-encoding can change the length of a client message after the fact: once a server
  confirms ExtendedMouseButtons (-316), a PointerEvent with the top bit of its button mask set
  carries a seventh byte. Without -316 every PointerEvent stays six bytes. Extended Clipboard
  (0xC0A1E5CE), the QEMU and xvp pseudo-encodings go too: they only serve input or clipboard.

**What the watcher is sent** (:class:`ViewOnlyServerFilter`): the server's ServerInit
(§7.3.2), then the server-to-client messages of §7.6 and rfbproto.

* passed: FramebufferUpdate (§7.6.1) whose rectangles are in one of :data:`WATCHER_ENCODINGS`,
  SetColourMapEntries (§7.6.2), Bell (§7.6.3), EndOfContinuousUpdates (150), ServerFence (248)
  and xvp (250);
* withheld: ServerCutText (§7.6.4, including the Extended Clipboard form, whatever its size):
  the session's clipboard is its owner's, not the watcher's.

Another message type, a rectangle in another encoding (which the server would only send against
the restricted SetEncodings), a ServerFence payload over 64 bytes, or pixels that are not 8, 16
or 32 bits, ends the watcher's connection: see :attr:`ViewOnlyServerFilter.refusal`.

A FramebufferUpdate is measured rectangle by rectangle, and the length of Raw and Cursor
rectangles depends on the bits per pixel the server sends in: the watcher's, once its
SetPixelFormat has passed (which is why :class:`ViewOnlyFilter` takes an ``on_pixel_format``
callback and refuses a SetPixelFormat sent after asking for pictures: an update already on its
way would be in the old format), else the server's own from ServerInit.

Both filters do no I/O, in the style of :class:`vizgate.rfb.RfbBridge`; their output depends only
on the bytes fed, never on how they were cut into calls. Neither holds a large message: clipboard
text is counted down and discarded as it arrives, pixel data is counted down and handed on as it
arrives. Only the incomplete head of one message or rectangle is ever buffered (a SetEncodings,
at most 256 KiB, is the longest).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable

__all__ = [
    "MAX_CUT_TEXT_LENGTH",
    "WATCHER_ENCODINGS",
    "ViewOnlyFilter",
    "ViewOnlyServerFilter",
]

logger = logging.getLogger(__name__)

#: Longest ClientCutText (clipboard text) accepted, in bytes; a longer one ends the connection.
#: It is withheld either way and skipping costs no memory, but 10 MiB of clipboard is already
#: no paste a person makes: past it the viewer is only pumping bytes through the gateway.
MAX_CUT_TEXT_LENGTH = 10 * 1024 * 1024

# Encodings and pseudo-encodings (RFC 6143 §7.7, §7.8; rfbproto "Encodings").
_RAW = 0
_COPY_RECT = 1
_ZRLE = 16
_DESKTOP_SIZE = -223
_LAST_RECT = -224
_CURSOR = -239
_DESKTOP_NAME = -307
_EXTENDED_DESKTOP_SIZE = -308
_FENCE = -312
_CONTINUOUS_UPDATES = -313

#: The encodings and pseudo-encodings a watcher's SetEncodings may ask for: those whose
#: rectangles :class:`ViewOnlyServerFilter` can measure from their header (Raw, CopyRect,
#: DesktopSize, LastRect, Cursor) or from a length right after it (ZRLE, DesktopName,
#: ExtendedDesktopSize), and Fence and ContinuousUpdates, whose messages have a length field or
#: none to read. The QualityLevel (-32 to -23) and CompressLevel (-256 to -247) hints, which
#: bring no rectangle at all, are kept as well. Anything else is taken out of the list.
WATCHER_ENCODINGS = frozenset(
    {
        _RAW,
        _COPY_RECT,
        _ZRLE,
        _DESKTOP_SIZE,
        _LAST_RECT,
        _CURSOR,
        _DESKTOP_NAME,
        _EXTENDED_DESKTOP_SIZE,
        _FENCE,
        _CONTINUOUS_UPDATES,
    }
)
_QUALITY_LEVELS = range(-32, -23 + 1)
_COMPRESS_LEVELS = range(-256, -247 + 1)
# Encodings that paint pixels of their own: CopyRect only moves those already shown. A
# SetEncodings left without one of them gets Raw, which RFC 6143 §7.7.1 makes every client accept.
_PAINTING = frozenset({_RAW, _ZRLE})

# Client-to-server message types (RFC 6143 §7.5; rfbproto "Client to Server Messages").
_SET_PIXEL_FORMAT = 0
_SET_ENCODINGS = 2
_FRAMEBUFFER_UPDATE_REQUEST = 3
_KEY_EVENT = 4
_POINTER_EVENT = 5
_CLIENT_CUT_TEXT = 6
_ENABLE_CONTINUOUS_UPDATES = 150
_CLIENT_FENCE = 248
_XVP = 250
_SET_DESKTOP_SIZE = 251
_QEMU = 255

# Messages whose length the type byte alone tells: type -> (forwarded, length).
_FIXED: dict[int, tuple[bool, int]] = {
    _SET_PIXEL_FORMAT: (True, 20),  # type, 3 padding, 16-byte PIXEL_FORMAT
    _FRAMEBUFFER_UPDATE_REQUEST: (True, 10),  # type, incremental, x, y, width, height
    _ENABLE_CONTINUOUS_UPDATES: (True, 10),  # type, enable-flag, x, y, width, height
    _KEY_EVENT: (False, 8),  # type, down-flag, 2 padding, keysym
    _POINTER_EVENT: (False, 6),  # type, button-mask, x, y (always 6: ExtendedMouseButtons is out)
    _XVP: (False, 4),  # type, padding, xvp-extension-version, xvp-message-code
}

# SetPixelFormat: the PIXEL_FORMAT starts at offset 4 with its bits-per-pixel.
_SET_PIXEL_FORMAT_BITS = 4
# SetEncodings: type, padding, u16 number-of-encodings, then an s32 per encoding.
_SET_ENCODINGS_HEADER = 4
# ClientFence: type, 3 padding, u32 flags, u8 length, then the payload; rfbproto caps it at 64.
_CLIENT_FENCE_HEADER = 9
_MAX_FENCE_PAYLOAD = 64
# ClientCutText: type, 3 padding, then the length at offset 4 (RFC 6143 §7.5.6 says u32; with
# Extended Clipboard it is an s32 and a negative value means its absolute value follows).
_CLIENT_CUT_TEXT_HEADER = 8
# SetDesktopSize: type, padding, u16 width, u16 height, u8 number-of-screens (offset 6), padding,
# then 16 bytes per screen (id, x, y, width, height, flags).
_SET_DESKTOP_SIZE_HEADER = 8
_SCREEN_LENGTH = 16
# QEMU Client Message: type, then a u8 submessage type that decides the rest. Subtype 0, QEMU
# Extended Key Event, is type, subtype, u16 down-flag, u32 keysym, u32 keycode.
_QEMU_EXTENDED_KEY_EVENT = 0
_QEMU_EXTENDED_KEY_EVENT_LENGTH = 12

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
_MEASURED = WATCHER_ENCODINGS - {_FENCE, _CONTINUOUS_UPDATES}
_BITS_PER_PIXEL = frozenset({8, 16, 32})

_Bytes = bytes | bytearray | memoryview


class _Refused(Exception):
    """Raised inside a filter when the stream cannot (or must not) be followed further."""


def _measure(data: memoryview, pos: int) -> tuple[bool, int] | None:
    """Tell whether the message starting at ``data[pos]`` is forwarded, and its whole length.

    Returns None while the bytes needed to tell its length have not all arrived.

    Raises:
        _Refused: the message cannot be measured or is not acceptable; the text says why.
    """
    kind = data[pos]
    available = len(data) - pos
    fixed = _FIXED.get(kind)
    if fixed is not None:
        return fixed
    if kind == _SET_ENCODINGS:
        if available < _SET_ENCODINGS_HEADER:
            return None
        (count,) = struct.unpack_from("!H", data, pos + 2)
        return True, _SET_ENCODINGS_HEADER + 4 * count
    if kind == _CLIENT_FENCE:
        if available < _CLIENT_FENCE_HEADER:
            return None
        length = data[pos + 8]
        if length > _MAX_FENCE_PAYLOAD:
            raise _Refused(
                f"a view-only viewer sent a ClientFence with a {length}-byte payload "
                f"(at most {_MAX_FENCE_PAYLOAD} allowed)"
            )
        return True, _CLIENT_FENCE_HEADER + length
    if kind == _CLIENT_CUT_TEXT:
        if available < _CLIENT_CUT_TEXT_HEADER:
            return None
        # Read as s32 for both forms: a u32 of 2**31 or more is far over the limit anyway, so the
        # only such values accepted are the small negative lengths of Extended Clipboard.
        (signed,) = struct.unpack_from("!i", data, pos + 4)
        length = abs(signed)
        if length > MAX_CUT_TEXT_LENGTH:
            raise _Refused(
                f"a view-only viewer sent {length} bytes of clipboard text "
                f"(at most {MAX_CUT_TEXT_LENGTH} accepted)"
            )
        return False, _CLIENT_CUT_TEXT_HEADER + length
    if kind == _SET_DESKTOP_SIZE:
        if available < _SET_DESKTOP_SIZE_HEADER:
            return None
        return False, _SET_DESKTOP_SIZE_HEADER + _SCREEN_LENGTH * data[pos + 6]
    if kind == _QEMU:
        if available < 2:
            return None
        subtype = data[pos + 1]
        if subtype != _QEMU_EXTENDED_KEY_EVENT:
            # Subtype 1 (QEMU Audio) has several lengths; others are not specified at all.
            raise _Refused(
                f"a view-only viewer sent a QEMU client message of subtype {subtype}, "
                "whose length is not known here"
            )
        return False, _QEMU_EXTENDED_KEY_EVENT_LENGTH
    raise _Refused(f"a view-only viewer sent an RFB message of unknown type {kind}")


def _kept_for_a_watcher(encoding: int) -> bool:
    return (
        encoding in WATCHER_ENCODINGS or encoding in _QUALITY_LEVELS or encoding in _COMPRESS_LEVELS
    )


def _watcher_set_encodings(message: memoryview) -> bytes:
    """Return a SetEncodings message restricted to what a watcher may ask for.

    The kept encodings stay in the viewer's order; Raw is added last when none of them paints
    pixels. The message comes back byte for byte when nothing had to change.
    """
    count = (len(message) - _SET_ENCODINGS_HEADER) // 4
    encodings = struct.unpack_from(f"!{count}i", message, _SET_ENCODINGS_HEADER)
    kept = [encoding for encoding in encodings if _kept_for_a_watcher(encoding)]
    if _PAINTING.isdisjoint(kept):
        kept.append(_RAW)
    if tuple(kept) == encodings:
        return bytes(message)
    # The type and padding bytes as the viewer sent them, then the new list.
    return bytes(message[:2]) + struct.pack(f"!H{len(kept)}i", len(kept), *kept)


class ViewOnlyFilter:
    """Sans-I/O filter over the client-to-server RFB stream of a viewer that may only watch.

    Feed it every byte the browser sends after its ClientInit (RFC 6143 §7.3.1) and send the
    server what :meth:`feed` returns: whole messages of the passed types, in order, each as the
    viewer sent it, except SetEncodings, restricted to :data:`WATCHER_ENCODINGS` and the quality
    and compression hints (see the module's description). Withheld messages are consumed and
    counted in :attr:`dropped`; their bytes are never held, only counted down, so a large
    clipboard paste costs no memory. The filter holds at most the incomplete head of one message:
    of a passed one (at most a SetEncodings, 256 KiB), or the first few bytes of a withheld one
    until its length is known.

    The output depends only on the bytes fed, never on how they were cut into calls.

    When a message cannot be measured or must not pass, :attr:`refusal` says why, and the caller
    disconnects the viewer. The :meth:`feed` call that meets such a message still returns the
    whole messages before it (as it would have had they come in an earlier call); every later
    call returns ``b""``.

    Args:
        on_pixel_format: called with the bits-per-pixel of each SetPixelFormat that passes (byte
            4 of the message), during the :meth:`feed` call that returns it: give it
            :meth:`ViewOnlyServerFilter.set_bits_per_pixel` of the same watcher's server filter.
    """

    def __init__(self, on_pixel_format: Callable[[int], None] | None = None) -> None:
        self._on_pixel_format = on_pixel_format
        # The incomplete head of the next message, when the last feed ended inside it.
        self._pending = bytearray()
        # Bytes of a withheld message still to come and to discard.
        self._skip = 0
        self._dropped = 0
        # Whether a FramebufferUpdateRequest (or an EnableContinuousUpdates that enables them)
        # has passed: from then on the server may be sending pixels in the current format.
        self._asked_for_pictures = False
        self._refusal: str | None = None

    @property
    def refusal(self) -> str | None:
        """Why the viewer must be disconnected, for a person; None otherwise.

        Set when the viewer sends a message the filter cannot measure (an unknown type, a QEMU
        message other than the Extended Key Event) or will not accept (a ClientFence payload over
        64 bytes, clipboard text over :data:`MAX_CUT_TEXT_LENGTH`, a SetPixelFormat after a
        FramebufferUpdateRequest or an enabling EnableContinuousUpdates). Once set, :meth:`feed`
        returns ``b""`` forever.
        """
        return self._refusal

    @property
    def dropped(self) -> int:
        """How many messages were withheld so far (counted from their first byte on)."""
        return self._dropped

    def feed(self, data: bytes) -> bytes:
        """Take bytes the viewer sent; return those that may go to the VNC server.

        The result holds whole messages only, in the order the viewer sent them; it is empty
        while the next message to pass is incomplete.
        """
        if self._refusal is not None:
            return b""
        chunk = memoryview(data)
        if self._skip:
            # The rest of a withheld message: count it down without copying it anywhere.
            skipped = min(self._skip, len(chunk))
            self._skip -= skipped
            chunk = chunk[skipped:]
        if not chunk:
            return b""
        if self._pending:
            # A message begun in an earlier call continues here. The view is dropped with the
            # old buffer when _pending is replaced below; nothing resizes it meanwhile.
            self._pending += chunk
            view = memoryview(self._pending)
        else:
            view = chunk
        output = bytearray()
        pos = 0
        try:
            while pos < len(view):
                measured = _measure(view, pos)
                if measured is None:
                    break
                forwarded, length = measured
                if not forwarded:
                    self._dropped += 1
                    if pos + length > len(view):
                        # Only its head is here: skip the rest as it comes, never hold it.
                        self._skip = pos + length - len(view)
                        pos = len(view)
                    else:
                        pos += length
                    continue
                if pos + length > len(view):
                    break
                output += self._passed(view[pos : pos + length])
                pos += length
        except _Refused as refused:
            self._refuse(str(refused))
            return bytes(output)
        self._pending = bytearray(view[pos:])
        return bytes(output)

    def _passed(self, message: memoryview) -> _Bytes:
        """Return what the server gets of a whole message of a passed type.

        Raises:
            _Refused: a SetPixelFormat after the viewer asked for pictures.
        """
        kind = message[0]
        if kind == _SET_ENCODINGS:
            return _watcher_set_encodings(message)
        if kind == _SET_PIXEL_FORMAT:
            if self._asked_for_pictures:
                raise _Refused(
                    "a view-only viewer changed its pixel format after asking for pictures"
                )
            if self._on_pixel_format is not None:
                self._on_pixel_format(int(message[_SET_PIXEL_FORMAT_BITS]))
        elif kind == _FRAMEBUFFER_UPDATE_REQUEST or (
            kind == _ENABLE_CONTINUOUS_UPDATES and message[1]
        ):
            self._asked_for_pictures = True
        return message

    def _refuse(self, reason: str) -> None:
        self._refusal = reason
        # Nothing after the message that could not be measured can be told apart from input.
        self._pending = bytearray()
        self._skip = 0
        logger.debug("view-only filter refused the viewer: %s", reason)


class ViewOnlyServerFilter:
    """Sans-I/O filter over the server-to-client RFB stream of a viewer that may only watch.

    Feed it every byte the VNC server sends from its ServerInit (RFC 6143 §7.3.2) on, and send
    the watcher what :meth:`feed` returns: the same stream without its ServerCutText messages
    (counted in :attr:`dropped`). Headers of messages and rectangles come out whole; the data
    after them (a desktop name, colour map entries, a fence payload, pixels) comes out as it
    arrives, never held. Clipboard text is counted down and discarded as it arrives, whatever its
    size. The filter holds at most the incomplete header of one message or rectangle (24 bytes).

    Tell it the bits per pixel of the watcher's SetPixelFormat with :meth:`set_bits_per_pixel`
    (the ``on_pixel_format`` callback of :class:`ViewOnlyFilter`); until then Raw and Cursor
    rectangles are measured with the server's own pixel format, from ServerInit.

    The output depends only on the bytes fed, never on how they were cut into calls.

    When the server sends something the filter cannot measure (a message of a type not listed in
    the module's description, a rectangle in an encoding not in :data:`WATCHER_ENCODINGS`, a
    ServerFence payload over 64 bytes, pixels whose size is not 8, 16 or 32 bits), :attr:`refusal`
    says why and the caller disconnects the watcher. The :meth:`feed` call that meets it still
    returns the bytes before it; every later call returns ``b""``.
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
        and :class:`ViewOnlyFilter` passes none after the watcher first asked for pictures; so
        every Raw and Cursor rectangle from here on is measured with ``bits``, even when the call
        comes before ServerInit has been fed (the server sends ServerInit before it reads any
        message of the watcher, so ServerInit does not override it).
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
        except _Refused as refused:
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
            _Refused: a message type or rectangle encoding that cannot be measured.
        """
        if not self._initialised:
            return _SERVER_INIT_HEADER
        if self._rectangles:
            if available < _RECTANGLE_HEADER:
                return _RECTANGLE_HEADER
            (encoding,) = struct.unpack_from("!i", buf, pos + 8)
            if encoding not in _MEASURED:
                raise _Refused(
                    f"the VNC server sent a watcher a rectangle in encoding {encoding}, "
                    "which the gateway cannot measure"
                )
            return _RECTANGLE_HEADER + (4 if encoding in _RECTANGLE_LENGTH_FIELD else 0)
        kind = int(buf[pos])
        length = _SERVER_HEADERS.get(kind)
        if length is None:
            raise _Refused(f"the VNC server sent a watcher an RFB message of unknown type {kind}")
        return length

    def _take_header(self, buf: _Bytes, pos: int, length: int) -> bool:
        """Read the whole header of ``length`` bytes at ``buf[pos]``: note what follows it.

        Returns whether it (and the data after it) passes. Raises before changing any state.

        Raises:
            _Refused: a ServerFence payload over 64 bytes; pixels of an unknown size.
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
            if fence > _MAX_FENCE_PAYLOAD:
                raise _Refused(
                    f"the VNC server sent a watcher a ServerFence with a {fence}-byte payload "
                    f"(at most {_MAX_FENCE_PAYLOAD} allowed)"
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
            return _SCREEN_LENGTH * int(buf[pos + _RECTANGLE_HEADER])
        if encoding == _CURSOR:
            # The pixels, then a bitmask with a row of whole bytes per line (RFC 6143 §7.8.1).
            return width * height * self._bytes_per_pixel() + (width + 7) // 8 * height
        return 0  # DesktopSize, LastRect

    def _bytes_per_pixel(self) -> int:
        bits = self._bits
        if bits is None or bits not in _BITS_PER_PIXEL:
            raise _Refused(
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
