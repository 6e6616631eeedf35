"""Counting failed logins per account and client address over a sliding window, sans I/O.

:class:`LoginThrottle` is what :mod:`vizgate.web.portal.throttle` puts in front of every
password check; it knows nothing of Django, requests or clocks other than the one it is given.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

__all__ = ["ADDRESS_FACTOR", "DEFAULT_FAILURES", "DEFAULT_WINDOW", "LoginThrottle"]

#: Failed logins of one account from one address that the window allows.
DEFAULT_FAILURES = 5
#: The window, in seconds.
DEFAULT_WINDOW = 15 * 60.0
#: An address may fail this many times more often than one account, over all accounts.
ADDRESS_FACTOR = 10
# Keys kept at most; beyond it, keys whose failures are all out of the window are dropped.
_MAX_KEYS = 100_000


class LoginThrottle:
    """Counts failed logins per (account, address) and per address over a sliding window.

    Args:
        failures: failures of one account from one address that are allowed; 0 turns the
            throttle off.
        window: seconds a failure counts for.
        clock: monotonic seconds (for tests).
    """

    def __init__(
        self,
        failures: int = DEFAULT_FAILURES,
        window: float = DEFAULT_WINDOW,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failures < 0 or window <= 0:
            raise ValueError("failures must be >= 0 and the window > 0 seconds")
        self.failures = failures
        self.window = window
        self._clock = clock
        self._lock = threading.Lock()
        self._times: dict[tuple[str, str], deque[float]] = {}

    def retry_after(self, username: str, address: str) -> float:
        """Seconds until ``username`` may try to log in from ``address`` again; 0 for now."""
        if not self.failures:
            return 0.0
        now = self._clock()
        with self._lock:
            return max(
                self._wait(key, allowed, now) for key, allowed in self._limits(username, address)
            )

    def failed(self, username: str, address: str) -> bool:
        """Count a failed login. Returns True when this failure locks the account out at
        that address (or the address out)."""
        if not self.failures:
            return False
        now = self._clock()
        with self._lock:
            if len(self._times) >= _MAX_KEYS:
                self._forget_expired(now)
            locked = False
            for key, allowed in self._limits(username, address):
                times = self._times.setdefault(key, deque())
                times.append(now)
                while len(times) > allowed:
                    times.popleft()
                locked = locked or self._wait(key, allowed, now) > 0
            return locked

    def succeeded(self, username: str, address: str) -> None:
        """Forget the account's failures from that address."""
        with self._lock:
            self._times.pop((username, address), None)

    def _limits(self, username: str, address: str) -> tuple[tuple[tuple[str, str], int], ...]:
        """The counts a login attempt is held to: (key, failures allowed) of the account at
        that address, and of the address over all accounts."""
        return (
            ((username, address), self.failures),
            (("", address), self.failures * ADDRESS_FACTOR),
        )

    def _wait(self, key: tuple[str, str], allowed: int, now: float) -> float:
        times = self._times.get(key)
        if times is None:
            return 0.0
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._times[key]
            return 0.0
        if len(times) < allowed:
            return 0.0
        return times[0] + self.window - now

    def _forget_expired(self, now: float) -> None:
        for key in list(self._times):
            times = self._times[key]
            if not times or times[-1] <= now - self.window:
                del self._times[key]
        while len(self._times) >= _MAX_KEYS:
            # Still full of live keys (many addresses at once): the oldest entries go first.
            del self._times[next(iter(self._times))]
