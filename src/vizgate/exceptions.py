"""The one error tree of vizgate.

Errors are raised with plain messages inside the library and translated to HTTP statuses or
WebSocket close codes only at the edge (``web`` and ``tunnel``). No message ever contains a
token or a password.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "ConfigError",
    "ConfigProblem",
    "DatabaseSetupError",
    "ReservationError",
    "ScriptError",
    "StartError",
    "TunnelError",
    "VizgateError",
]


class VizgateError(Exception):
    """Base class of every error vizgate raises on purpose."""


@dataclass(frozen=True)
class ConfigProblem:
    """One problem found in a configuration file.

    Attributes:
        file: the file the problem is in.
        key_path: where in the file, e.g. ``"Local Software Session" > options > sizes[0]``;
            empty when the problem concerns the whole file.
        message: what is wrong, for a person.
    """

    file: str
    key_path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.key_path}" if self.key_path else self.file
        return f"{where}: {self.message}"


class ConfigError(VizgateError):
    """The session catalog cannot be used; carries every problem found, not only the first."""

    def __init__(self, problems: Sequence[ConfigProblem]) -> None:
        if not problems:
            raise ValueError("ConfigError needs at least one problem")
        self.problems: tuple[ConfigProblem, ...] = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    @property
    def file(self) -> str:
        return self.problems[0].file

    @property
    def key_path(self) -> str:
        return self.problems[0].key_path


class ScriptError(VizgateError):
    """A session script could not be loaded or realized."""


class ReservationError(VizgateError):
    """A reservation was refused.

    Attributes:
        reason: a short label for metrics and HTTP mapping: ``unknown_type``, ``no_free_instance``,
            ``user_limit``, ``forbidden``, ``bad_option``, ``unknown_token``.
    """

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class StartError(VizgateError):
    """A session failed to start.

    Attributes:
        user_message: what the person in front of the browser is told.
        reason: a short label (``start_failed``, ``start_timeout``, ...).
        log_message: the details for the admin's log (never a secret).
    """

    def __init__(self, user_message: str, *, reason: str, log_message: str | None = None) -> None:
        super().__init__(user_message)
        self.user_message = user_message
        self.reason = reason
        self.log_message = log_message or user_message


class TunnelError(VizgateError):
    """The relay between a WebSocket and a VNC server failed."""


class DatabaseSetupError(VizgateError):
    """The gateway's database cannot be used: a bad ``VIZGATE_DATABASE_URL``, a missing driver,
    a server that refuses or cannot be reached. The message says why, never with the password."""
