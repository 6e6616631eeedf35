"""What the running server hands to the Django views: the broker, the security token, a stop.

The server process owns one broker on its event loop; the ``/v1`` views run on that same loop
and reach it here. :func:`configure` is called by the server before it serves, the broker is
published by the ASGI lifespan once it is open (:func:`set_broker`) and withdrawn before it
closes, so a view never sees a broker that is not running.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vizgate.broker import Broker

__all__ = [
    "BrokerUnavailable",
    "configure",
    "get_broker",
    "get_security_token",
    "request_stop",
    "reset",
    "set_broker",
]


class BrokerUnavailable(RuntimeError):
    """No broker runs in this process (the server is starting or stopping)."""


@dataclass
class _Runtime:
    broker: Broker | None = None
    security_token: str | None = None
    stop: Callable[[], None] | None = None


_runtime = _Runtime()


def configure(
    *, security_token: str | None = None, request_stop: Callable[[], None] | None = None
) -> None:
    """Set what the server decided at start-up.

    Args:
        security_token: the token every ``/v1`` call must carry; None for no guard.
        request_stop: asks the server to stop gracefully (``/v1/stop``).
    """
    _runtime.security_token = security_token or None
    _runtime.stop = request_stop


def set_broker(broker: Broker | None) -> None:
    """Publish the open broker (or withdraw it with None)."""
    _runtime.broker = broker


def get_broker() -> Broker:
    """The broker of this process.

    Raises:
        BrokerUnavailable: the server is not running (yet, or any more).
    """
    broker = _runtime.broker
    if broker is None:
        raise BrokerUnavailable("the session broker is not running")
    return broker


def get_security_token() -> str | None:
    """The security token the ``/v1`` API requires, or None when it is open."""
    return _runtime.security_token


def request_stop() -> bool:
    """Ask the server to stop gracefully.

    Returns:
        False when this process has no server to stop.
    """
    if _runtime.stop is None:
        return False
    _runtime.stop()
    return True


def reset() -> None:
    """Forget everything (the server has stopped)."""
    _runtime.broker = None
    _runtime.security_token = None
    _runtime.stop = None
