"""Pausing new sessions for maintenance: running sessions go on, new ones are refused with why.

Before a cluster's maintenance an administrator stops new sessions and lets the running ones
finish. The pause is a file in the gateway's data directory, ``paused``, that holds the reason
users are shown (:mod:`vizgate.message_file`). So it outlives a restart of the gateway
(maintenance often includes one), and the Status page, ``vizgate pause REASON`` and
``vizgate resume`` all act on the same thing.

The broker asks :meth:`PauseFile.reason` at each reservation: one ``stat``, and a read only
when the file changed. Administrators may still start sessions (to check the maintenance).
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from vizgate.message_file import MAX_LENGTH, MessageFile

__all__ = ["DEFAULT_REASON", "MAX_REASON_LENGTH", "PAUSE_FILE_NAME", "PauseFile"]

#: The file in the data directory.
PAUSE_FILE_NAME: Final = "paused"
#: What users are told when the administrator gave no reason.
DEFAULT_REASON: Final = "maintenance"
#: Longer reasons are cut: they are shown on every page of the portal.
MAX_REASON_LENGTH: Final = MAX_LENGTH


class PauseFile(MessageFile):
    """The pause of new sessions, kept in ``path`` (see the module's documentation)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, DEFAULT_REASON)

    @classmethod
    def in_data_dir(cls, data_dir: Path) -> PauseFile:
        """The pause of the gateway whose data directory is ``data_dir``."""
        return cls(data_dir / PAUSE_FILE_NAME)

    def reason(self) -> str | None:
        """Why new sessions are paused, or None when they are not."""
        return self.read()

    def pause(self, reason: str) -> str:
        """Pause new sessions for ``reason`` (cleaned: one line, at most
        :data:`MAX_REASON_LENGTH` characters); returns the reason as users will see it.

        Raises:
            OSError: the file cannot be written.
        """
        return self.write(reason)

    def resume(self) -> bool:
        """Accept new sessions again; False if they were not paused."""
        return self.remove()
