"""The RFB handshake bridge.

The VNC server of a session asks for a password; the browser must never hold it. So the gateway
speaks the RFB handshake (RFC 6143 §7.1-7.3) on both sides of the tunnel:

* towards the VNC server it is an RFB *client* that answers VNC Authentication (§7.2.2) with the
  session's password (see :mod:`vizgate.vnc_password`);
* towards the browser it is an RFB *server* that offers only security type None (§7.2.1).

Once both handshakes are done, the browser's ClientInit (§7.3.1) is forwarded to the server and
from then on bytes flow through unchanged: the server's ServerInit (§7.3.2) is the first thing
the browser receives after its own handshake.

:class:`RfbBridge` does no I/O, in the style of python-websockets' protocol objects: the caller
feeds the bytes it read (``receive_from_server``, ``receive_from_client``) and sends the bytes it
drains (``data_to_server``, ``data_to_client``). It works whatever the chunking of its input.
"""

from __future__ import annotations

import enum
import logging
import re
import struct
from collections.abc import Callable, Generator

from vizgate.vnc_password import CHALLENGE_LENGTH, vnc_auth_response

__all__ = [
    "BridgeState",
    "RfbBridge",
]

logger = logging.getLogger(__name__)

# RFC 6143 §7.2: security types this module knows by name (IANA "RFB Security Types").
_SECURITY_INVALID = 0
_SECURITY_NONE = 1
_SECURITY_VNC_AUTH = 2
_SECURITY_NAMES = {
    1: "None",
    2: "VNC Authentication",
    5: "RA2",
    6: "RA2ne",
    16: "Tight",
    17: "Ultra",
    18: "TLS",
    19: "VeNCrypt",
    20: "SASL",
    21: "MD5",
    22: "xvp",
    30: "Apple Remote Desktop",
}

# RFC 6143 §7.1.1: "RFB xxx.yyy\n", twelve bytes, with three decimal digits on each side.
_VERSION_LENGTH = 12
_VERSION_RE = re.compile(rb"RFB (\d{3})\.(\d{3})\n")
_V3_3 = (3, 3)
_V3_7 = (3, 7)
_V3_8 = (3, 8)
_BROWSER_VERSIONS = (_V3_3, _V3_7, _V3_8)

# A reason string longer than this is not read: a broken or hostile server could otherwise
# make the gateway buffer up to 4 GiB for one message it only shows to a person.
_MAX_REASON_LENGTH = 4096
# A reason is shown to people and written to logs: keep it short.
_MAX_REASON_SHOWN = 200

# RFC 6143 §7.3.1: a ClientInit whose shared-flag is set leaves the other clients connected.
_SHARED = b"\x01"


# --------------------------------------------------------------------------------------------
# The handshake bridge (RFC 6143 §7.1-7.3)


class BridgeState(enum.Enum):
    """Where an :class:`RfbBridge` is.

    HANDSHAKING: at least one of the two handshakes is in progress.
    ESTABLISHED: both are done and the browser's ClientInit went to the server; bytes pass through.
    FAILED: a handshake failed; :attr:`RfbBridge.failure` says why. Nothing more is sent.
    """

    HANDSHAKING = "handshaking"
    ESTABLISHED = "established"
    FAILED = "failed"


# A parser coroutine: it yields whenever it needs more input and returns when its side is done.
_Parser = Generator[None, None, None]


class _Reader:
    """Bytes received from one peer and not yet consumed by its parser."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def read_exact(self, n: int) -> Generator[None, None, bytes]:
        while len(self.buffer) < n:
            yield
        data = bytes(self.buffer[:n])
        del self.buffer[:n]
        return data

    def take_all(self) -> bytes:
        data = bytes(self.buffer)
        self.buffer.clear()
        return data


def _describe_types(types: bytes) -> str:
    return ", ".join(
        f"{t} ({_SECURITY_NAMES[t]})" if t in _SECURITY_NAMES else str(t) for t in types
    )


def _show_reason(raw: bytes) -> str:
    # RFC 6143 leaves the encoding open; servers send ASCII or UTF-8.
    text = "".join(c if c.isprintable() else " " for c in raw.decode("utf-8", "replace")).strip()
    if len(text) > _MAX_REASON_SHOWN:
        text = text[: _MAX_REASON_SHOWN - 3] + "..."
    return text or "no reason given"


class RfbBridge:
    """Sans-I/O bridge between a password-protected VNC server and a browser speaking RFB.

    Towards the server the bridge is an RFB client: it takes the server's version (3.3, 3.7, 3.8;
    later 3.x and higher majors as 3.8), picks VNC Authentication when offered (else None) and
    answers the challenge with ``password``. Towards the browser it is an RFB 3.8 server that
    accepts browsers speaking 3.3, 3.7 or 3.8 and offers only security type None. The browser's
    ClientInit is held until the server has accepted the password, then forwarded; everything
    after it, both ways, passes through unchanged.

    Usage: feed whatever arrives with :meth:`receive_from_server` / :meth:`receive_from_client`,
    send what :meth:`data_to_server` / :meth:`data_to_client` return, and stop at
    :attr:`failure`. Once :attr:`established` is true, drain both outputs once more (they may hold
    bytes that arrived together with the end of the handshake) and relay raw; bytes still fed to
    the bridge after that are passed through to the other side's output.

    After a failure both outputs are empty and stay empty, and further input is ignored (no
    exception): the caller closes both connections and reports :attr:`failure`.

    Args:
        password: the VNC password (first 8 bytes used). If empty, the bridge never chooses VNC
            Authentication and connects only to servers that offer None.
        force_shared: send the server a ClientInit asking to share the desktop, whatever the
            browser asked: a viewer who may only watch must not disconnect the others
            (RFC 6143 §7.3.1).
        server_filter: what the server sends from its ServerInit on passes through before it
            reaches :meth:`data_to_client` (see :mod:`vizgate.view_only_server`).
        client_filter: what the browser's messages after its ClientInit pass through before
            they reach :meth:`data_to_server` (see :mod:`vizgate.view_only`).
    """

    def __init__(
        self,
        password: bytes,
        *,
        force_shared: bool = False,
        client_filter: Callable[[bytes], bytes] | None = None,
        server_filter: Callable[[bytes], bytes] | None = None,
    ) -> None:
        self._password = bytes(password)
        self._force_shared = force_shared
        self._client_filter = client_filter
        self._server_filter = server_filter
        self._state = BridgeState.HANDSHAKING
        self._failure: str | None = None
        self._to_server = bytearray()
        self._to_client = bytearray()
        self._server_reader = _Reader()
        self._client_reader = _Reader()
        self._server_version: tuple[int, int] | None = None
        self._client_version: tuple[int, int] | None = None
        self._security_type: int | None = None
        # The browser's ClientInit, held until the server side is authenticated (RFC 6143 §7.3.1).
        self._client_init: bytes | None = None
        self._server_parser: _Parser | None = self._parse_server()
        self._client_parser: _Parser | None = self._parse_client()
        # Run both parsers to their first read: the client side sends our version at once.
        self._advance_server()
        self._advance_client()

    # -- public state ---------------------------------------------------------------------------

    @property
    def state(self) -> BridgeState:
        """Where the bridge is: handshaking, established or failed."""
        return self._state

    @property
    def established(self) -> bool:
        """True once both handshakes are done and the ClientInit was forwarded."""
        return self._state is BridgeState.ESTABLISHED

    @property
    def failure(self) -> str | None:
        """Why the handshake failed, for a person (never the password); None if it did not."""
        return self._failure

    @property
    def server_version(self) -> tuple[int, int] | None:
        """The RFB version spoken with the VNC server, e.g. ``(3, 8)``, once agreed."""
        return self._server_version

    @property
    def client_version(self) -> tuple[int, int] | None:
        """The RFB version spoken with the browser, once it answered."""
        return self._client_version

    @property
    def security_type(self) -> int | None:
        """The security type used with the VNC server (1 None, 2 VNC Authentication), once known."""
        return self._security_type

    # -- input ----------------------------------------------------------------------------------

    def receive_from_server(self, data: bytes) -> None:
        """Take bytes read from the VNC server."""
        if self._state is BridgeState.FAILED or not data:
            return
        if self._state is BridgeState.ESTABLISHED:
            self._to_client += self._filtered_server(data)
            return
        self._server_reader.buffer += data
        self._advance_server()

    def receive_from_client(self, data: bytes) -> None:
        """Take bytes read from the browser."""
        if self._state is BridgeState.FAILED or not data:
            return
        if self._state is BridgeState.ESTABLISHED:
            self._to_server += self._filtered(data)
            return
        self._client_reader.buffer += data
        self._advance_client()

    def receive_eof_from_server(self) -> None:
        """Say that the VNC server closed its connection; a failure if the handshake is not done."""
        if self._state is not BridgeState.HANDSHAKING:
            return
        pending = bytes(self._server_reader.buffer[:_VERSION_LENGTH])
        if self._server_version is None:
            if not pending:
                self._fail("VNC server closed the connection without sending anything")
                return
            if not (pending.startswith(b"RFB ") or b"RFB ".startswith(pending)):
                self._fail(f"not an RFB server (got {pending!r}, then it closed the connection)")
                return
        self._fail("VNC server closed the connection during the RFB handshake")

    def receive_eof_from_client(self) -> None:
        """Say that the browser closed its connection; a failure if the handshake is not done."""
        if self._state is BridgeState.HANDSHAKING:
            self._fail("browser closed the connection during the RFB handshake")

    # -- output ---------------------------------------------------------------------------------

    def data_to_server(self) -> bytes:
        """Return and forget the bytes to send to the VNC server."""
        data = bytes(self._to_server)
        self._to_server.clear()
        return data

    def data_to_client(self) -> bytes:
        """Return and forget the bytes to send to the browser."""
        data = bytes(self._to_client)
        self._to_client.clear()
        return data

    # -- machinery ------------------------------------------------------------------------------

    def _filtered(self, data: bytes) -> bytes:
        return self._client_filter(data) if self._client_filter is not None and data else data

    def _filtered_server(self, data: bytes) -> bytes:
        return self._server_filter(data) if self._server_filter is not None and data else data

    def _set_state(self, state: BridgeState) -> None:
        logger.debug("RFB bridge: %s -> %s", self._state.value, state.value)
        self._state = state

    def _fail(self, message: str) -> None:
        if self._state is BridgeState.FAILED:
            return
        self._failure = message
        # Nothing half-done reaches either peer once the bridge gave up.
        self._to_server.clear()
        self._to_client.clear()
        self._server_reader.buffer.clear()
        self._client_reader.buffer.clear()
        self._client_init = None
        self._server_parser = None
        self._client_parser = None
        self._set_state(BridgeState.FAILED)
        logger.debug("RFB bridge failed: %s", message)

    def _advance_server(self) -> None:
        parser = self._server_parser
        if parser is None:
            return
        try:
            next(parser)
        except StopIteration:
            if self._server_parser is parser:
                self._server_parser = None
        self._maybe_establish()

    def _advance_client(self) -> None:
        parser = self._client_parser
        if parser is None:
            return
        try:
            next(parser)
        except StopIteration:
            if self._client_parser is parser:
                self._client_parser = None
        self._maybe_establish()

    def _maybe_establish(self) -> None:
        if self._state is not BridgeState.HANDSHAKING:
            return
        server_done = self._server_parser is None and self._security_type is not None
        if not (server_done and self._client_init is not None):
            return
        # RFC 6143 §7.3: the ClientInit starts the initialisation phase; whatever either peer sent
        # after its handshake (a ServerInit read together with SecurityResult, early client
        # messages) follows it unchanged.
        self._to_server += _SHARED if self._force_shared else self._client_init
        self._to_server += self._filtered(self._client_reader.take_all())
        self._to_client += self._filtered_server(self._server_reader.take_all())
        self._client_init = None
        self._set_state(BridgeState.ESTABLISHED)

    def _read_reason(self, reader: _Reader) -> Generator[None, None, str]:
        """Read an RFB reason string: u32 length, then that many bytes (RFC 6143 §7.1.2)."""
        (length,) = struct.unpack("!I", (yield from reader.read_exact(4)))
        if length > _MAX_REASON_LENGTH:
            return f"a {length}-byte reason, not shown"
        return _show_reason((yield from reader.read_exact(length)))

    # -- towards the VNC server: the gateway is an RFB client -----------------------------------

    def _parse_server(self) -> _Parser:
        reader = self._server_reader

        # RFC 6143 §7.1.1: the server speaks first with its highest version.
        banner = yield from reader.read_exact(_VERSION_LENGTH)
        match = _VERSION_RE.fullmatch(banner)
        if match is None:
            self._fail(f"not an RFB server (got {banner!r})")
            return
        offered = (int(match[1]), int(match[2]))
        if offered[0] < 3:
            self._fail(f"VNC server speaks RFB {offered[0]}.{offered[1]}, older than 3.3")
            return
        if offered >= _V3_8:
            # Later 3.x (e.g. Apple's 3.889) and higher majors accept a 3.8 client.
            version = _V3_8
        elif offered == _V3_7:
            version = _V3_7
        else:
            # §7.1.1: "Other version numbers ... should be interpreted as 3.3".
            version = _V3_3
        self._server_version = version
        self._to_server += b"RFB %03d.%03d\n" % version

        if version == _V3_3:
            # RFC 6143 Appendix A.1: in 3.3 the server dictates the type as a u32.
            (chosen,) = struct.unpack("!I", (yield from reader.read_exact(4)))
            if chosen == _SECURITY_INVALID:
                reason = yield from self._read_reason(reader)
                self._fail(f"VNC server refused the connection: {reason}")
                return
            if chosen not in (_SECURITY_NONE, _SECURITY_VNC_AUTH):
                self._fail(f"VNC server requires an unsupported security type ({chosen})")
                return
            if chosen == _SECURITY_VNC_AUTH and not self._password:
                self._fail("VNC server requires a password and none is set for this session")
                return
        else:
            # RFC 6143 §7.1.2: a count, then that many types; a count of 0 carries a reason.
            (count,) = yield from reader.read_exact(1)
            if count == 0:
                reason = yield from self._read_reason(reader)
                self._fail(f"VNC server refused the connection: {reason}")
                return
            types = yield from reader.read_exact(count)
            if _SECURITY_VNC_AUTH in types and self._password:
                chosen = _SECURITY_VNC_AUTH
            elif _SECURITY_NONE in types:
                chosen = _SECURITY_NONE
            elif _SECURITY_VNC_AUTH in types:
                self._fail("VNC server requires a password and none is set for this session")
                return
            else:
                self._fail(
                    "VNC server offers no supported security type "
                    f"(offered: {_describe_types(types)})"
                )
                return
            self._to_server += bytes([chosen])

        if chosen == _SECURITY_VNC_AUTH:
            # RFC 6143 §7.2.2: a 16-byte challenge, answered by its DES encryption.
            challenge = yield from reader.read_exact(CHALLENGE_LENGTH)
            self._to_server += vnc_auth_response(challenge, self._password)

        # RFC 6143 §7.1.3: SecurityResult always follows in 3.8; in 3.3 and 3.7 (Appendix A) only
        # after an authentication, not after None.
        if chosen == _SECURITY_VNC_AUTH or version == _V3_8:
            (status,) = struct.unpack("!I", (yield from reader.read_exact(4)))
            if status != 0:
                if version == _V3_8:
                    reason = yield from self._read_reason(reader)
                elif status == 2:
                    # Appendix A.1: 3.3 servers may answer 2, "too many attempts".
                    reason = "too many attempts"
                else:
                    # Appendix A: before 3.8 a failed SecurityResult carries no reason.
                    reason = "the password was not accepted"
                if chosen == _SECURITY_VNC_AUTH:
                    self._fail(f"authentication at the VNC server failed: {reason}")
                else:
                    self._fail(f"VNC server refused the connection: {reason}")
                return
        self._security_type = chosen
        logger.debug("RFB bridge: VNC server accepted RFB %d.%d, security %d", *version, chosen)

    # -- towards the browser: the gateway is an RFB server --------------------------------------

    def _parse_client(self) -> _Parser:
        reader = self._client_reader

        # RFC 6143 §7.1.1: offer 3.8; the browser answers with the version it will speak.
        self._to_client += b"RFB 003.008\n"
        answer = yield from reader.read_exact(_VERSION_LENGTH)
        match = _VERSION_RE.fullmatch(answer)
        version = (int(match[1]), int(match[2])) if match else None
        if version not in _BROWSER_VERSIONS:
            self._fail(f"unsupported RFB version from browser (got {answer!r})")
            return
        self._client_version = version

        if version == _V3_3:
            # RFC 6143 Appendix A.1: the server dictates the type; None needs no SecurityResult.
            self._to_client += struct.pack("!I", _SECURITY_NONE)
        else:
            # RFC 6143 §7.1.2: offer exactly one type, None, and read the browser's choice.
            self._to_client += bytes([1, _SECURITY_NONE])
            (choice,) = yield from reader.read_exact(1)
            if choice != _SECURITY_NONE:
                self._fail(f"browser chose security type {choice}, only 1 (None) was offered")
                return
            if version == _V3_8:
                # RFC 6143 §7.2.1: with None, only 3.8 sends a SecurityResult (OK).
                self._to_client += struct.pack("!I", 0)

        # RFC 6143 §7.3.1: ClientInit is one byte, the shared flag. Held until the server side is
        # authenticated; _maybe_establish forwards it.
        self._client_init = yield from reader.read_exact(1)
