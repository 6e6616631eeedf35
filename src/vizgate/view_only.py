"""Keep a view-only viewer's hands off the desktop: what a watcher may send a VNC server.

A view-only share link lets a person watch a session without controlling it. The VNC server
cannot be told which of its clients may type, nor which may read the clipboard, so the gateway
reads both byte streams of such a viewer (a *watcher*) once the RFB handshake is done, and
forwards only what watching needs: this module filters what the watcher sends, and
:mod:`vizgate.view_only_server` what the watcher is sent. RFB has no framing: the only way to
find where a message starts is to know the length of every message before it, so both filters
measure each message the way its reader measures it, and end the connection on a message they
cannot measure. What both need to know of RFB (:class:`Encoding`, :data:`WATCHER_ENCODINGS`,
:data:`MAX_FENCE_PAYLOAD`, :data:`SCREEN_LENGTH`, :exc:`StreamRefused`) is here.

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

* the server-to-client stream has to be walked (:mod:`vizgate.view_only_server`), which needs the
  length of every rectangle of every FramebufferUpdate; the encodings kept are those whose length
  the rectangle header, or a length field right after it, tells, and Tight, whose length its own
  short sub-header tells (compression control, filter, palette, a compact length). Hextile, RRE
  and the like could only be measured by decoding them.
* a pseudo-encoding can change the length of a client message after the fact: once a server
  confirms ExtendedMouseButtons (-316), a PointerEvent with the top bit of its button mask set
  carries a seventh byte. Without -316 every PointerEvent stays six bytes. Extended Clipboard
  (0xC0A1E5CE), the QEMU and xvp pseudo-encodings go too: they only serve input or clipboard.

The pixel format of a SetPixelFormat that passes is handed to the server filter (the
``on_pixel_format`` callback of :class:`ViewOnlyFilter`), which measures Raw, Cursor and Tight
rectangles with it; a SetPixelFormat after asking for pictures is refused because an update
already on its way would be in the old format.

:class:`ViewOnlyFilter` does no I/O, in the style of :class:`vizgate.rfb.RfbBridge`; its output
depends only on the bytes fed, never on how they were cut into calls. It holds no large message:
clipboard text is counted down and discarded as it arrives. Only the incomplete head of one
message is ever buffered (a SetEncodings, at most 256 KiB, is the longest).
"""

from __future__ import annotations

import enum
import logging
import struct
from collections.abc import Callable

__all__ = [
    "MAX_CUT_TEXT_LENGTH",
    "MAX_FENCE_PAYLOAD",
    "SCREEN_LENGTH",
    "WATCHER_ENCODINGS",
    "Encoding",
    "StreamRefused",
    "ViewOnlyFilter",
]

logger = logging.getLogger(__name__)

#: Longest ClientCutText (clipboard text) accepted, in bytes; a longer one ends the connection.
#: It is withheld either way and skipping costs no memory, but 10 MiB of clipboard is already
#: no paste a person makes: past it the viewer is only pumping bytes through the gateway.
MAX_CUT_TEXT_LENGTH = 10 * 1024 * 1024


class Encoding(enum.IntEnum):
    """The encodings and pseudo-encodings both filters know (RFC 6143 §7.7, §7.8; rfbproto
    "Encodings"): those of :data:`WATCHER_ENCODINGS`."""

    RAW = 0
    COPY_RECT = 1
    TIGHT = 7
    ZRLE = 16
    DESKTOP_SIZE = -223
    LAST_RECT = -224
    CURSOR = -239
    DESKTOP_NAME = -307
    EXTENDED_DESKTOP_SIZE = -308
    FENCE = -312
    CONTINUOUS_UPDATES = -313


#: The encodings and pseudo-encodings a watcher's SetEncodings may ask for: those whose
#: rectangles :class:`vizgate.view_only_server.ViewOnlyServerFilter` can measure from their
#: header (Raw, CopyRect, DesktopSize, LastRect, Cursor), from a length right after it (ZRLE,
#: DesktopName, ExtendedDesktopSize) or from a short sub-header (Tight), and Fence and
#: ContinuousUpdates, whose messages have a length field or none to read. The QualityLevel
#: (-32 to -23) and CompressLevel (-256 to -247) hints, which bring no rectangle at all, are kept
#: as well. Anything else is taken out of the list. The set holds plain ints, so that looking an
#: encoding up hashes and compares only ints.
WATCHER_ENCODINGS = frozenset(
    int(encoding)
    for encoding in (
        Encoding.RAW,
        Encoding.COPY_RECT,
        Encoding.TIGHT,
        Encoding.ZRLE,
        Encoding.DESKTOP_SIZE,
        Encoding.LAST_RECT,
        Encoding.CURSOR,
        Encoding.DESKTOP_NAME,
        Encoding.EXTENDED_DESKTOP_SIZE,
        Encoding.FENCE,
        Encoding.CONTINUOUS_UPDATES,
    )
)

#: Longest payload of a ClientFence or ServerFence, in bytes (rfbproto caps it at 64); a longer
#: one ends the watcher's connection.
MAX_FENCE_PAYLOAD = 64

#: Length of a screen in SetDesktopSize and in an ExtendedDesktopSize rectangle: u32 id, u16 x,
#: y, width, height, u32 flags.
SCREEN_LENGTH = 16


class StreamRefused(Exception):
    """Raised inside a watcher's filter when the stream cannot (or must not) be followed further.

    Its text says why, for a person; the filter turns it into its ``refusal``.
    """


_QUALITY_LEVELS = range(-32, -23 + 1)
_COMPRESS_LEVELS = range(-256, -247 + 1)
# Encodings that paint pixels of their own: CopyRect only moves those already shown. A
# SetEncodings left without one of them gets Raw, which RFC 6143 §7.7.1 makes every client accept.
_PAINTING = frozenset({int(Encoding.RAW), int(Encoding.TIGHT), int(Encoding.ZRLE)})

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

# SetPixelFormat: type, 3 padding, then the 16-byte PIXEL_FORMAT.
_PIXEL_FORMAT_START = 4
_PIXEL_FORMAT_END = 20
# SetEncodings: type, padding, u16 number-of-encodings, then an s32 per encoding.
_SET_ENCODINGS_HEADER = 4
# ClientFence: type, 3 padding, u32 flags, u8 length, then the payload; rfbproto caps it at 64.
_CLIENT_FENCE_HEADER = 9
# ClientCutText: type, 3 padding, then the length at offset 4 (RFC 6143 §7.5.6 says u32; with
# Extended Clipboard it is an s32 and a negative value means its absolute value follows).
_CLIENT_CUT_TEXT_HEADER = 8
# SetDesktopSize: type, padding, u16 width, u16 height, u8 number-of-screens (offset 6), padding,
# then 16 bytes per screen (id, x, y, width, height, flags).
_SET_DESKTOP_SIZE_HEADER = 8
# QEMU Client Message: type, then a u8 submessage type that decides the rest. Subtype 0, QEMU
# Extended Key Event, is type, subtype, u16 down-flag, u32 keysym, u32 keycode.
_QEMU_EXTENDED_KEY_EVENT = 0
_QEMU_EXTENDED_KEY_EVENT_LENGTH = 12

_Bytes = bytes | bytearray | memoryview


def _measure(data: memoryview, pos: int) -> tuple[bool, int] | None:
    """Tell whether the message starting at ``data[pos]`` is forwarded, and its whole length.

    Returns None while the bytes needed to tell its length have not all arrived.

    Raises:
        StreamRefused: the message cannot be measured or is not acceptable; the text says why.
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
        if length > MAX_FENCE_PAYLOAD:
            raise StreamRefused(
                f"a view-only viewer sent a ClientFence with a {length}-byte payload "
                f"(at most {MAX_FENCE_PAYLOAD} allowed)"
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
            raise StreamRefused(
                f"a view-only viewer sent {length} bytes of clipboard text "
                f"(at most {MAX_CUT_TEXT_LENGTH} accepted)"
            )
        return False, _CLIENT_CUT_TEXT_HEADER + length
    if kind == _SET_DESKTOP_SIZE:
        if available < _SET_DESKTOP_SIZE_HEADER:
            return None
        return False, _SET_DESKTOP_SIZE_HEADER + SCREEN_LENGTH * data[pos + 6]
    if kind == _QEMU:
        if available < 2:
            return None
        subtype = data[pos + 1]
        if subtype != _QEMU_EXTENDED_KEY_EVENT:
            # Subtype 1 (QEMU Audio) has several lengths; others are not specified at all.
            raise StreamRefused(
                f"a view-only viewer sent a QEMU client message of subtype {subtype}, "
                "whose length is not known here"
            )
        return False, _QEMU_EXTENDED_KEY_EVENT_LENGTH
    raise StreamRefused(f"a view-only viewer sent an RFB message of unknown type {kind}")


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
        kept.append(int(Encoding.RAW))
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
        on_pixel_format: called with the 16-byte PIXEL_FORMAT of each SetPixelFormat that passes
            (bytes 4 to 19 of the message), during the :meth:`feed` call that returns it: give
            it :meth:`vizgate.view_only_server.ViewOnlyServerFilter.set_pixel_format` of the same
            watcher's server filter.
    """

    def __init__(self, on_pixel_format: Callable[[bytes], None] | None = None) -> None:
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
        except StreamRefused as refused:
            self._refuse(str(refused))
            return bytes(output)
        self._pending = bytearray(view[pos:])
        return bytes(output)

    def _passed(self, message: memoryview) -> _Bytes:
        """Return what the server gets of a whole message of a passed type.

        Raises:
            StreamRefused: a SetPixelFormat after the viewer asked for pictures.
        """
        kind = message[0]
        if kind == _SET_ENCODINGS:
            return _watcher_set_encodings(message)
        if kind == _SET_PIXEL_FORMAT:
            if self._asked_for_pictures:
                raise StreamRefused(
                    "a view-only viewer changed its pixel format after asking for pictures"
                )
            if self._on_pixel_format is not None:
                self._on_pixel_format(bytes(message[_PIXEL_FORMAT_START:_PIXEL_FORMAT_END]))
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
