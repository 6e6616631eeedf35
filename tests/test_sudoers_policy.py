"""The sudoers rule docs/cluster.md gives a gateway that is not root, for types with
``"run_as": "user"``, checked with the real sudo: installed as written (names replaced), a gateway
account handles the files of a member of the allowed group as that member, and a user outside
the group is refused with a message that says what to change.

The test makes accounts, a group and a file in /etc/sudoers.d, so it runs as root; it removes
them when it ends.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import require_binaries, scaled
from unix_accounts import UnixAccount, account_env, as_account, python_for, temporary_account

pytestmark = pytest.mark.integration

DOCS = Path(__file__).resolve().parent.parent / "docs" / "cluster.md"
SUDOERS_D = Path("/etc/sudoers.d")


def documented_rules() -> list[str]:
    """The sudoers lines the docs give: the rule's code block and the requiretty default."""
    text = DOCS.read_text(encoding="utf-8")
    block = re.search(r"in `/etc/sudoers\.d/vizgate`:\n\n\s*```\n(.*?)```", text, re.S)
    assert block, "docs/cluster.md no longer shows the sudoers rule"
    rules = [line.strip() for line in block.group(1).splitlines() if line.strip()]
    default = re.search(r"add\s+`(Defaults:vizgate !requiretty)`", text)
    assert default, "docs/cluster.md no longer gives the requiretty default"
    return [*rules, default.group(1)]


@pytest.fixture
def accounts() -> Iterator[tuple[UnixAccount, UnixAccount, UnixAccount, str]]:
    """The gateway's account, a member of the allowed group, a user outside it, the group."""
    if os.geteuid() != 0:
        pytest.skip("making accounts and sudoers rules needs root")
    require_binaries("sudo", "visudo", "useradd", "groupadd", "gpasswd")
    group = "vzgusers" + secrets.token_hex(3)
    subprocess.run(["groupadd", group], check=True, capture_output=True, timeout=scaled(30))
    try:
        with (
            temporary_account() as gateway,
            temporary_account() as member,
            temporary_account() as outsider,
        ):
            subprocess.run(
                ["gpasswd", "-a", member.name, group],
                check=True,
                capture_output=True,
                timeout=scaled(30),
            )
            yield gateway, member, outsider, group
    finally:
        subprocess.run(["groupdel", group], check=False, capture_output=True, timeout=scaled(30))


@pytest.fixture
def sudoers(accounts: tuple[UnixAccount, UnixAccount, UnixAccount, str]) -> Iterator[Path]:
    gateway, _, _, group = accounts
    lines = [
        rule.replace("%vizusers", f"%{group}").replace("vizgate", gateway.name)
        for rule in documented_rules()
    ]
    # sudo reads no file of /etc/sudoers.d whose name holds a dot.
    path = SUDOERS_D / f"vizgate-test-{gateway.name}"
    draft = path.with_name(path.name + ".draft")
    draft.write_text("\n".join(lines) + "\n", encoding="utf-8")
    try:
        checked = subprocess.run(
            ["visudo", "-cf", str(draft)], capture_output=True, text=True, timeout=scaled(30)
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
        draft.chmod(0o440)
        draft.rename(path)
        yield path
    finally:
        draft.unlink(missing_ok=True)
        path.unlink(missing_ok=True)


_AS_GATEWAY = """
import json, sys
from pathlib import Path
from vizgate.launchers.job_owner import JobOwner, OwnerFiles
result = {}
for name in sys.argv[1:]:
    owner = JobOwner.of_user(name)
    files = OwnerFiles(owner)
    try:
        folder = files.make_folder(owner.expand("~/vizgate-sessions"), "T-0-")
        files.write_new(folder / "passwd", b"12345678")
        read = files.read(folder / "passwd")
        files.remove_tree(folder)
        result[name] = {"how": owner.how, "read": read.decode() if read else None,
                        "folder": str(folder)}
    except OSError as exc:
        result[name] = {"how": owner.how, "error": str(exc)}
print(json.dumps(result))
"""


def test_the_documented_sudoers_rule_lets_the_gateway_act_as_its_groups_members_only(
    accounts: tuple[UnixAccount, UnixAccount, UnixAccount, str], sudoers: Path
) -> None:
    gateway, member, outsider, _ = accounts
    python = python_for(gateway)
    ran = subprocess.run(
        [python, "-c", _AS_GATEWAY, member.name, outsider.name],
        env=account_env(gateway),
        capture_output=True,
        text=True,
        timeout=scaled(60),
        check=False,
        **as_account(gateway),  # type: ignore[arg-type]
    )
    assert ran.returncode == 0, ran.stderr
    result = json.loads(ran.stdout)
    made = result[member.name]
    assert (made["how"], made["read"]) == ("sudo", "12345678"), made
    # The member's folder was made as the member, in the member's home, and removed.
    assert Path(made["folder"]).parent == member.home / "vizgate-sessions"
    assert (member.home / "vizgate-sessions").stat().st_uid == member.uid
    assert not Path(made["folder"]).exists()
    refused = result[outsider.name]
    assert refused["how"] == "sudo"
    assert refused["error"].startswith(
        f"the gateway's account may not run programs as {outsider.name} with sudo"
    ), refused
    assert "/etc/sudoers.d" in refused["error"]
    assert not (outsider.home / "vizgate-sessions").exists()
