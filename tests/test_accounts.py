"""``vizgate user ...`` and ``vizgate group ...`` as the commands they are (subprocesses
with the password on stdin), checked against the SQLite database they write; and the account
helpers that need no database.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import sqlite3
import subprocess
from pathlib import Path

import pytest

from gateway import run_python
from vizgate import accounts
from vizgate.accounts import AccountError, may_use_group, read_password

PASSWORD = "a-long-enough-passphrase-7"


def vizgate(data_dir: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return run_python("-m", "vizgate", *args, "--data-dir", str(data_dir), stdin=stdin, check=False)


def database(data_dir: Path) -> sqlite3.Connection:
    # Read-only: a test must not create the database the command was to create.
    return sqlite3.connect(f"file:{data_dir / 'vizgate.sqlite3'}?mode=ro", uri=True)


def user_row(data_dir: Path, name: str) -> tuple[str, int, int] | None:
    if not (data_dir / "vizgate.sqlite3").exists():
        return None
    with database(data_dir) as db:
        row = db.execute(
            "SELECT password, is_staff, is_superuser FROM auth_user WHERE username = ?", (name,)
        ).fetchone()
    return None if row is None else (row[0], row[1], row[2])


def groups_of(data_dir: Path, name: str) -> set[str]:
    with database(data_dir) as db:
        rows = db.execute(
            "SELECT g.name FROM auth_group g JOIN auth_user_groups ug ON ug.group_id = g.id "
            "JOIN auth_user u ON u.id = ug.user_id WHERE u.username = ?",
            (name,),
        ).fetchall()
    return {row[0] for row in rows}


def password_matches(encoded: str, password: str) -> bool:
    """Check a Django PBKDF2-SHA256 hash (``pbkdf2_sha256$iterations$salt$hash``)."""
    algorithm, iterations, salt, expected = encoded.split("$")
    assert algorithm == "pbkdf2_sha256"
    derived = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), int(iterations))
    return hmac.compare_digest(base64.b64encode(derived).decode(), expected)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


def test_group_add_creates_a_group_once(data_dir: Path) -> None:
    first = vizgate(data_dir, "group", "add", "ClusterRendering")
    assert first.returncode == 0, first.stderr
    assert first.stdout == "created group ClusterRendering\n"
    again = vizgate(data_dir, "group", "add", "ClusterRendering")
    assert again.returncode == 0
    assert "exists already" in again.stdout
    with database(data_dir) as db:
        assert db.execute("SELECT name FROM auth_group").fetchall() == [("ClusterRendering",)]


def test_user_add_reads_the_password_from_stdin_and_stores_a_hash(data_dir: Path) -> None:
    assert vizgate(data_dir, "group", "add", "ClusterRendering").returncode == 0
    assert vizgate(data_dir, "group", "add", "Viz").returncode == 0
    result = vizgate(
        data_dir,
        "user",
        "add",
        "alice",
        "--group",
        "ClusterRendering",
        "--group",
        "Viz",
        stdin=PASSWORD + "\n",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "created user alice (groups: ClusterRendering, Viz)\n"
    assert PASSWORD not in result.stdout + result.stderr

    row = user_row(data_dir, "alice")
    assert row is not None
    encoded, staff, superuser = row
    assert PASSWORD not in encoded
    assert password_matches(encoded, PASSWORD)
    assert not password_matches(encoded, PASSWORD + "x")
    assert (staff, superuser) == (0, 0)
    assert groups_of(data_dir, "alice") == {"ClusterRendering", "Viz"}


def test_admin_users_are_staff_and_superusers(data_dir: Path) -> None:
    result = vizgate(data_dir, "user", "add", "root", "--admin", stdin=PASSWORD + "\r\n")
    assert result.returncode == 0, result.stderr
    assert "administrator" in result.stdout
    row = user_row(data_dir, "root")
    assert row is not None
    assert row[1:] == (1, 1)
    # A CRLF line end is not part of the password.
    assert password_matches(row[0], PASSWORD)


def test_a_user_without_a_password_signs_in_through_single_sign_on_only(data_dir: Path) -> None:
    result = vizgate(data_dir, "user", "add", "sso-user", "--no-password", "--admin")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        "created user sso-user (administrator; no password: signs in through single sign-on)\n"
    )
    row = user_row(data_dir, "sso-user")
    assert row is not None
    # Django's mark of an unusable password: no password ever matches it.
    assert row[0].startswith("!")
    assert row[1:] == (1, 1)


def test_passwords_never_come_from_the_command_line(data_dir: Path) -> None:
    result = vizgate(data_dir, "user", "add", "bob", "--password", PASSWORD)
    assert result.returncode == 2
    assert "unrecognized arguments" in result.stderr
    assert user_row(data_dir, "bob") is None


@pytest.mark.parametrize(
    ("stdin", "message"),
    [
        ("", "the password is empty"),
        ("\n", "the password is empty"),
        ("short\n", "too short"),
        ("12345678901234\n", "entirely numeric"),
        ("password123\n", "too common"),
        ("carol-carol\n", "too similar"),
    ],
)
def test_user_add_refuses_empty_and_weak_passwords(
    data_dir: Path, stdin: str, message: str
) -> None:
    result = vizgate(data_dir, "user", "add", "carol-carol", stdin=stdin)
    assert result.returncode == 1
    assert message in result.stderr
    assert user_row(data_dir, "carol-carol") is None


def test_user_add_refuses_an_existing_user_and_a_missing_group(data_dir: Path) -> None:
    assert vizgate(data_dir, "user", "add", "dave", stdin=PASSWORD + "\n").returncode == 0
    before = user_row(data_dir, "dave")

    again = vizgate(data_dir, "user", "add", "dave", stdin="another-password-55\n")
    assert again.returncode == 1
    assert "exists already" in again.stderr
    assert "vizgate user passwd dave" in again.stderr
    assert user_row(data_dir, "dave") == before

    missing = vizgate(data_dir, "user", "add", "erin", "--group", "Nope", stdin=PASSWORD + "\n")
    assert missing.returncode == 1
    assert "no such group: 'Nope'" in missing.stderr
    assert "vizgate group add" in missing.stderr
    assert user_row(data_dir, "erin") is None

    bad_name = vizgate(data_dir, "user", "add", "no spaces", stdin=PASSWORD + "\n")
    assert bad_name.returncode == 1
    assert "bad user name" in bad_name.stderr


def test_user_passwd_replaces_the_password(data_dir: Path) -> None:
    assert vizgate(data_dir, "user", "add", "frank", stdin=PASSWORD + "\n").returncode == 0
    new = "a-different-passphrase-8"
    result = vizgate(data_dir, "user", "passwd", "frank", stdin=new + "\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "changed the password of frank\n"
    row = user_row(data_dir, "frank")
    assert row is not None
    assert password_matches(row[0], new)
    assert not password_matches(row[0], PASSWORD)

    weak = vizgate(data_dir, "user", "passwd", "frank", stdin="short\n")
    assert weak.returncode == 1
    assert user_row(data_dir, "frank") == row

    unknown = vizgate(data_dir, "user", "passwd", "nobody", stdin=new + "\n")
    assert unknown.returncode == 1
    assert "no user called 'nobody'" in unknown.stderr


def test_a_data_dir_that_cannot_be_created_is_reported(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = vizgate(blocker / "data", "group", "add", "G")
    assert result.returncode == 1
    assert "cannot use the data directory" in result.stderr


# ---------------------------------------------------------------------------------------
# Without a database


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_read_password_from_a_pipe_takes_the_first_line() -> None:
    assert read_password(stdin=io.StringIO("secret one\nsecond line\n")) == "secret one"
    assert read_password(stdin=io.StringIO("no newline")) == "no newline"
    assert read_password(stdin=io.StringIO(" spaces kept \r\n")) == " spaces kept "
    with pytest.raises(AccountError, match="empty"):
        read_password(stdin=io.StringIO(""))


def test_read_password_on_a_terminal_asks_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = iter(["first-pass", "first-pass", "one", "two"])
    prompts: list[str] = []

    def fake_getpass(prompt: str = "") -> str:
        prompts.append(prompt)
        return next(answers)

    monkeypatch.setattr(accounts.getpass, "getpass", fake_getpass)
    assert read_password(stdin=_Terminal(), prompt="Password for x: ") == "first-pass"
    assert prompts == ["Password for x: ", "Password (again): "]
    with pytest.raises(AccountError, match="differ"):
        read_password(stdin=_Terminal())


def test_who_may_use_a_gated_type() -> None:
    assert may_use_group(None, authenticated=False, staff=False, groups=())
    assert not may_use_group("G", authenticated=False, staff=False, groups=("G",))
    assert may_use_group("G", authenticated=True, staff=False, groups=("G", "H"))
    assert not may_use_group("G", authenticated=True, staff=False, groups=("H",))
    assert may_use_group("G", authenticated=True, staff=True, groups=())


def test_user_list_shows_role_state_login_and_groups(data_dir: Path) -> None:
    assert vizgate(data_dir, "group", "add", "Viz").returncode == 0
    assert (
        vizgate(data_dir, "user", "add", "root", "--admin", stdin=PASSWORD + "\n").returncode == 0
    )
    made = vizgate(data_dir, "user", "add", "carol", "--no-password", "--group", "Viz")
    assert made.returncode == 0, made.stderr
    listed = vizgate(data_dir, "user", "list")
    assert listed.returncode == 0, listed.stderr
    assert table(listed.stdout) == [
        ["user", "role", "state", "login", "groups", "last login"],
        ["carol", "user", "enabled", "single sign-on", "Viz", "never"],
        ["root", "administrator", "enabled", "password", "-", "never"],
    ]


def test_user_admin_and_disable_change_the_account(data_dir: Path) -> None:
    assert vizgate(data_dir, "user", "add", "dave", stdin=PASSWORD + "\n").returncode == 0
    made = vizgate(data_dir, "user", "admin", "dave")
    assert made.stdout == "dave is now an administrator\n"
    assert user_row(data_dir, "dave")[1:] == (1, 1)  # type: ignore[index]
    assert vizgate(data_dir, "user", "admin", "dave").stdout == "dave is already an administrator\n"
    revoked = vizgate(data_dir, "user", "admin", "dave", "--revoke")
    assert revoked.stdout == "dave is no longer an administrator\n"
    assert user_row(data_dir, "dave")[1:] == (0, 0)  # type: ignore[index]

    disabled = vizgate(data_dir, "user", "disable", "dave")
    assert disabled.stdout.startswith("dave is now disabled\n  its portal logins no longer work")
    assert "disabled" in vizgate(data_dir, "user", "list").stdout
    assert vizgate(data_dir, "user", "enable", "dave").stdout == "dave is now enabled\n"
    missing = vizgate(data_dir, "user", "disable", "nobody-here")
    assert missing.returncode == 1
    assert "no user called 'nobody-here'" in missing.stderr


def table(output: str) -> list[list[str]]:
    """The cells of a table the commands print (columns two spaces or more apart)."""
    return [
        [cell.strip() for cell in line.split("  ") if cell.strip()] for line in output.splitlines()
    ]


def test_group_add_user_and_remove_user_change_memberships_all_or_nothing(
    data_dir: Path,
) -> None:
    for group in ("Viz", "Render"):
        assert vizgate(data_dir, "group", "add", group).returncode == 0
    for name in ("erin", "frank", "gina"):
        made = vizgate(data_dir, "user", "add", name, "--no-password")
        assert made.returncode == 0, made.stderr
    joined = vizgate(data_dir, "group", "add-user", "Viz", "frank", "erin")
    assert joined.returncode == 0, joined.stderr
    assert joined.stdout == "erin, frank joined Viz\n"
    again = vizgate(data_dir, "group", "add-user", "Viz", "erin", "gina")
    assert again.stdout == "gina joined Viz\nerin was in it already\n"
    assert groups_of(data_dir, "erin") == {"Viz"}
    # A missing user or group changes nothing and names what is missing.
    missing_user = vizgate(data_dir, "group", "add-user", "Render", "erin", "zed", "yan")
    assert missing_user.returncode == 1
    assert "no such user: 'yan', 'zed'" in missing_user.stderr
    assert groups_of(data_dir, "erin") == {"Viz"}
    missing_group = vizgate(data_dir, "group", "add-user", "Nowhere", "erin")
    assert missing_group.returncode == 1
    assert "no group called 'Nowhere' (create it with 'vizgate group add Nowhere')" in (
        missing_group.stderr
    )
    left = vizgate(data_dir, "group", "remove-user", "Viz", "erin", "frank")
    assert left.stdout == "erin, frank left Viz\n"
    assert groups_of(data_dir, "erin") == set()
    assert groups_of(data_dir, "gina") == {"Viz"}
    assert vizgate(data_dir, "group", "remove-user", "Viz", "erin").stdout == (
        "erin was not in it\n"
    )
    listed = vizgate(data_dir, "group", "list")
    assert listed.returncode == 0, listed.stderr
    assert table(listed.stdout) == [["group", "members"], ["Render", "-"], ["Viz", "gina"]]
    # Naming no user is bad usage.
    assert vizgate(data_dir, "group", "add-user", "Viz").returncode == 2


_HISTORY = """
import datetime, pathlib, sys
from vizgate.web import setup_django
setup_django(pathlib.Path(sys.argv[1]), allowed_hosts=["localhost"])
from vizgate.web.portal.models import Session, SessionEvent, ShareLink
now = datetime.datetime.now(datetime.UTC)
for number, (user, state) in enumerate([("Hana", "ended"), ("Hana", "ended"), ("ivan", "ended")]):
    row = Session.objects.create(
        id=f"s{number}", token_hash=f"{number:064x}", service="Desktop", index=0, user=user,
        state=state, created=now,
    )
    SessionEvent.objects.create(session=row, kind="reserved", at=now, user=user)
ShareLink.objects.create(
    session_id="s0", secret_hash="0" * 64, created_by="Hana", created=now, expires=now
)
"""


def history_users(data_dir: Path) -> tuple[list[str], list[str], list[str]]:
    with database(data_dir) as db:
        return (
            [row[0] for row in db.execute("SELECT user FROM portal_session ORDER BY id")],
            [row[0] for row in db.execute("SELECT user FROM portal_sessionevent ORDER BY id")],
            [row[0] for row in db.execute("SELECT created_by FROM portal_sharelink")],
        )


def test_user_rename_keeps_the_password_groups_and_history(data_dir: Path) -> None:
    assert vizgate(data_dir, "group", "add", "Viz").returncode == 0
    made = vizgate(data_dir, "user", "add", "Hana", "--group", "Viz", stdin=PASSWORD + "\n")
    assert made.returncode == 0, made.stderr
    run_python("-c", _HISTORY, str(data_dir))
    password = user_row(data_dir, "Hana")

    renamed = vizgate(data_dir, "user", "rename", "Hana", "hana")
    assert renamed.returncode == 0, renamed.stderr
    assert renamed.stdout == "renamed Hana to hana (2 past sessions moved to the new name)\n"
    assert user_row(data_dir, "Hana") is None
    assert user_row(data_dir, "hana") == password
    assert groups_of(data_dir, "hana") == {"Viz"}
    assert history_users(data_dir) == (["hana", "hana", "ivan"], ["hana", "hana", "ivan"], ["hana"])


def test_user_rename_refuses_with_why_and_changes_nothing(data_dir: Path) -> None:
    for name in ("jo", "kim"):
        assert vizgate(data_dir, "user", "add", name, "--no-password").returncode == 0
    refusals = {
        ("nobody", "x"): "no user called 'nobody'",
        ("jo", "kim"): "the user 'kim' exists already",
        ("jo", "jo"): "the user is called 'jo' already",
        ("jo", "bad name!"): "bad user name 'bad name!'",
    }
    for (old, new), why in refusals.items():
        refused = vizgate(data_dir, "user", "rename", old, new)
        assert refused.returncode == 1, (old, new)
        assert f"vizgate user rename: {why}" in refused.stderr
    assert user_row(data_dir, "jo") is not None
    # A session the gateway still runs knows its user by name: refused until it ends.
    run_python(
        "-c",
        _HISTORY.replace('("ivan", "ended")', '("jo", "running")'),
        str(data_dir),
    )
    live = vizgate(data_dir, "user", "rename", "jo", "joanna")
    assert live.returncode == 1
    assert "'jo' has 1 session that has not ended" in live.stderr
    assert user_row(data_dir, "joanna") is None
