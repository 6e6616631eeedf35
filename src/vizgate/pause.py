"""Pausing new sessions for maintenance: running sessions go on, new ones are refused with why.

Before a cluster's maintenance an administrator stops new sessions and lets the running ones
finish. The pause is a file in the gateway's data directory, ``paused``, that holds the reason
users are shown. So it outlives a restart of the gateway (maintenance often includes one), and
the Status page, ``vizgate pause REASON`` and ``vizgate resume`` all act on the same thing.

The broker asks :meth:`PauseFile.reason` at each reservation: one ``stat``, and a read only
when the file changed. Administrators may still start sessions (to check the maintenance).
"""

from __future__ import annotations

import os
import secrets
import threading
from pathlib import Path
from typing import Final

__all__ = ["DEFAULT_REASON", "MAX_REASON_LENGTH", "PAUSE_FILE_NAME", "PauseFile"]

#: The file in the data directory.
PAUSE_FILE_NAME: Final = "paused"
#: What users are told when the administrator gave no reason.
DEFAULT_REASON: Final = "maintenance"
#: Longer reasons are cut: they are shown on every page of the portal.
MAX_REASON_LENGTH: Final = 300


class PauseFile:
    """The pause of new sessions, kept in ``path`` (see the module's documentation)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._seen: tuple[int, int] | None = None
        self._reason: str | None = None

    @classmethod
    def in_data_dir(cls, data_dir: Path) -> PauseFile:
        """The pause of the gateway whose data directory is ``data_dir``."""
        return cls(data_dir / PAUSE_FILE_NAME)

    def reason(self) -> str | None:
        """Why new sessions are paused, or None when they are not."""
        try:
            info = self.path.stat()
        except FileNotFoundError:
            return None
        stamp = (info.st_mtime_ns, info.st_size)
        with self._lock:
            if stamp != self._seen:
                try:
                    text = self.path.read_text(encoding="utf-8", errors="replace")
                except FileNotFoundError:
                    return None
                self._reason = _clean(text) or DEFAULT_REASON
                self._seen = stamp
            return self._reason

    def pause(self, reason: str) -> str:
        """Pause new sessions for ``reason`` (cleaned: one line, at most
        :data:`MAX_REASON_LENGTH` characters); returns the reason as users will see it.

        Raises:
            OSError: the file cannot be written.
        """
        shown = _clean(reason) or DEFAULT_REASON
        temporary = self.path.with_name(f".{self.path.name}.{secrets.token_hex(6)}.tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
                stream.write(shown + "\n")
            os.replace(temporary, self.path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        return shown

    def resume(self) -> bool:
        """Accept new sessions again; False if they were not paused."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        return True


def _clean(text: str) -> str:
    printable = "".join(char if char.isprintable() else " " for char in text)
    return " ".join(printable.split())[:MAX_REASON_LENGTH]
