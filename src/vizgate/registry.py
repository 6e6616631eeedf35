"""Where the broker keeps its sessions: the live ones, by token hash, public id and instance,
and the last ones that ended."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Collection, Iterator

from vizgate.live import LiveSession
from vizgate.sessions import SessionInfo

__all__ = ["HISTORY_LENGTH", "SessionRegistry"]

#: How many ended sessions are remembered for status pages.
HISTORY_LENGTH = 100


class SessionRegistry:
    """The live sessions of a broker and the instances they hold.

    An instance index is held from :meth:`add` until :meth:`remove`, so no two live sessions
    share one. :attr:`all_ended` is set whenever no session is live.
    """

    def __init__(self, history_length: int = HISTORY_LENGTH) -> None:
        self._holders: dict[str, list[LiveSession | None]] = {}
        self._by_hash: dict[str, LiveSession] = {}
        self._by_id: dict[str, LiveSession] = {}
        # By type, the instances whose start() failed and when (the broker's clock).
        self._failed_at: dict[str, dict[int, float]] = {}
        self._history: deque[SessionInfo] = deque(maxlen=history_length)
        self.all_ended = asyncio.Event()
        self.all_ended.set()

    def add_type(self, name: str, count: int) -> None:
        """Make room for the ``count`` instances of session type ``name``."""
        self._holders[name] = [None] * count

    def free_index(
        self, name: str, now: float = 0.0, rest: float = 0.0, passed_over: Collection[int] = ()
    ) -> int | None:
        """The lowest index of type ``name`` no live session holds and not ``passed_over`` (on
        a paused node), or None.

        An instance whose ``start()`` failed less than ``rest`` seconds before ``now`` is passed
        over while another is free: in a pool of nodes, one that is down would otherwise take
        every next user's launch (and every retry). When only resting ones are free, the one
        that failed longest ago is tried again rather than refusing the user.
        """
        resting = self.resting(name, now, rest)
        if not resting and not passed_over:
            holders = self._holders[name]
            return holders.index(None) if None in holders else None
        free = [index for index in self.free_indexes(name) if index not in passed_over]
        if not free:
            return None
        rested = [index for index in free if index not in resting]
        if rested:
            return rested[0]
        return max(free, key=resting.__getitem__)

    def free_indexes(self, name: str) -> list[int]:
        """Every index of type ``name`` no live session holds."""
        return [index for index, holder in enumerate(self._holders[name]) if holder is None]

    def start_failed(self, name: str, index: int, now: float) -> None:
        """The instance ``index`` of type ``name`` failed to start at ``now``."""
        self._failed_at.setdefault(name, {})[index] = now

    def started(self, name: str, index: int) -> None:
        """The instance ``index`` of type ``name`` started: it rests no more."""
        failed = self._failed_at.get(name)
        if failed:
            failed.pop(index, None)

    def resting(self, name: str, now: float, rest: float) -> dict[int, float]:
        """The instances of type ``name`` that failed to start less than ``rest`` seconds before
        ``now``, with how many seconds ago."""
        return {
            index: now - at
            for index, at in self._failed_at.get(name, {}).items()
            if now - at < rest
        }

    def in_use(self, name: str) -> int:
        """How many instances of type ``name`` live sessions hold."""
        return sum(holder is not None for holder in self._holders.get(name, ()))

    def add(self, session: LiveSession) -> None:
        """A new live session, holding its instance."""
        self._holders[session.service.name][session.index] = session
        self._by_hash[session.token_hash] = session
        self._by_id[session.id] = session
        self.all_ended.clear()

    def remove(self, session: LiveSession, ended: SessionInfo) -> None:
        """``session`` has ended (``ended`` is how it looked then): its instance is free."""
        holders = self._holders[session.service.name]
        if holders[session.index] is session:
            holders[session.index] = None
        self._by_hash.pop(session.token_hash, None)
        self._by_id.pop(session.id, None)
        self._history.append(ended)
        if not self._by_hash:
            self.all_ended.set()

    def by_token_hash(self, token_hash: str) -> LiveSession | None:
        return self._by_hash.get(token_hash)

    def by_id(self, session_id: str) -> LiveSession | None:
        return self._by_id.get(session_id)

    def __iter__(self) -> Iterator[LiveSession]:
        """The live sessions, oldest first (a copy: the caller may end them meanwhile)."""
        return iter(list(self._by_hash.values()))

    def __len__(self) -> int:
        return len(self._by_hash)

    def history(self) -> list[SessionInfo]:
        """The last ended sessions, newest first."""
        return list(reversed(self._history))
