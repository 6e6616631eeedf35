"""A notice to every user: one line an administrator posts ("Maintenance on Friday from 18:00;
save your work") that every portal page shows, the login page included, and that open viewers
show over the desktop within seconds. Unlike a pause (:mod:`vizgate.pause`), it stops nothing.

It is the file ``notice`` in the gateway's data directory (:mod:`vizgate.message_file`), set by
``vizgate notice TEXT`` or the Status page and withdrawn by ``vizgate notice --withdraw`` or
the Status page.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from vizgate.message_file import MessageFile

__all__ = ["NOTICE_FILE_NAME", "NoticeFile"]

#: The file in the data directory.
NOTICE_FILE_NAME: Final = "notice"


class NoticeFile(MessageFile):
    """The notice to users, kept in ``path``; an empty notice is no notice."""

    @classmethod
    def in_data_dir(cls, data_dir: Path) -> NoticeFile:
        """The notice of the gateway whose data directory is ``data_dir``."""
        return cls(data_dir / NOTICE_FILE_NAME)

    def text(self) -> str | None:
        """The notice users are shown, or None."""
        return self.read() or None

    def post(self, text: str) -> str:
        """Show ``text`` to every user (cleaned); returns it as shown.

        Raises:
            ValueError: the text is empty once cleaned.
            OSError: the file cannot be written.
        """
        if not text.strip():
            raise ValueError("the notice is empty")
        return self.write(text)

    def withdraw(self) -> bool:
        """Show no notice any more; False if there was none."""
        return self.remove()
