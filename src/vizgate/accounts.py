"""Users and groups of the portal, and who may use which session type.

Accounts are Django's own (``django.contrib.auth``): passwords are stored hashed, an
administrator is a user with ``is_staff`` and ``is_superuser``, and a session type whose
``options.group`` names a group is for the members of that group (the seed's "Nexus
administration group"); administrators may use every type.

The functions that touch the database need Django set up first
(:func:`vizgate.web.setup_django`); :func:`read_password` and :func:`may_use_group` do not.
"""

from __future__ import annotations

import datetime
import getpass
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

from vizgate.exceptions import VizgateError

if TYPE_CHECKING:
    from django.contrib.auth.base_user import AbstractBaseUser
    from django.contrib.auth.models import AnonymousUser, User

__all__ = [
    "AccountError",
    "GroupSummary",
    "UserSummary",
    "agroup_names",
    "amay_use",
    "create_group",
    "create_user",
    "forbidden_message",
    "group_exists",
    "list_groups",
    "list_users",
    "may_use_group",
    "read_password",
    "rename_user",
    "set_active",
    "set_admin",
    "set_members",
    "set_password",
    "user_exists",
    "users_with_capitals",
]


class AccountError(VizgateError):
    """A user or group cannot be created or changed; the message says why, for a person."""


def read_password(
    *,
    stdin: TextIO | None = None,
    confirm: bool = True,
    prompt: str = "Password: ",
) -> str:
    """Read a new password: from a hidden prompt on a terminal, else the first line of stdin.

    Passwords never come from the command line, where every user of the machine can read
    them in the process list.

    Args:
        stdin: where to read from when it is not a terminal (default ``sys.stdin``).
        confirm: on a terminal, ask twice and compare.
        prompt: what the terminal prompt says.

    Raises:
        AccountError: the password is empty, or the two entries differ.
    """
    source = stdin if stdin is not None else sys.stdin
    if source.isatty():
        password = getpass.getpass(prompt)
        if confirm and getpass.getpass("Password (again): ") != password:
            raise AccountError("the two passwords differ")
    else:
        password = source.readline().removesuffix("\n").removesuffix("\r")
    if not password:
        raise AccountError("the password is empty")
    return password


def _validate_password(password: str, username: str) -> None:
    from django.contrib.auth.models import User
    from django.contrib.auth.password_validation import validate_password
    from django.core.exceptions import ValidationError

    try:
        validate_password(password, user=User(username=username))
    except ValidationError as exc:
        raise AccountError("the password is too weak: " + " ".join(exc.messages)) from None


def _validate_username(name: str) -> None:
    from django.contrib.auth.models import User
    from django.core.exceptions import ValidationError

    field = User._meta.get_field("username")
    try:
        field.run_validators(name)
    except ValidationError as exc:
        raise AccountError(f"bad user name {name!r}: " + " ".join(exc.messages)) from None
    if not name:
        raise AccountError("the user name is empty")


def user_exists(name: str) -> bool:
    """Is there a user called ``name``?"""
    from django.contrib.auth.models import User

    return User.objects.filter(username=name).exists()


def group_exists(name: str) -> bool:
    """Is there a group called ``name``?"""
    from django.contrib.auth.models import Group

    return Group.objects.filter(name=name).exists()


def create_group(name: str) -> bool:
    """Create the group ``name`` unless it exists.

    Returns:
        True if it was created, False if it existed.

    Raises:
        AccountError: the name is empty or too long.
    """
    from django.contrib.auth.models import Group

    name = name.strip()
    if not name:
        raise AccountError("the group name is empty")
    limit = Group._meta.get_field("name").max_length or 150
    if len(name) > limit:
        raise AccountError(f"the group name is longer than {limit} characters")
    _, created = Group.objects.get_or_create(name=name)
    return created


def create_user(
    name: str,
    password: str | None,
    *,
    groups: Iterable[str] = (),
    admin: bool = False,
    validate: bool = True,
) -> None:
    """Create the user ``name`` with a (hashed) password, in existing groups.

    Args:
        name: the user name (letters, digits and ``@.+-_``, as Django allows).
        password: the password; only its hash is stored. None for no usable password: the
            user signs in through single sign-on only (:mod:`vizgate.web.single_sign_on`).
        groups: groups the user joins; each must exist (:func:`create_group`).
        admin: an administrator: may use every session type, sees every session, may end any,
            and may use the Django admin (``is_staff`` and ``is_superuser``).
        validate: check the password against the server's password rules (length, not too
            common, not like the user name, not only digits).

    Raises:
        AccountError: the user exists, a group does not, the name is invalid or the password
            is too weak. Nothing was created.
    """
    from django.contrib.auth.models import Group, User
    from django.db import transaction

    _validate_username(name)
    if validate and password is not None:
        _validate_password(password, name)
    wanted = sorted(set(groups))
    with transaction.atomic():
        if User.objects.filter(username=name).exists():
            raise AccountError(
                f"the user {name!r} exists already (change its password with "
                f"'vizgate user passwd {name}')"
            )
        found = list(Group.objects.filter(name__in=wanted))
        missing = sorted(set(wanted) - {group.name for group in found})
        if missing:
            raise AccountError(
                "no such group: "
                + ", ".join(repr(group) for group in missing)
                + " (create it with 'vizgate group add NAME')"
            )
        user = User.objects.create_user(
            username=name, password=password, is_staff=admin, is_superuser=admin
        )
        if found:
            user.groups.add(*found)


def set_password(name: str, password: str, *, validate: bool = True) -> None:
    """Give the user ``name`` a new password; the sessions it is logged in with end.

    Raises:
        AccountError: no such user, or the password is too weak.
    """
    user = _user(name)
    if validate:
        _validate_password(password, name)
    user.set_password(password)
    user.save(update_fields=["password"])


@dataclass(frozen=True)
class UserSummary:
    """A user as ``vizgate user list`` shows it."""

    name: str
    admin: bool
    active: bool
    has_password: bool
    groups: tuple[str, ...]
    last_login: datetime.datetime | None


def list_users() -> list[UserSummary]:
    """Every user, by name."""
    from django.contrib.auth.models import User

    return [
        UserSummary(
            name=user.username,
            admin=user.is_staff,
            active=user.is_active,
            has_password=user.has_usable_password(),
            groups=tuple(sorted(group.name for group in user.groups.all())),
            last_login=user.last_login,
        )
        for user in User.objects.order_by("username").prefetch_related("groups")
    ]


@dataclass(frozen=True)
class GroupSummary:
    """A group as ``vizgate group list`` shows it."""

    name: str
    members: tuple[str, ...]


def list_groups() -> list[GroupSummary]:
    """Every group, by name, with its members."""
    from django.contrib.auth.models import Group

    return [
        GroupSummary(group.name, tuple(sorted(user.username for user in group.user_set.all())))
        for group in Group.objects.order_by("name").prefetch_related("user_set")
    ]


def set_members(group: str, names: Iterable[str], *, member: bool) -> list[str]:
    """Put the users ``names`` in ``group`` (or, with ``member=False``, take them out of it).

    Returns:
        The names whose membership changed, sorted; the others were (or were not) members
        already.

    Raises:
        AccountError: no such group, or no such user (each missing one is named). Nothing
            was changed.
    """
    from django.contrib.auth.models import Group, User
    from django.db import transaction

    wanted = sorted(set(names))
    with transaction.atomic():
        try:
            found_group = Group.objects.get(name=group)
        except Group.DoesNotExist:
            raise AccountError(
                f"no group called {group!r} (create it with 'vizgate group add {group}')"
            ) from None
        users = list(User.objects.filter(username__in=wanted))
        missing = sorted(set(wanted) - {user.username for user in users})
        if missing:
            raise AccountError("no such user: " + ", ".join(repr(name) for name in missing))
        already = set(found_group.user_set.filter(pk__in=[user.pk for user in users]))
        changing = [user for user in users if (user in already) != member]
        if member:
            found_group.user_set.add(*changing)
        else:
            found_group.user_set.remove(*changing)
    return sorted(user.username for user in changing)


def set_admin(name: str, admin: bool) -> bool:
    """Make ``name`` an administrator (staff and superuser), or no longer one.

    Returns:
        Whether anything changed.

    Raises:
        AccountError: no such user.
    """
    user = _user(name)
    if user.is_staff == admin and user.is_superuser == admin:
        return False
    user.is_staff = user.is_superuser = admin
    user.save(update_fields=["is_staff", "is_superuser"])
    return True


def set_active(name: str, active: bool) -> bool:
    """Let ``name`` log in again, or no longer: a disabled user's logins stop working at once
    (Django does not believe a portal session of an inactive user) and single sign-on refuses
    it.

    Returns:
        Whether anything changed.

    Raises:
        AccountError: no such user.
    """
    user = _user(name)
    if user.is_active == active:
        return False
    user.is_active = active
    user.save(update_fields=["is_active"])
    return True


def rename_user(old: str, new: str) -> int:
    """Call the user ``old`` ``new`` from now on: its password, groups, role and logins stay,
    and its past sessions, their audit trail and its share links are counted as ``new``'s.

    Returns:
        How many sessions of the history were moved to the new name.

    Raises:
        AccountError: no user ``old``, a bad or taken ``new``, or ``old`` has sessions that have
            not ended (the gateway knows them by the old name until they end).
    """
    from django.db import transaction

    from vizgate.web.portal.models import Session, SessionEvent, ShareLink

    _validate_username(new)
    with transaction.atomic():
        user = _user(old)
        if new == old:
            raise AccountError(f"the user is called {old!r} already")
        if user_exists(new):
            raise AccountError(f"the user {new!r} exists already")
        live = Session.objects.filter(user=old).exclude(state="ended").count()
        if live:
            raise AccountError(
                f"{old!r} has {live} session{'s' if live != 1 else ''} that ha"
                f"{'ve' if live != 1 else 's'} not ended; rename it once they have (the "
                "Status page ends them)"
            )
        user.username = new
        user.save(update_fields=["username"])
        moved = Session.objects.filter(user=old).update(user=new)
        SessionEvent.objects.filter(user=old).update(user=new)
        ShareLink.objects.filter(created_by=old).update(created_by=new)
    return moved


def users_with_capitals() -> list[str]:
    """The users whose names hold capital letters: under single sign-on's
    ``--remote-user-lowercase`` nobody signs in as them any more."""
    from django.contrib.auth.models import User

    names = User.objects.values_list("username", flat=True)
    return sorted(name for name in names if name != name.lower())


def _user(name: str) -> User:
    from django.contrib.auth.models import User

    try:
        return User.objects.get(username=name)
    except User.DoesNotExist:
        raise AccountError(f"no user called {name!r}") from None


def may_use_group(
    group: str | None, *, authenticated: bool, staff: bool, groups: Iterable[str]
) -> bool:
    """May someone use a session type that is for the members of ``group``?

    Everyone may use a type without a group; administrators may use every type; else only
    the members of its group.
    """
    if group is None:
        return True
    if not authenticated:
        return False
    return staff or group in set(groups)


async def agroup_names(user: AbstractBaseUser | AnonymousUser) -> frozenset[str]:
    """The names of the groups ``user`` belongs to (none for an anonymous user)."""
    from django.contrib.auth.models import User

    if not isinstance(user, User):
        return frozenset()
    return frozenset([name async for name in user.groups.values_list("name", flat=True)])


async def amay_use(user: AbstractBaseUser | AnonymousUser, group: str | None) -> bool:
    """May the (logged-in) ``user`` use a session type for the members of ``group``?"""
    if group is None:
        return True
    if not user.is_authenticated:
        return False
    staff = bool(getattr(user, "is_staff", False))
    return staff or may_use_group(
        group, authenticated=True, staff=False, groups=await agroup_names(user)
    )


def forbidden_message(service: str, group: str) -> str:
    """What a person is told when a session type is not for them."""
    return f"the session type {service!r} is only for members of the group {group!r}"
