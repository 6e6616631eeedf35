"""View-only share links: other users of the gateway watch a session until the link expires.

The owner of a session (or an administrator) makes a link on the session's share page. Whoever
opens it must still log in to the gateway: a link that leaks outside the site opens nothing.
Opening it puts a grant in the opener's portal session (server-side, behind the session
cookie) and sends them to the session's viewer, so the secret is in one URL only and never in
a WebSocket URL. The tunnel's authorizer turns the grant into view-only access
(:class:`vizgate.tunnel.Access`): the gateway withholds the viewer's keyboard, pointer,
clipboard and resize messages, whatever the page does, and the session's clipboard from the
viewer (:mod:`vizgate.view_only`, :mod:`vizgate.view_only_server`).

A link ends at its expiry, when it is withdrawn, or with its session. When it ends, the
connections it let in are closed (the tunnel's timer at expiry; :meth:`Broker.revoke_grant`
when withdrawn). Only the SHA-256 of the secret is stored, and the log redacts ``/share/...``.
"""

from __future__ import annotations

import datetime
import hashlib
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from django.db.models import Manager, QuerySet

    from vizgate.web.portal.models import ShareLink

__all__ = [
    "LIFETIMES",
    "SHARES_KEY",
    "ActiveShare",
    "active_shares",
    "create_share",
    "grant_name",
    "live_share",
    "revoke_share",
    "share_of_secret",
]

#: The lifetimes a link may have, in minutes, with their labels.
LIFETIMES: dict[int, str] = {
    15: "15 minutes",
    60: "1 hour",
    240: "4 hours",
    480: "8 hours",
    1440: "24 hours",
}

#: Where a portal session keeps the share links its user opened: session id -> link id.
SHARES_KEY = "vizgate.shares"

_SECRET_BYTES = 24


def _links() -> Manager[ShareLink]:
    # Imported when first used: the tunnel's authorizer imports this module before Django's
    # apps are ready.
    from vizgate.web.portal.models import ShareLink

    return ShareLink.objects


def _working_links() -> QuerySet[ShareLink]:
    """The links that still let viewers in: neither withdrawn nor expired."""
    return _links().filter(revoked__isnull=True, expires__gt=_now())


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def grant_name(link_id: int) -> str:
    """How the broker and the logs name what a link let in."""
    return f"share {link_id}"


@dataclass(frozen=True)
class ActiveShare:
    """A link that still lets viewers in."""

    id: int
    session_id: str
    created_by: str
    expires: datetime.datetime

    @property
    def grant(self) -> str:
        return grant_name(self.id)


def _active(link: ShareLink) -> ActiveShare:
    return ActiveShare(link.pk, link.session_id, link.created_by, link.expires)


async def create_share(session_id: str, created_by: str, minutes: int) -> tuple[ActiveShare, str]:
    """A new link to ``session_id`` lasting ``minutes``; returns it and its secret.

    Raises:
        ValueError: ``minutes`` is not one of :data:`LIFETIMES`.
    """
    if minutes not in LIFETIMES:
        raise ValueError(f"a share link lasts one of {sorted(LIFETIMES)} minutes, not {minutes}")
    secret = secrets.token_urlsafe(_SECRET_BYTES)
    now = _now()
    link = await _links().acreate(
        session_id=session_id,
        secret_hash=_hash(secret),
        created_by=created_by,
        created=now,
        expires=now + datetime.timedelta(minutes=minutes),
    )
    return _active(link), secret


async def share_of_secret(secret: str) -> ActiveShare | None:
    """The link whose secret this is, if it still lets viewers in."""
    if not secret or len(secret) > 100:
        return None
    link = await _working_links().filter(secret_hash=_hash(secret)).afirst()
    return _active(link) if link is not None else None


async def live_share(link_id: object, session_id: str) -> ActiveShare | None:
    """Link ``link_id`` if it is one to ``session_id`` that still lets viewers in."""
    if not isinstance(link_id, int):
        return None
    link = await _working_links().filter(pk=link_id, session_id=session_id).afirst()
    return _active(link) if link is not None else None


async def active_shares(session_id: str) -> list[ActiveShare]:
    """The links to ``session_id`` that still let viewers in, newest first."""
    query = _working_links().filter(session_id=session_id)
    return [_active(link) async for link in query]


async def revoke_share(link_id: int, session_id: str) -> ActiveShare | None:
    """Withdraw a link to ``session_id``; returns it, or None if it let nobody in any more."""
    share = await live_share(link_id, session_id)
    if share is None:
        return None
    await _links().filter(pk=link_id).aupdate(revoked=_now())
    return share
