"""A small file in the data directory, read again only when it changed.

The pauses and the notice are asked about at every reservation and on every page: each
question costs one ``stat``, and a read only when the file's inode, modification time or size
differ from the last read. A file that cannot be read or parsed counts as absent, said once in
the log per change of the file: a page or a launch must not fail because of it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

__all__ = ["WatchedFile"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class WatchedFile(Generic[T]):
    """The content of ``path`` as ``parse`` makes it (``ValueError``: it cannot be).

    Args:
        path: the file.
        parse: what its bytes mean.
        unreadable: what an unreadable file means, added to the log line (``", no node is
            paused"``).
    """

    def __init__(self, path: Path, parse: Callable[[bytes], T], *, unreadable: str = "") -> None:
        self.path = path
        self.parse = parse
        self.unreadable = unreadable
        self._lock = threading.Lock()
        self._seen: tuple[int, int, int] | None = None
        self._value: T | None = None

    def read(self) -> T | None:
        """What the file holds now; None when there is none, or it cannot be read or parsed."""
        try:
            info = self.path.stat()
        except FileNotFoundError:
            return None
        stamp = (info.st_ino, info.st_mtime_ns, info.st_size)
        with self._lock:
            if stamp != self._seen:
                try:
                    value: T | None = self.parse(self.path.read_bytes())
                except FileNotFoundError:
                    return None
                except (OSError, ValueError) as exc:
                    value = None
                    why = (exc.strerror or exc) if isinstance(exc, OSError) else exc
                    logger.error("cannot read %s%s: %s", self.path, self.unreadable, why)
                self._seen, self._value = stamp, value
            return self._value
