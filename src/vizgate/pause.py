"""Pausing new sessions for maintenance: running sessions go on, new ones are refused with why.

Before a cluster's maintenance an administrator stops new sessions and lets the running ones
finish. The pause is a file in the gateway's data directory, ``paused``, that holds the reason
users are shown (:mod:`vizgate.message_file`). So it outlives a restart of the gateway
(maintenance often includes one), and the Status page, ``vizgate pause REASON`` and
``vizgate resume`` all act on the same thing.

The broker asks :meth:`PauseFile.reason` at each reservation: one ``stat``, and a read only
when the file changed. Administrators may still start sessions (to check the maintenance).

One session type may be paused alone (:class:`TypePauses`, the file ``paused-types.json``):
its licence server is down while the other types go on. The same rules hold.

One node of a pool may be paused alone (:class:`NodePauses`, the file ``paused-nodes.json``)
for its maintenance: reservations pass over the instances that run on it (as their script's
optional ``node()`` says) while the pool's other nodes take new sessions, and its running
sessions go on until their users leave. Unlike the other pauses it holds for administrators
too: the node may be switched off.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar, Final, Self

from vizgate.message_file import MAX_LENGTH, MessageFile, clean_message
from vizgate.private_file import replace_privately
from vizgate.watched_file import WatchedFile

__all__ = [
    "DEFAULT_REASON",
    "MAX_REASON_LENGTH",
    "NODE_PAUSES_FILE_NAME",
    "PAUSE_FILE_NAME",
    "TYPE_PAUSES_FILE_NAME",
    "NamedPauses",
    "NodePauses",
    "PauseFile",
    "TypePauses",
]

logger = logging.getLogger(__name__)

#: The file in the data directory.
PAUSE_FILE_NAME: Final = "paused"
#: The file of the session types paused alone, in the data directory.
TYPE_PAUSES_FILE_NAME: Final = "paused-types.json"
#: The file of the nodes paused alone, in the data directory.
NODE_PAUSES_FILE_NAME: Final = "paused-nodes.json"
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


class NamedPauses:
    """Things paused alone by name (session types, nodes), with why, kept in ``path`` as a
    JSON object ``{"name": "reason"}``.

    Reading costs one ``stat``, and a read only when the file changed; a file that cannot be
    read or parsed pauses nothing (said once in the log, as for :class:`PauseFile`). Writers
    (the commands, the Status page) take an exclusive lock on ``path`` + ``.lock`` around
    their read and replace, so two changes made at once are both kept.
    """

    #: What the names are, for the log.
    kind: ClassVar[str] = "name"
    #: The file in the data directory.
    file_name: ClassVar[str] = ""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = WatchedFile(
            path,
            lambda data: _parsed(data.decode("utf-8")),
            unreadable=f", no {self.kind} is paused",
        )

    @classmethod
    def in_data_dir(cls, data_dir: Path) -> Self:
        """The pauses of the gateway whose data directory is ``data_dir``."""
        return cls(data_dir / cls.file_name)

    def reasons(self) -> dict[str, str]:
        """Every paused name and why."""
        return dict(self._file.read() or {})

    def reason(self, name: str) -> str | None:
        """Why new sessions of (or on) ``name`` are paused, or None when they are not."""
        return self.reasons().get(name)

    def pause(self, name: str, reason: str) -> str:
        """Pause new sessions of (or on) ``name`` for ``reason`` (cleaned as for
        :class:`PauseFile`); returns the reason as users will see it.

        Raises:
            OSError: the file cannot be written.
        """
        shown = clean_message(reason) or DEFAULT_REASON
        with self._changing() as reasons:
            reasons[name] = shown
        return shown

    def resume(self, name: str) -> bool:
        """Accept new sessions of (or on) ``name`` again; False if they were not paused.

        Raises:
            OSError: the file cannot be written.
        """
        with self._changing() as reasons:
            return reasons.pop(name, None) is not None

    @contextlib.contextmanager
    def _changing(self) -> Iterator[dict[str, str]]:
        lock = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                reasons = _parsed(self.path.read_text(encoding="utf-8"))
            except FileNotFoundError:
                reasons = {}
            except ValueError:
                # Replaced by what is written now, rather than refusing every change.
                logger.warning("%s was not valid; it is written anew", self.path)
                reasons = {}
            before = dict(reasons)
            yield reasons
            if reasons != before:
                self._replace(reasons)
        finally:
            os.close(lock)

    def _replace(self, reasons: dict[str, str]) -> None:
        if not reasons:
            self.path.unlink(missing_ok=True)
            return
        text = json.dumps(reasons, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
        replace_privately(self.path, text.encode())


class TypePauses(NamedPauses):
    """The session types whose new sessions are paused alone (``paused-types.json``)."""

    kind = "type"
    file_name = TYPE_PAUSES_FILE_NAME


class NodePauses(NamedPauses):
    """The nodes on which no new session starts (``paused-nodes.json``)."""

    kind = "node"
    file_name = NODE_PAUSES_FILE_NAME


def _parsed(text: str) -> dict[str, str]:
    """The pauses in ``text``.

    Raises:
        ValueError: not a JSON object of strings.
    """
    found = json.loads(text)
    if not isinstance(found, dict) or not all(
        isinstance(name, str) and isinstance(reason, str) for name, reason in found.items()
    ):
        raise ValueError("expected a JSON object of names and reasons")
    return {name: clean_message(reason) or DEFAULT_REASON for name, reason in found.items()}
