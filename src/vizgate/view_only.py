"""Keep a view-only viewer's hands off the desktop: a filter over what its browser sends.

A view-only share link lets a person watch a session without controlling it. The VNC server
cannot be told which of its clients may type, so the gateway reads the byte stream the browser
sends once the RFB handshake and ClientInit are done (the client-to-server messages of RFC 6143
§7.5 and of the extensions in the community specification, rfbproto's ``rfbproto.rst``) and
forwards only the messages that shape what the viewer is shown:

* passed: SetPixelFormat (§7.5.1), SetEncodings (§7.5.2), FramebufferUpdateRequest (§7.5.3),
  EnableContinuousUpdates (150) and ClientFence (248);
* withheld: KeyEvent (§7.5.4), PointerEvent (§7.5.5), ClientCutText (§7.5.6, including the
  Extended Clipboard form), xvp (250: reboot or shut down the machine), SetDesktopSize (251) and
  the QEMU Extended Key Event (255, subtype 0).

RFB has no framing: the only way to find where a KeyEvent starts is to know the length of every
message before it. So a message whose length the filter cannot tell (an unknown type, another
QEMU subtype) or will not accept (a ClientFence payload over 64 bytes, clipboard text over
:data:`MAX_CUT_TEXT_LENGTH`) ends the viewer's connection: see :attr:`ViewOnlyFilter.refusal`.
Whatever goes wrong, what reaches the server is a sequence of whole messages of the passed types,
each measured the way the server measures it, so the server's reading of the stream can never
drift into one of the withheld messages.

One pseudo-encoding changes the length of a message after the fact: once a server confirms
ExtendedMouseButtons (-316, rfbproto "ExtendedMouseButtons Pseudo-encoding"), a PointerEvent with
the top bit of its button mask set carries a seventh byte. Only the server-to-client stream, which
this filter does not see, tells when that starts; so SetEncodings reaches the server without
-316. The server then never confirms it, and every PointerEvent stays six bytes. A view-only
viewer loses nothing by it: none of its pointer events is forwarded anyway.

:class:`ViewOnlyFilter` does no I/O, in the style of :class:`vizgate.rfb.RfbBridge`, and works
whatever the chunking of its input.
"""

from __future__ import annotations

import logging
import struct

__all__ = ["MAX_CUT_TEXT_LENGTH", "ViewOnlyFilter"]

logger = logging.getLogger(__name__)

#: Longest ClientCutText (clipboard text) accepted, in bytes; a longer one ends the connection.
#: It is withheld either way and skipping costs no memory, but 10 MiB of clipboard is already
#: no paste a person makes: past it the viewer is only pumping bytes through the gateway.
MAX_CUT_TEXT_LENGTH = 10 * 1024 * 1024

# Message types (RFC 6143 §7.5; rfbproto "Client to Server Messages" for the extensions).
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
    _POINTER_EVENT: (False, 6),  # type, button-mask, x, y (always 6 bytes: see _STRIPPED)
    _XVP: (False, 4),  # type, padding, xvp-extension-version, xvp-message-code
}

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

# Pseudo-encodings kept from the server because, once confirmed, they change the length of a
# message this filter measures, and the confirmation travels in the stream it does not see.
_EXTENDED_MOUSE_BUTTONS = -316
_STRIPPED = frozenset({_EXTENDED_MOUSE_BUTTONS})


class _Refused(Exception):
    """Raised inside the filter when the stream cannot (or must not) be followed further."""


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


def _without_stripped_encodings(message: memoryview) -> bytes:
    """Return a SetEncodings message without the pseudo-encodings in ``_STRIPPED``.

    The message comes back byte for byte when it lists none of them.
    """
    count = (len(message) - _SET_ENCODINGS_HEADER) // 4
    encodings = struct.unpack_from(f"!{count}i", message, _SET_ENCODINGS_HEADER)
    if _STRIPPED.isdisjoint(encodings):
        return bytes(message)
    kept = [encoding for encoding in encodings if encoding not in _STRIPPED]
    # The type and padding bytes as the viewer sent them, then the shorter list.
    return bytes(message[:2]) + struct.pack(f"!H{len(kept)}i", len(kept), *kept)


class ViewOnlyFilter:
    """Sans-I/O filter over the client-to-server RFB stream of a viewer that may only watch.

    Feed it every byte the browser sends after its ClientInit (RFC 6143 §7.3.1) and send the
    server what :meth:`feed` returns: whole messages of the passed types, in order, each as the
    viewer sent it (SetEncodings without ExtendedMouseButtons; see the module's description).
    Withheld messages are consumed and counted in :attr:`dropped`; their bytes are never held,
    only counted down, so a large clipboard paste costs no memory. The filter holds at most the
    incomplete head of one message: of a passed one (at most a SetEncodings, 256 KiB), or the
    first few bytes of a withheld one until its length is known.

    The output depends only on the bytes fed, never on how they were cut into calls.

    When a message cannot be measured, :attr:`refusal` says why, and the caller disconnects the
    viewer. The :meth:`feed` call that meets such a message still returns the whole messages
    before it (as it would have had they come in an earlier call); every later call returns
    ``b""``.
    """

    def __init__(self) -> None:
        # The incomplete head of the next message, when the last feed ended inside it.
        self._pending = bytearray()
        # Bytes of a withheld message still to come and to discard.
        self._skip = 0
        self._dropped = 0
        self._refusal: str | None = None

    @property
    def refusal(self) -> str | None:
        """Why the viewer must be disconnected, for a person; None otherwise.

        Set when the viewer sends a message the filter cannot measure (an unknown type, a QEMU
        message other than the Extended Key Event) or will not accept (a ClientFence payload over
        64 bytes, clipboard text over :data:`MAX_CUT_TEXT_LENGTH`). Once set, :meth:`feed`
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
                message = view[pos : pos + length]
                if view[pos] == _SET_ENCODINGS:
                    output += _without_stripped_encodings(message)
                else:
                    output += message
                pos += length
        except _Refused as refused:
            self._refuse(str(refused))
            return bytes(output)
        self._pending = bytearray(view[pos:])
        return bytes(output)

    def _refuse(self, reason: str) -> None:
        self._refusal = reason
        # Nothing after the message that could not be measured can be told apart from input.
        self._pending = bytearray()
        self._skip = 0
        logger.debug("view-only filter refused the viewer: %s", reason)
