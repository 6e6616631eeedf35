"""How many sessions one user may hold at once: per session type (``options.max_per_user``) and
over all types (``vizgate serve --max-sessions-per-user``).

A session counts from its reservation until its stop begins: one that is ending does not keep
its user from starting another. Sessions reserved without a user name are not counted (there
is nobody to count them against), and the broker's caller decides who is exempt
(administrators, in the portal and the API).
"""

from __future__ import annotations

from collections.abc import Iterable

from vizgate.catalog import MAX_PER_USER_OPTION, ServiceType
from vizgate.exceptions import ReservationError
from vizgate.lifecycle import State
from vizgate.live import LiveSession

__all__ = ["check_user_limits"]

_ENDING = frozenset({State.CANCELLING, State.STOPPING, State.ENDED})


def check_user_limits(
    sessions: Iterable[LiveSession], service: ServiceType, user: str, total: int | None
) -> None:
    """Refuse a new session of ``service`` for ``user`` when it would pass a limit.

    Args:
        sessions: the broker's live sessions.
        service: the type asked for.
        user: who asks.
        total: the most sessions one user may hold over all types; None for no limit.

    Raises:
        ReservationError: ``user_limit``, saying which limit and how to get under it.
    """
    held = [s for s in sessions if s.user == user and s.lifecycle.state not in _ENDING]
    per_type = service.options.get(MAX_PER_USER_OPTION)
    if per_type is not None:
        of_type = sum(1 for s in held if s.service.name == service.name)
        if of_type >= per_type:
            raise ReservationError(
                f"{user} already has {_sessions(of_type)} of {service.name!r}, the most one "
                "user may have of it at once; end one first",
                reason="user_limit",
            )
    if total is not None and len(held) >= total:
        raise ReservationError(
            f"{user} already has {_sessions(len(held))}, the most one user may have at once; "
            "end one first",
            reason="user_limit",
        )


def _sessions(count: int) -> str:
    return f"{count} session{'s' if count != 1 else ''}"
