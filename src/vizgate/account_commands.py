"""``vizgate user`` and ``vizgate group``: the portal's accounts in the database of
``--data-dir`` (the same default as ``serve``).

Passwords are read from a hidden prompt, or from the first line of stdin when it is not a
terminal; never from the command line, which other users can read in the process list. Each
action opens the database first and says an account error as ``vizgate COMMAND: why`` with
exit status 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from vizgate.cli_support import (
    EXIT_FAILURE,
    EXIT_OK,
    Subparsers,
    add_data_dir,
    open_database,
    print_table,
    usage,
)

__all__ = ["add_group_command", "add_user_command"]


def add_user_command(subparsers: Subparsers) -> None:
    user = subparsers.add_parser(
        "user",
        help="portal users: add, passwords, list, rename, administrators, disable",
        description="Manage the portal's users in the gateway's database. Passwords are read "
        "from a hidden prompt, or from the first line of stdin when it is not a terminal.",
    )
    user.set_defaults(func=usage(user))
    actions = user.add_subparsers(title="actions", metavar="ACTION")
    add = actions.add_parser(
        "add",
        help="create a user",
        description="Create the user NAME with a password read from the terminal (or stdin), "
        "or with none (--no-password).",
    )
    add.add_argument("name", metavar="NAME", help="the user name")
    add.add_argument(
        "--group",
        action="append",
        default=[],
        metavar="G",
        help="a group the user joins (it must exist: vizgate group add G); repeat for more",
    )
    add.add_argument(
        "--admin",
        action="store_true",
        help="an administrator: may use every session type, sees and ends every session, "
        "and may use the admin pages",
    )
    add.add_argument(
        "--no-password",
        action="store_true",
        help="no password: the user signs in only through the single sign-on proxy "
        "(vizgate serve --remote-user-header)",
    )
    add_data_dir(add)
    add.set_defaults(func=_account_action("user add", _user_add))
    passwd = actions.add_parser(
        "passwd",
        help="set a user's password",
        description="Set the password of the user NAME, read from the terminal (or stdin). "
        "The user's logged-in browsers are logged out.",
    )
    passwd.add_argument("name", metavar="NAME", help="the user name")
    add_data_dir(passwd)
    passwd.set_defaults(func=_account_action("user passwd", _user_passwd))
    listing = actions.add_parser(
        "list",
        help="list the users",
        description="List every user: administrator or not, enabled or not, with a password "
        "or single sign-on only, groups, last login.",
    )
    add_data_dir(listing)
    listing.set_defaults(func=_account_action("user list", _user_list))
    admin = actions.add_parser(
        "admin",
        help="make a user an administrator (or, with --revoke, no longer one)",
        description="Make the user NAME an administrator: it may use every session type, sees "
        "and ends every session and may use the admin pages. With --revoke, no longer.",
    )
    admin.add_argument("name", metavar="NAME", help="the user name")
    admin.add_argument("--revoke", action="store_true", help="no longer an administrator")
    add_data_dir(admin)
    admin.set_defaults(func=_account_action("user admin", _user_admin))
    rename = actions.add_parser(
        "rename",
        help="give a user a new name, keeping its password, groups and history",
        description="Call the user OLD NEW from now on. Its password, groups, role and logged-in "
        "browsers stay; its past sessions and share links count as NEW's. Refused while OLD "
        "has sessions that have not ended. Under single sign-on the proxy must name it NEW; "
        'for a Slurm type with "run_as": "user", NEW is the Unix account its sessions run '
        "as.",
    )
    rename.add_argument("old", metavar="OLD", help="the user's name now")
    rename.add_argument("new", metavar="NEW", help="its new name")
    add_data_dir(rename)
    rename.set_defaults(func=_account_action("user rename", _user_rename))
    for action, text in (
        ("disable", "stop a user from logging in; its logins stop working at once"),
        ("enable", "let a disabled user log in again"),
    ):
        switch = actions.add_parser(action, help=text, description=text[0].upper() + text[1:] + ".")
        switch.add_argument("name", metavar="NAME", help="the user name")
        add_data_dir(switch)
        switch.set_defaults(
            func=_account_action(f"user {action}", _user_enable), enable=action == "enable"
        )


def add_group_command(subparsers: Subparsers) -> None:
    group = subparsers.add_parser(
        "group",
        help="portal groups: add, list, members",
        description="Manage the portal's groups. A session type whose options.group names a "
        "group is only offered to its members.",
    )
    group.set_defaults(func=usage(group))
    actions = group.add_subparsers(title="actions", metavar="ACTION")
    add = actions.add_parser("add", help="create a group", description="Create the group G.")
    add.add_argument("name", metavar="G", help="the group name")
    add_data_dir(add)
    add.set_defaults(func=_account_action("group add", _group_add))
    listing = actions.add_parser(
        "list",
        help="list the groups and their members",
        description="List every group with its members.",
    )
    add_data_dir(listing)
    listing.set_defaults(func=_account_action("group list", _group_list))
    for action, text in (
        ("add-user", "put users in a group"),
        ("remove-user", "take users out of a group"),
    ):
        change = actions.add_parser(
            action,
            help=text,
            description=text[0].upper() + text[1:] + ": all of them, or (when a user or the "
            "group does not exist) none. With single sign-on's --remote-groups-header, the "
            "proxy's groups replace these at each user's next sign-in.",
        )
        change.add_argument("group", metavar="G", help="the group name")
        change.add_argument("names", metavar="NAME", nargs="+", help="a user name")
        add_data_dir(change)
        change.set_defaults(
            func=_account_action(f"group {action}", _group_members), member=action == "add-user"
        )


def _account_action(
    command: str, action: Callable[[argparse.Namespace], int]
) -> Callable[[argparse.Namespace], int]:
    """A ``vizgate user|group`` action: the database opened first, and an account error said
    as ``vizgate COMMAND: why`` (exit status 1)."""

    def run(args: argparse.Namespace) -> int:
        from vizgate.accounts import AccountError

        if not open_database(args, command):
            return EXIT_FAILURE
        try:
            return action(args)
        except AccountError as exc:
            print(f"vizgate {command}: {exc}", file=sys.stderr)
            return EXIT_FAILURE

    return run


def _user_add(args: argparse.Namespace) -> int:
    from vizgate import accounts

    # Said before the password is asked for, so nobody types one in vain.
    if accounts.user_exists(args.name):
        raise accounts.AccountError(
            f"the user {args.name!r} exists already (change its password with "
            f"'vizgate user passwd {args.name}')"
        )
    missing = [group for group in args.group if not accounts.group_exists(group)]
    if missing:
        raise accounts.AccountError(
            "no such group: "
            + ", ".join(repr(group) for group in missing)
            + " (create it with 'vizgate group add NAME')"
        )
    password = (
        None if args.no_password else accounts.read_password(prompt=f"Password for {args.name}: ")
    )
    accounts.create_user(args.name, password, groups=args.group, admin=args.admin)
    details = []
    if args.group:
        details.append("groups: " + ", ".join(sorted(set(args.group))))
    if args.admin:
        details.append("administrator")
    if args.no_password:
        details.append("no password: signs in through single sign-on")
    print(f"created user {args.name}" + (f" ({'; '.join(details)})" if details else ""))
    return EXIT_OK


def _user_passwd(args: argparse.Namespace) -> int:
    from vizgate import accounts

    if not accounts.user_exists(args.name):
        raise accounts.AccountError(f"no user called {args.name!r}")
    password = accounts.read_password(prompt=f"New password for {args.name}: ")
    accounts.set_password(args.name, password)
    print(f"changed the password of {args.name}")
    return EXIT_OK


def _user_list(args: argparse.Namespace) -> int:
    from vizgate import accounts

    rows = [("user", "role", "state", "login", "groups", "last login")]
    for user in accounts.list_users():
        rows.append(
            (
                user.name,
                "administrator" if user.admin else "user",
                "enabled" if user.active else "disabled",
                "password" if user.has_password else "single sign-on",
                ", ".join(user.groups) or "-",
                user.last_login.strftime("%Y-%m-%d %H:%M UTC") if user.last_login else "never",
            )
        )
    print_table(rows)
    return EXIT_OK


def _user_rename(args: argparse.Namespace) -> int:
    from vizgate import accounts

    moved = accounts.rename_user(args.old, args.new)
    print(
        f"renamed {args.old} to {args.new} "
        f"({moved} past session{'s' if moved != 1 else ''} moved to the new name)"
    )
    return EXIT_OK


def _user_admin(args: argparse.Namespace) -> int:
    from vizgate import accounts

    changed = accounts.set_admin(args.name, not args.revoke)
    if args.revoke:
        print(f"{args.name} is {'no longer' if changed else 'not'} an administrator")
    else:
        print(f"{args.name} is {'now' if changed else 'already'} an administrator")
    return EXIT_OK


def _user_enable(args: argparse.Namespace) -> int:
    from vizgate import accounts

    changed = accounts.set_active(args.name, args.enable)
    state = "enabled" if args.enable else "disabled"
    print(f"{args.name} is {'now' if changed else 'already'} {state}")
    if changed and not args.enable:
        print(
            "  its portal logins no longer work; sessions it runs go on until they end or an "
            "administrator terminates them (Status page)"
        )
    return EXIT_OK


def _group_add(args: argparse.Namespace) -> int:
    from vizgate import accounts

    created = accounts.create_group(args.name)
    print(f"created group {args.name}" if created else f"the group {args.name} exists already")
    return EXIT_OK


def _group_list(args: argparse.Namespace) -> int:
    from vizgate import accounts

    rows = [("group", "members")]
    rows += [(group.name, ", ".join(group.members) or "-") for group in accounts.list_groups()]
    print_table(rows)
    return EXIT_OK


def _group_members(args: argparse.Namespace) -> int:
    from vizgate import accounts

    changed = accounts.set_members(args.group, args.names, member=args.member)
    unchanged = sorted(set(args.names) - set(changed))
    if changed:
        verb = "joined" if args.member else "left"
        print(f"{', '.join(changed)} {verb} {args.group}")
    if unchanged:
        state = "in it already" if args.member else "not in it"
        print(f"{', '.join(unchanged)} {'was' if len(unchanged) == 1 else 'were'} {state}")
    return EXIT_OK
