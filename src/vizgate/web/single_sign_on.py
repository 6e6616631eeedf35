"""Single sign-on: the user an authenticating reverse proxy names in a request header.

Sites put the gateway behind a proxy that authenticates their users with the site's own
identity (Apache with ``mod_auth_openidc``, ``mod_auth_mellon`` or Kerberos, nginx with
``oauth2-proxy``, ...). The proxy passes the user's name in a header of every request it
forwards (``vizgate serve --remote-user-header X-Remote-User``) and, optionally, the user's
groups (``--remote-groups-header X-Remote-Groups``):

* **Trust.** The headers are believed only on connections from the proxies uvicorn trusts for
  ``X-Forwarded-*`` (``FORWARDED_ALLOW_IPS``, 127.0.0.1 and ::1 by default). From any other address,
  :class:`IdentityHeaderGuard` removes them before anything reads them, so a browser that
  reaches the gateway directly cannot name itself. Spellings with ``_`` for ``-`` are always
  removed (Django reads ``X_Remote_User`` as ``X-Remote-User``), and a header given twice is
  not believed at all.
* **Accounts.** :class:`SingleSignOnMiddleware` logs the named user in, creating the account
  at its first visit (with no usable password: it signs in through the proxy only), unless
  ``--no-create-remote-users`` leaves account creation to the administrator. A different name
  in the header ends the portal session of the previous one. Requests without the header are
  left as they are: an administrator may keep a local password login for when the proxy's
  identity provider is down.
* **Names.** The header's value is the account's name, unless ``--remote-user-pattern`` says
  which part of it is: ``(?P<user>[^@]+)@EXAMPLE\\.ORG`` makes the Kerberos principal
  ``alice@EXAMPLE.ORG`` the account ``alice`` (the name of her Unix account, which Slurm
  sessions run as with ``"run_as": "user"``) and refuses users of other realms;
  ``--remote-user-lowercase`` makes ``Alice`` and ``alice`` one account.
* **Groups.** With a groups header, the user's membership of vizgate's groups follows it
  whenever its value changes: a user is in exactly those of vizgate's groups that the header
  names. Groups vizgate does not have are ignored (a directory has many groups; the catalog
  gates on a few, created with ``vizgate group add``), and memberships given in vizgate are
  replaced. Without a groups header, groups are managed in vizgate. With
  ``--remote-admin-group``, the users the header puts in that group are administrators and
  the others are not.
* **Logging out** of the portal while the proxy's own session lasts would sign the user
  straight back in; ``--logout-url`` sends the browser on to the proxy's or the identity
  provider's logout instead.

The tunnel's authorizer (:mod:`vizgate.web.portal.auth`) refuses a portal cookie whose user is
not the one the header names, as happens when someone else signs in at the proxy in the same
browser.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

from asgiref.sync import markcoroutinefunction
from django.conf import settings
from django.contrib import auth
from django.contrib.auth.backends import RemoteUserBackend
from django.contrib.auth.models import AnonymousUser, Group, User
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import render

from vizgate.web.proxy_trust import account_name

__all__ = [
    "GROUPS_SESSION_KEY",
    "SingleSignOnBackend",
    "SingleSignOnMiddleware",
    "meta_key",
    "split_groups",
    "username_problem",
]

logger = logging.getLogger(__name__)

#: The groups header's value at the last synchronisation, in the portal session.
GROUPS_SESSION_KEY: Final = "vizgate.remote_groups"


def meta_key(header: str) -> str:
    """Where Django's ``request.META`` holds ``header``."""
    return "HTTP_" + header.upper().replace("-", "_")


def split_groups(value: str, separator: str) -> frozenset[str]:
    """The group names in a groups header (blanks ignored)."""
    return frozenset(name for name in (part.strip() for part in value.split(separator)) if name)


def username_problem(name: str) -> str | None:
    """Why ``name`` cannot be a vizgate user name (None if it can)."""
    if not name:
        return "the name is empty"
    try:
        User._meta.get_field("username").run_validators(name)
    except ValidationError as exc:
        return " ".join(exc.messages)
    return None


class SingleSignOnBackend(RemoteUserBackend):
    """Django's remote-user backend: accounts created at the first visit unless the server
    was told not to (``VIZGATE_REMOTE_USER_CREATE``), and never with a usable password."""

    def __init__(self) -> None:
        super().__init__()
        self.create_unknown_user = settings.VIZGATE_REMOTE_USER_CREATE

    def configure_user(self, request: HttpRequest | None, user: Any, created: bool = True) -> Any:
        if created:
            user.set_unusable_password()
            user.save(update_fields=["password"])
            logger.info("created the account %s at its first single sign-on", user.get_username())
        return user


_Handler = Callable[[HttpRequest], Awaitable[HttpResponseBase]]


class SingleSignOnMiddleware:
    """Log in the user the trusted proxy names (see the module's documentation); after
    Django's ``AuthenticationMiddleware``."""

    sync_capable = False
    async_capable = True

    def __init__(self, get_response: _Handler) -> None:
        self.get_response = get_response
        # Django tells async middleware by this mark (its own async middleware set it too).
        markcoroutinefunction(self)
        self.user_key = meta_key(settings.VIZGATE_REMOTE_USER_HEADER)
        groups_header = settings.VIZGATE_REMOTE_GROUPS_HEADER
        self.groups_key = meta_key(groups_header) if groups_header else None
        self.separator = settings.VIZGATE_REMOTE_GROUPS_SEPARATOR
        self.admin_group = settings.VIZGATE_REMOTE_ADMIN_GROUP

    async def __call__(self, request: HttpRequest) -> HttpResponseBase:
        value = request.META.get(self.user_key)
        if value is not None:
            refused = await self._sign_in(request, value)
            if refused is not None:
                return refused
        return await self.get_response(request)

    async def _sign_in(self, request: HttpRequest, value: str) -> HttpResponse | None:
        name = account_name(
            value,
            settings.VIZGATE_REMOTE_USER_PATTERN,
            lowercase=settings.VIZGATE_REMOTE_USER_LOWERCASE,
        )
        if name is None:
            logger.warning(
                "single sign-on name %r refused: it does not match --remote-user-pattern", value
            )
            return await _refusal(
                request,
                f"Your account name at the site, “{value.strip()}”, is not one this gateway "
                "serves. Ask the site's administrators for access.",
            )
        problem = username_problem(name)
        if problem is not None:
            logger.warning("single sign-on name %r refused: %s", name, problem)
            return await _refusal(
                request,
                f"Your account name at the site, “{name}”, cannot be a vizgate account: {problem}",
            )
        user = await request.auser()
        if not (user.is_authenticated and user.get_username() == name):
            if user.is_authenticated:
                # Someone else signed in at the proxy in this browser.
                await auth.alogout(request)
                _set_user(request, AnonymousUser())
            signed_in = await auth.aauthenticate(request, remote_user=name)
            if signed_in is None:
                logger.warning("single sign-on of %s refused: no active account", name)
                return await _refusal(
                    request,
                    f"vizgate has no active account for “{name}”. Ask the site's "
                    "administrators for access.",
                )
            await auth.alogin(request, signed_in)
            _set_user(request, signed_in)
            user = signed_in
        if self.groups_key is not None:
            await self._follow_groups(request, user)
        return None

    async def _follow_groups(self, request: HttpRequest, user: Any) -> None:
        value = request.META.get(self.groups_key or "", "")
        if await request.session.aget(GROUPS_SESSION_KEY) == value:
            return
        named = split_groups(value, self.separator)
        groups = [group async for group in Group.objects.filter(name__in=named)]
        await user.groups.aset(groups)
        logger.info(
            "groups of %s follow the single sign-on: %s",
            user.get_username(),
            ", ".join(sorted(group.name for group in groups)) or "none",
        )
        if self.admin_group:
            admin = self.admin_group in named
            if user.is_staff != admin or user.is_superuser != admin:
                user.is_staff = user.is_superuser = admin
                await user.asave(update_fields=["is_staff", "is_superuser"])
                logger.warning(
                    "%s is %s an administrator (%s %s, says the single sign-on)",
                    user.get_username(),
                    "now" if admin else "no longer",
                    "in" if admin else "not in",
                    self.admin_group,
                )
        await request.session.aset(GROUPS_SESSION_KEY, value)


def _set_user(request: HttpRequest, user: Any) -> None:
    """Make ``user`` the request's user for the views: ``request.auser()`` answers what
    Django's authentication middleware cached before the login, unless replaced."""

    async def auser() -> Any:
        return user

    request.user = user
    request.auser = auser


async def _refusal(request: HttpRequest, text: str) -> HttpResponse:
    # The page names the user: resolved here, since the template cannot query the database
    # from the event loop.
    request.user = await request.auser()
    return render(
        request, "portal/message.html", {"title": "Access refused", "text": text}, status=403
    )
