"""Session snapshots (:class:`vizgate.sessions.SessionInfo`) for unit tests, built field by field
from one plain default so that each test names only what it is about."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from vizgate.sessions import SessionInfo

__all__ = ["session_info"]

_DEFAULT = SessionInfo(
    id="0123456789abcdef",
    token_prefix="abcdef",
    service="Local Software Session",
    index=0,
    user="bob",
    size="1024x768",
    state="reserved",
    connections=0,
    host=None,
    port=None,
    created=0.0,
    started=None,
    ended=None,
    end_reason=None,
    message="",
    bytes_to_client=0,
    bytes_to_server=0,
    stop_timed_out=False,
)


def session_info(**changes: Any) -> SessionInfo:
    """A snapshot of a reserved session of bob's, with ``changes`` to its fields."""
    return replace(_DEFAULT, **changes)
