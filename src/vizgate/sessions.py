"""What the outside sees of sessions: reservations, snapshots for status pages, close requests.

None of these holds a secret. A session's public id is derived from its token (a prefix of the
token's SHA-256), so it is stable across restarts and safe to show and log.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from vizgate.lifecycle import EndReason

__all__ = [
    "CloseRequest",
    "NodeInfo",
    "Reservation",
    "ServiceInfo",
    "SessionInfo",
    "ViewerInfo",
    "session_id_of",
    "token_hash",
]


def token_hash(token: str) -> str:
    """What the broker and its store keep of a token: its SHA-256, hex."""
    return hashlib.sha256(token.encode()).hexdigest()


def session_id_of(token: str) -> str:
    """A stable public id for a session, derived from its token; safe to show and log."""
    return token_hash(token)[:16]


@dataclass(frozen=True)
class Reservation:
    """What :meth:`Broker.reserve` hands back. The token is the only secret."""

    token: str = field(repr=False)
    session_id: str
    service: str
    index: int


@dataclass(frozen=True)
class CloseRequest:
    """Why the broker asks a viewer's connection to close."""

    reason: EndReason
    message: str


@dataclass(frozen=True)
class SessionInfo:
    """A snapshot of one session for status pages and APIs (no secrets)."""

    id: str
    token_prefix: str
    service: str
    index: int
    user: str
    size: str
    state: str
    connections: int
    host: str | None
    port: int | None
    created: float
    started: float | None
    ended: float | None
    end_reason: str | None
    message: str
    bytes_to_client: int
    bytes_to_server: int
    stop_timed_out: bool
    progress: str = ""
    bound: bool = False
    ends_at: float | None = None
    ends_because: str | None = None
    watchers: int = 0
    #: The type's launch choices as this session's user picked them: (name, value) pairs.
    choices: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ViewerInfo:
    """One viewer connected to a session, for its owner and administrators.

    Attributes:
        user: the viewer's account when known, else "".
        access: "" for full control, else how it was let in, e.g. ``view only (share 3)``.
        since: when it connected (seconds since the epoch).
    """

    user: str
    access: str
    since: float


@dataclass(frozen=True)
class NodeInfo:
    """A node that session types' instances run on (as their scripts' ``node()`` say), or one
    paused that no instance runs on any more."""

    name: str
    #: The instances on it: (type name, index).
    instances: tuple[tuple[str, int], ...]
    #: How many of them live sessions hold.
    in_use: int
    #: Why no new session starts on it, or None.
    paused: str | None = None


@dataclass(frozen=True)
class ServiceInfo:
    """A snapshot of one session type's pool."""

    name: str
    count: int
    in_use: int
    sizes: tuple[str, ...]
    group: str | None
    #: What users pick at launch: name -> the values offered, the default first.
    choices: Mapping[str, tuple[str, ...]] = field(default_factory=dict, hash=False)
    #: The instances whose ``start()`` failed lately, with how many seconds ago: new sessions
    #: pass them over while another instance is free.
    failed_recently: Mapping[int, float] = field(default_factory=dict, hash=False)
    #: Why new sessions of this type alone are paused, or None.
    paused: str | None = None
    #: Free instances on a paused node (:class:`NodeInfo`): new sessions pass them over.
    free_on_paused_nodes: int = 0
