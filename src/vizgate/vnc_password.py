"""VNC passwords: VNC Authentication and TigerVNC's password files.

A session's VNC server is protected by a password of which only the first 8 bytes count. The
gateway uses it in two forms:

* :func:`vnc_auth_response` answers the server's VNC Authentication challenge (RFC 6143 §7.2.2):
  the 16-byte challenge encrypted with DES under the password. :class:`vizgate.rfb.RfbBridge`
  sends it during the RFB handshake, so that the browser never holds the password.
* :func:`write_vnc_password_file` and :func:`read_vnc_password_file` handle TigerVNC's
  obfuscated password files (what ``vncpasswd -f`` writes: 8 bytes, or 16 with a view-only
  password), the form in which a session script hands the same password to its VNC server.

Both are single DES with VNC's quirk of bit-reversed key bytes. The files are "encrypted" under a
fixed key everybody knows: that is obfuscation, and only the file's mode (0600) protects them.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, modes

from vizgate.exceptions import VizgateError
from vizgate.private_file import replace_privately

try:
    # cryptography >= 43 keeps the old ciphers here; single DES is TripleDES with one 8-byte key.
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
except ImportError:  # pragma: no cover - older cryptography
    from cryptography.hazmat.primitives.ciphers.algorithms import TripleDES

__all__ = [
    "CHALLENGE_LENGTH",
    "VncPasswordFileError",
    "obfuscate_vnc_password",
    "read_vnc_password_file",
    "vnc_auth_response",
    "vnc_password_of",
    "write_vnc_password_file",
]

#: RFC 6143 §7.2.2: the server's challenge, and so the response, is 16 bytes.
CHALLENGE_LENGTH = 16

# TigerVNC's (and the original VNC's) fixed key for obfuscating stored passwords, as the bytes
# appear in its source (vncauth.c / Password.cxx). Like every VNC key it is fed to a DES whose key
# schedule reads each byte's bits in reverse order; see _vnc_des_key().
_OBFUSCATION_KEY = bytes([23, 82, 107, 6, 35, 78, 88, 7])
_PASSWORD_LENGTH = 8
# ``vncpasswd -f`` writes 8 bytes, or 16 when a view-only password follows the full one.
_PASSWORD_FILE_SIZES = (8, 16)

_BIT_REVERSED = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))


# --------------------------------------------------------------------------------------------
# DES and VNC Authentication (RFC 6143 §7.2.2)


def _des_ecb_encrypt(key: bytes, data: bytes) -> bytes:
    """Encrypt ``data`` (a multiple of 8 bytes) with single DES in ECB mode under an 8-byte key."""
    # Triple DES (EDE) with K1 = K2 = K3 is single DES, all VNC uses. The key is repeated rather
    # than passed as 8 bytes because recent cryptography releases deprecate 8-byte keys.
    encryptor = Cipher(TripleDES(key * 3), modes.ECB()).encryptor()  # noqa: S305 - RFC 6143 §7.2.2
    return encryptor.update(data) + encryptor.finalize()


def _des_ecb_decrypt(key: bytes, data: bytes) -> bytes:
    """Decrypt ``data`` (a multiple of 8 bytes) with single DES in ECB mode under an 8-byte key."""
    decryptor = Cipher(TripleDES(key * 3), modes.ECB()).decryptor()  # noqa: S305 - TigerVNC format
    return decryptor.update(data) + decryptor.finalize()


def _vnc_des_key(raw: bytes) -> bytes:
    """Turn VNC key material into a standard DES key.

    The original VNC code derived its DES key schedule reading each key byte from the least
    significant bit up, the reverse of FIPS 46. Every RFB implementation keeps that quirk (RFC 6143
    §7.2.2 does not mention it; see its errata), so the key is the first 8 bytes, zero-padded,
    each byte bit-reversed.
    """
    return raw[:_PASSWORD_LENGTH].ljust(_PASSWORD_LENGTH, b"\0").translate(_BIT_REVERSED)


def vnc_auth_response(challenge: bytes, password: bytes) -> bytes:
    """Answer a VNC Authentication challenge (RFC 6143 §7.2.2).

    Args:
        challenge: the 16 random bytes the server sent.
        password: the VNC password; only its first 8 bytes count, as for every VNC server.

    Returns:
        The 16-byte response: the challenge encrypted with DES under the password.

    Raises:
        ValueError: the challenge is not 16 bytes long.
    """
    if len(challenge) != CHALLENGE_LENGTH:
        raise ValueError(
            f"a VNC Authentication challenge has {CHALLENGE_LENGTH} bytes, got {len(challenge)}"
        )
    return _des_ecb_encrypt(_vnc_des_key(password), challenge)


# --------------------------------------------------------------------------------------------
# TigerVNC password files


class VncPasswordFileError(VizgateError):
    """A VNC password file cannot be read. The message names the file, never its contents.

    Attributes:
        path: the file, with ``~`` expanded.
    """

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(f"VNC password file {str(path)!r}: {message}")
        self.path = path


def _check_password(password: bytes) -> bytes:
    """Validate a password for storing; return the part a VNC server uses (at most 8 bytes)."""
    if not password:
        raise ValueError("the VNC password is empty")
    if b"\0" in password:
        # The file format pads with NUL bytes and every server treats the password as a C string.
        raise ValueError("the VNC password contains a NUL byte")
    return password[:_PASSWORD_LENGTH]


def obfuscate_vnc_password(password: bytes) -> bytes:
    """Obfuscate a password the way ``vncpasswd -f`` does (TigerVNC's ``passwd`` file format).

    This is obfuscation with a key everybody knows, not encryption: protect the file with its mode.

    Args:
        password: the password; like ``vncpasswd`` only its first 8 bytes are kept.

    Returns:
        8 bytes: the password zero-padded to 8 bytes, DES-encrypted with VNC's fixed key.

    Raises:
        ValueError: the password is empty or contains a NUL byte.
    """
    kept = _check_password(password)
    return _des_ecb_encrypt(_vnc_des_key(_OBFUSCATION_KEY), kept.ljust(_PASSWORD_LENGTH, b"\0"))


def _deobfuscate(block: bytes) -> bytes:
    plain = _des_ecb_decrypt(_vnc_des_key(_OBFUSCATION_KEY), block)
    return plain.split(b"\0", 1)[0]


def read_vnc_password_file(path: str | Path) -> bytes:
    """Read the (full-access) password from a TigerVNC ``passwd`` file.

    Args:
        path: the file, as written by ``vncpasswd -f`` or :func:`write_vnc_password_file`;
            ``~`` is expanded. A view-only password stored after the first is ignored.

    Returns:
        The password, without its zero padding.

    Raises:
        VncPasswordFileError: the file is missing, unreadable, of the wrong size or holds an
            empty password.
    """
    file = Path(path).expanduser()
    try:
        with file.open("rb") as stream:
            # One byte more than the largest valid file tells a wrong size without reading it all.
            content = stream.read(max(_PASSWORD_FILE_SIZES) + 1)
    except FileNotFoundError:
        raise VncPasswordFileError(file, "no such file") from None
    except OSError as exc:
        raise VncPasswordFileError(file, f"cannot read it ({exc.strerror})") from None
    return vnc_password_of(content, file)


def vnc_password_of(content: bytes, file: str | Path) -> bytes:
    """The (full-access) password a TigerVNC ``passwd`` file's ``content`` holds.

    Raises:
        VncPasswordFileError: ``content`` is of the wrong size or holds an empty password
            (the error names ``file``).
    """
    file = Path(file)
    if len(content) not in _PASSWORD_FILE_SIZES:
        size = f"{len(content)} bytes" if len(content) <= max(_PASSWORD_FILE_SIZES) else "larger"
        raise VncPasswordFileError(
            file, f"not a VNC password file (8 or 16 bytes expected, it is {size})"
        )
    password = _deobfuscate(content[:_PASSWORD_LENGTH])
    if not password:
        raise VncPasswordFileError(file, "the stored password is empty")
    return password


def write_vnc_password_file(path: str | Path, password: bytes) -> None:
    """Write ``password`` to ``path`` in TigerVNC's ``passwd`` format, readable by its owner only.

    The file is created with mode 0600 from the start (never loosened, never chmod-ed afterwards)
    and replaces any existing file atomically, so a reader sees the old or the new password and an
    existing file with a looser mode is not reused.

    Args:
        path: where to write; ``~`` is expanded. The directory must exist.
        password: the password; like ``vncpasswd`` only its first 8 bytes are kept.

    Raises:
        ValueError: the password is empty or contains a NUL byte.
        OSError: the file cannot be written.
    """
    replace_privately(Path(path).expanduser(), obfuscate_vnc_password(password))
