"""Failed logins slow password guessing down, on every login form (the portal's and the admin's).

An account that fails ``failures`` times from one client address within ``window`` seconds
accepts no further attempt from that address until the oldest of those failures is
``window`` seconds old; the password is not even checked meanwhile. An address that fails ten
times as often within the window, whatever the accounts, is refused the same way, which slows
guessing one common password across many accounts. The account itself is never locked:
someone guessing from elsewhere cannot keep its owner out. A successful login forgets that
account's failures from that address. The counting is :mod:`vizgate.login_throttle`'s.

The counts live in the gateway's memory (it is one process), so a restart forgets them. The
client address is the one uvicorn reports, which is the ``X-Forwarded-For`` of a reverse proxy
only where uvicorn trusts it (``FORWARDED_ALLOW_IPS``, 127.0.0.1 and ::1 by default).
"""

from __future__ import annotations

import logging
import math
from typing import Any

from django import forms
from django.contrib.auth.backends import ModelBackend
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest

from vizgate.login_throttle import LoginThrottle

__all__ = [
    "ThrottledLoginMixin",
    "ThrottledModelBackend",
    "client_address",
    "configure",
    "login_throttle",
]

logger = logging.getLogger(__name__)

#: The throttle of this process; ``vizgate serve`` sets its limits with :func:`configure`.
login_throttle = LoginThrottle()


def configure(failures: int, window: float) -> None:
    """Set the limits of :data:`login_throttle` (``vizgate serve --login-failures/-window``)."""
    global login_throttle
    login_throttle = LoginThrottle(failures, window)


def client_address(request: HttpRequest | None) -> str:
    """The client's address as the server reports it (``-`` when unknown)."""
    if request is None:
        return "-"
    return str(request.META.get("REMOTE_ADDR") or "-")


class ThrottledModelBackend(ModelBackend):
    """Django's username/password backend behind :data:`login_throttle`: a refused attempt is
    not checked at all, and every checked one is counted."""

    def authenticate(
        self,
        request: HttpRequest | None,
        username: str | None = None,
        password: str | None = None,
        **kwargs: Any,
    ) -> Any:
        if username is None or password is None:
            return None
        address = client_address(request)
        if login_throttle.retry_after(username, address) > 0:
            # Stops django.contrib.auth.authenticate() at once: no other backend is asked.
            raise PermissionDenied("too many failed logins")
        user = super().authenticate(request, username=username, password=password, **kwargs)
        if user is None:
            if login_throttle.failed(username, address):
                logger.warning(
                    "logins of %r from %s refused for %d s: %d failed within %d s",
                    username,
                    address,
                    math.ceil(login_throttle.retry_after(username, address)),
                    login_throttle.failures,
                    round(login_throttle.window),
                )
        else:
            login_throttle.succeeded(username, address)
        return user


class ThrottledLoginMixin(forms.Form):
    """For a Django ``AuthenticationForm``: says so when attempts are refused for now, instead
    of "wrong password" (which would make its owner doubt the right one)."""

    request: HttpRequest | None

    def clean(self) -> dict[str, Any]:
        username = self.cleaned_data.get("username")
        if username:
            wait = login_throttle.retry_after(username, client_address(self.request))
            if wait > 0:
                minutes = max(1, math.ceil(wait / 60))
                raise forms.ValidationError(
                    "Too many failed logins for this account from your address. "
                    f"Try again in {minutes} minute{'s' if minutes > 1 else ''}.",
                    code="throttled",
                )
        cleaned = super().clean()
        return cleaned if cleaned is not None else self.cleaned_data
