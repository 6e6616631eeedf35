"""What a trusted reverse proxy says about a request: where it came from, over what, and who.

uvicorn reads ``X-Forwarded-For`` and ``X-Forwarded-Proto`` from the peers ``FORWARDED_ALLOW_IPS``
names (127.0.0.1 and ::1 by default). With single sign-on (:mod:`vizgate.web.single_sign_on`) the
proxy also names the user, and the groups, in headers of its own: :class:`IdentityHeaderGuard`
removes those headers from requests of every other peer before anything reads them, so a
browser that reaches the gateway directly cannot name itself. Spellings with ``_`` for ``-``
are always removed (Django reads ``X_Remote_User`` as ``X-Remote-User``, and proxies pass them
on), and a header a trusted proxy sent twice is not believed at all: the proxy must replace
what the browser sent, not add to it.

This module does not need Django: the server checks the header names before Django is set up.
"""

from __future__ import annotations

import argparse
import functools
import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

__all__ = [
    "IdentityHeaderGuard",
    "SingleSignOn",
    "account_name",
    "add_single_sign_on_arguments",
    "header_name_problem",
    "logout_url_problem",
    "single_sign_on_of",
    "trusted_proxy_layers",
    "user_pattern_problem",
]

logger = logging.getLogger(__name__)

_HEADER_NAME = re.compile(r"[A-Za-z0-9]+(?:-[A-Za-z0-9]+)*")
#: Headers a gateway must never take an identity from: they mean something else on the way.
_RESERVED_HEADERS: Final = frozenset(
    {"authorization", "cookie", "host", "origin", "upgrade", "connection", "content-type",
     "content-length", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"}
)  # fmt: skip

#: Addresses warned about (a misconfigured proxy), so that a flood logs a bounded number of lines.
_MAX_WARNED_ADDRESSES: Final = 64

ASGIApp = Callable[[dict[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
                   Awaitable[None]]  # fmt: skip


def header_name_problem(name: str) -> str | None:
    """Why ``name`` cannot carry an identity (None if it can): letters, digits and single
    ``-`` between them, as proxies pass headers on, and none that means something else."""
    if not _HEADER_NAME.fullmatch(name):
        return f"{name!r} is not a header name of letters and digits joined by '-'"
    if name.lower() in _RESERVED_HEADERS:
        return f"{name!r} already means something else to browsers and proxies"
    return None


def trusted_proxy_layers(
    app: ASGIApp, trusted_hosts: str | list[str], identity_headers: Iterable[str] = ()
) -> ASGIApp:
    """``app`` behind what reads a trusted proxy's headers (the server adds no layer of its own).

    uvicorn's ``X-Forwarded-*`` handling (:class:`ProxyHeadersMiddleware`) for the peers
    ``trusted_hosts`` names (``FORWARDED_ALLOW_IPS``), and around it, when there are
    ``identity_headers``, an :class:`IdentityHeaderGuard` with the same trust: it must see the
    proxy's own address, which uvicorn's layer replaces with the browser's.
    """
    forwarded = ProxyHeadersMiddleware(app, trusted_hosts)  # type: ignore[arg-type]
    names = list(identity_headers)
    if not names:
        return forwarded  # type: ignore[return-value]
    return IdentityHeaderGuard(forwarded, names, forwarded.trusted_hosts)  # type: ignore[arg-type]


class IdentityHeaderGuard:
    """Remove identity headers that do not come from a trusted proxy (an ASGI middleware).

    Args:
        app: the application, normally wrapped in :class:`ProxyHeadersMiddleware`, whose
            ``trusted_hosts`` decide which peers are proxies.
        headers: the identity headers' names.
        trusted_hosts: uvicorn's trusted hosts (``ProxyHeadersMiddleware.trusted_hosts``):
            ``address in trusted_hosts`` says whether a peer is a trusted proxy.
    """

    def __init__(self, app: ASGIApp, headers: Iterable[str], trusted_hosts: Any) -> None:
        self.app = app
        self.names = frozenset(name.lower().encode("latin-1") for name in headers)
        self.trusted_hosts = trusted_hosts
        self._warned: set[str] = set()

    async def __call__(
        self,
        scope: dict[str, Any],
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        if scope["type"] in ("http", "websocket"):
            scope = self._guarded(scope)
        await self.app(scope, receive, send)

    def _guarded(self, scope: dict[str, Any]) -> dict[str, Any]:
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        names = self.names
        found = [(raw, value) for raw, value in headers if raw.lower().replace(b"_", b"-") in names]
        if not found:
            return scope
        client = scope.get("client")
        peer = client[0] if client else None
        trusted = peer in self.trusted_hosts
        kept: set[bytes] = set()
        if trusted:
            exact = [raw.lower() for raw, _ in found if b"_" not in raw]
            kept = {name for name in exact if exact.count(name) == 1}
            if len(kept) != len(exact):
                logger.warning(
                    "a request from the proxy at %s carried an identity header twice; "
                    "not believed (the proxy must replace what the browser sent)",
                    peer,
                )
        elif peer is not None and peer not in self._warned:
            self._warn_untrusted(peer)
        scope = dict(scope)
        scope["headers"] = [
            (raw, value)
            for raw, value in headers
            if raw.lower().replace(b"_", b"-") not in names or raw.lower() in kept
        ]
        return scope

    def _warn_untrusted(self, peer: str) -> None:
        if len(self._warned) >= _MAX_WARNED_ADDRESSES:
            return
        self._warned.add(peer)
        logger.warning(
            "identity headers from %s ignored: it is not a trusted proxy (FORWARDED_ALLOW_IPS)",
            peer,
        )


# ---------------------------------------------------------------------------------------------
# The server's options


@dataclass(frozen=True)
class SingleSignOn:
    """How a trusted proxy names the signed-in user (``vizgate serve --remote-user-header``).

    Attributes:
        user_header: the header that holds the user's name.
        groups_header: the header that lists the user's groups, or "" to manage groups in
            vizgate.
        groups_separator: what separates the groups in it.
        create_users: create the account of a user at the first visit (else refuse users
            without one).
        admin_group: the group in the groups header that makes its members administrators,
            or "" to manage administrators in vizgate.
        user_pattern: what the user header's value must match, its group ``user`` naming the
            account (:func:`account_name`), or "" to take the value as it is.
        lowercase: the account is that name in lower case.
    """

    user_header: str
    groups_header: str = ""
    groups_separator: str = ","
    create_users: bool = True
    admin_group: str = ""
    user_pattern: str = ""
    lowercase: bool = False

    @property
    def headers(self) -> list[str]:
        """The identity headers, which only trusted proxies may send."""
        return [name for name in (self.user_header, self.groups_header) if name]

    def environment(self) -> dict[str, str]:
        """The settings' environment variables (:mod:`vizgate.web.settings`)."""
        return {
            "VIZGATE_REMOTE_USER_HEADER": self.user_header,
            "VIZGATE_REMOTE_GROUPS_HEADER": self.groups_header,
            "VIZGATE_REMOTE_GROUPS_SEPARATOR": self.groups_separator,
            "VIZGATE_REMOTE_USER_CREATE": "1" if self.create_users else "0",
            "VIZGATE_REMOTE_ADMIN_GROUP": self.admin_group,
            "VIZGATE_REMOTE_USER_PATTERN": self.user_pattern,
            "VIZGATE_REMOTE_USER_LOWERCASE": "1" if self.lowercase else "",
        }


def add_single_sign_on_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``vizgate serve``'s single sign-on options on ``parser``."""
    group = parser.add_argument_group(
        "single sign-on through an authenticating reverse proxy",
        "The proxy's headers count only on connections from the addresses in "
        "FORWARDED_ALLOW_IPS (default: 127.0.0.1,::1).",
    )
    group.add_argument(
        "--remote-user-header",
        metavar="NAME",
        default="",
        help="the header in which the proxy names the signed-in user, e.g. X-Remote-User",
    )
    group.add_argument(
        "--remote-user-pattern",
        metavar="REGEX",
        default="",
        help="what the user header's whole value must match (others are refused); its group "
        "named 'user' is the account, e.g. '(?P<user>[^@]+)@EXAMPLE\\.ORG' makes "
        "alice@EXAMPLE.ORG the account alice (default: the value is the account)",
    )
    group.add_argument(
        "--remote-user-lowercase",
        action="store_true",
        help="make that account name lower case, so that Alice and alice are one account "
        "(for identity providers that pass names as the user typed them)",
    )
    group.add_argument(
        "--remote-groups-header",
        metavar="NAME",
        default="",
        help="the header in which the proxy lists the user's groups; membership of vizgate's "
        "groups then follows it (default: groups are managed in vizgate)",
    )
    group.add_argument(
        "--remote-groups-separator",
        metavar="TEXT",
        default=",",
        help="what separates the groups in that header (default: %(default)s)",
    )
    group.add_argument(
        "--remote-admin-group",
        metavar="NAME",
        default="",
        help="the group in the groups header whose members are administrators (and who "
        "are not, are not); default: administrators are made in vizgate",
    )
    group.add_argument(
        "--no-create-remote-users",
        dest="create_remote_users",
        action="store_false",
        help="refuse users the proxy names who have no vizgate account (default: create it)",
    )
    parser.add_argument(
        "--logout-url",
        metavar="URL",
        default="",
        help="where the browser goes after logging out of the portal, e.g. the proxy's own "
        "logout (default: the login page)",
    )


def single_sign_on_of(args: argparse.Namespace, trusted_hosts: str) -> SingleSignOn | None:
    """The single sign-on ``args`` ask for (None for none), checked.

    Args:
        args: parsed by a parser :func:`add_single_sign_on_arguments` prepared.
        trusted_hosts: the proxies uvicorn trusts (``FORWARDED_ALLOW_IPS``).

    Raises:
        ValueError: what is wrong with the options, for the admin.
    """
    user_header: str = args.remote_user_header.strip()
    groups_header: str = args.remote_groups_header.strip()
    admin_group: str = args.remote_admin_group.strip()
    if admin_group and not groups_header:
        raise ValueError("--remote-admin-group needs --remote-groups-header")
    if not user_header:
        if groups_header:
            raise ValueError("--remote-groups-header needs --remote-user-header")
        if not args.create_remote_users:
            raise ValueError("--no-create-remote-users needs --remote-user-header")
        if args.remote_user_pattern:
            raise ValueError("--remote-user-pattern needs --remote-user-header")
        if args.remote_user_lowercase:
            raise ValueError("--remote-user-lowercase needs --remote-user-header")
        return None
    for option, name in (
        ("--remote-user-header", user_header),
        ("--remote-groups-header", groups_header),
    ):
        problem = header_name_problem(name) if name else None
        if problem is not None:
            raise ValueError(f"{option}: {problem}")
    if groups_header and groups_header.lower() == user_header.lower():
        raise ValueError("--remote-user-header and --remote-groups-header name the same header")
    if not args.remote_groups_separator.strip():
        raise ValueError("--remote-groups-separator is empty")
    pattern_problem = user_pattern_problem(args.remote_user_pattern)
    if pattern_problem is not None:
        raise ValueError(f"--remote-user-pattern: {pattern_problem}")
    everyone = {"*", "0.0.0.0/0", "::/0"}
    if everyone & {host.strip() for host in trusted_hosts.split(",")}:
        raise ValueError(
            f"FORWARDED_ALLOW_IPS ({trusted_hosts}) trusts every address: any client could "
            f"name itself in {user_header}; list the proxies' addresses instead"
        )
    return SingleSignOn(
        user_header,
        groups_header,
        args.remote_groups_separator.strip(),
        args.create_remote_users,
        admin_group,
        args.remote_user_pattern,
        args.remote_user_lowercase,
    )


def user_pattern_problem(pattern: str) -> str | None:
    """Why ``pattern`` cannot be ``--remote-user-pattern`` (None if it can)."""
    if not pattern:
        return None
    try:
        compiled = _compiled(pattern)
    except re.error as exc:
        return f"{pattern!r} is not a regular expression: {exc}"
    if compiled.groups and "user" not in compiled.groupindex:
        return (
            f"{pattern!r} has groups but none named 'user' to say which part is the account; "
            "write (?P<user>...) around it"
        )
    return None


def account_name(value: str, pattern: str, *, lowercase: bool = False) -> str | None:
    """The vizgate account a proxy's user header names.

    Without ``pattern`` it is the value itself (stripped). With one, the whole value must match
    it: the account is the match's group ``user``, or the whole value when the pattern has no
    groups; None when it does not match (the proxy named someone this gateway does not serve,
    e.g. a user of another realm). With ``lowercase``, the account is that name in lower case
    (the pattern still sees the value as sent).
    """
    value = value.strip()
    name: str | None = value
    if pattern:
        match = _compiled(pattern).fullmatch(value)
        if match is None:
            return None
        if "user" in match.re.groupindex:
            # An optional group that took no part in the match is None: an empty name, which
            # accounts refuse.
            name = match.group("user") or ""
    return name.lower() if lowercase and name is not None else name


@functools.lru_cache(maxsize=8)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def logout_url_problem(url: str) -> str | None:
    """Why ``url`` cannot be ``--logout-url`` (None if it can): an http(s) URL or a path."""
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme in ("http", "https") and parts.netloc:
        return None
    if not parts.scheme and not parts.netloc and url.startswith("/"):
        return None
    return f"{url!r} is neither an http(s) URL nor a path starting with '/'"
