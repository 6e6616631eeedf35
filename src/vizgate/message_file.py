"""A one-line message an administrator leaves for the gateway in its data directory: the reason
new sessions are paused (:mod:`vizgate.pause`), a notice to every user (:mod:`vizgate.notice`).

Being a file, it outlives restarts of the gateway, and the portal's pages and the ``vizgate``
commands act on the same thing. Reading it costs one ``stat``, and a read only when the file
changed; writing replaces it whole (a reader never sees half a message). What is kept is
cleaned: one line of printable characters, at most :data:`MAX_LENGTH` of them, since it is
shown on every page.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from vizgate.private_file import replace_privately
from vizgate.watched_file import WatchedFile

__all__ = ["MAX_LENGTH", "MessageFile", "clean_message"]

#: Longer messages are cut: they are shown on every page of the portal.
MAX_LENGTH: Final = 300


class MessageFile:
    """A message kept in ``path``; ``default`` is what an empty file says."""

    def __init__(self, path: Path, default: str = "") -> None:
        self.path = path
        self.default = default
        self._file = WatchedFile(path, self._parse)

    def _parse(self, data: bytes) -> str:
        return clean_message(data.decode("utf-8", errors="replace")) or self.default

    def read(self) -> str | None:
        """The message, or None when there is none, or when the file cannot be read (said once
        in the log: a page must not fail because of it)."""
        return self._file.read()

    def write(self, text: str) -> str:
        """Keep ``text`` (cleaned; an empty one is :attr:`default`); returns it as it is shown.

        Raises:
            OSError: the file cannot be written.
        """
        shown = clean_message(text) or self.default
        replace_privately(self.path, (shown + "\n").encode())
        return shown

    def remove(self) -> bool:
        """Remove the message; False if there was none."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        return True


def clean_message(text: str) -> str:
    """``text`` as one line of printable characters, at most :data:`MAX_LENGTH` of them."""
    printable = "".join(char if char.isprintable() else " " for char in text)
    return " ".join(printable.split())[:MAX_LENGTH]
