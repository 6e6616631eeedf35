"""Replacing a file whole, readable by its owner only: a VNC password file, an administrator's
message or pause in the data directory.

The new content goes to a temporary file beside the target, created with mode 0600 from the
start (never loosened afterwards, never following a link), synced, then renamed over the
target: a reader sees the old content or the new, never half of it, and an existing file with
a looser mode is not reused.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

__all__ = ["replace_privately"]


def replace_privately(path: Path, data: bytes) -> None:
    """Make ``data`` the content of ``path`` (see the module's documentation).

    Raises:
        OSError: the file cannot be written; nothing is left behind.
    """
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    descriptor = os.open(temporary, flags, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
