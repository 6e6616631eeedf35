"""Who a cluster session runs as: the gateway's own account, or the account of its user.

By default a launcher runs every session's job as the user that runs vizgate. On a site where
many people use the gateway that is rarely what anyone wants: every desktop would be a shell of
one shared account that can read the others' session files, Slurm's accounting and fair share
would see one user, and nobody would see their own files. With ``"run_as": "user"`` the Slurm
launcher runs each session as the Unix account named like its portal user (single sign-on makes
them the same, :mod:`vizgate.web.single_sign_on`):

* :meth:`JobOwner.of_user` finds the account (``pwd``) and refuses ``root`` and every account
  below ``min_uid`` (1000 by default: system accounts never run desktops);
* :class:`OwnerFiles` does everything on the session's folder as that account: the folder is
  made in the account's own ``state_dir`` (``~`` is the account's home), the VNC password is
  written there, and the job's files are read and removed, each by a small program run with the
  account's user and group ids (``mkdir``, ``mktemp``, ``cat``, ``tail``, ``rm``). The gateway never
  opens a file in a folder the user controls, so no link the user plants there can make it read
  or remove anything else, and home directories that ``root_squash`` NFS exports work;
* ``sbatch``, ``squeue`` and ``scancel`` run as the account too, with its ``HOME``, ``USER`` and
  ``LOGNAME``, so that Slurm sees the user submit (and cancel) the job.

A gateway running as root starts those programs with :func:`subprocess.run`'s ``user``,
``group`` and ``extra_groups``; any other runs them with ``sudo -n -u ACCOUNT -- env -i ...``,
which needs a sudoers rule letting the gateway's account run programs as the users (see
docs/cluster.md). A gateway that can do neither says so when such a session starts.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

__all__ = [
    "AS_ROOT",
    "DEFAULT_MIN_UID",
    "SAME",
    "WITH_SUDO",
    "JobOwner",
    "JobOwnerError",
    "OwnerFiles",
]

#: How programs are started as an account (:attr:`JobOwner.how`): as the gateway's own...
SAME: Final = ""
#: ... by the gateway itself, running as root ...
AS_ROOT: Final = "root"
#: ... or through ``sudo``.
WITH_SUDO: Final = "sudo"

_DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"

#: The lowest uid that may run sessions unless ``min_uid`` says otherwise.
DEFAULT_MIN_UID: Final = 1000

# One file operation as the user may take this long (a slow shared file system).
_FILE_TIMEOUT = 20.0


class JobOwnerError(Exception):
    """A session cannot run as its user; the message says why, for that user and the admin."""


@dataclass(frozen=True)
class JobOwner:
    """A Unix account that sessions' jobs and files belong to.

    Attributes:
        name: the account's name.
        uid: its user id.
        gid: its primary group id.
        groups: every group id it is in (for ``extra_groups``).
        home: its home directory.
        how: how programs are started as it: :data:`SAME` (the gateway's own account),
            :data:`AS_ROOT` (a gateway running as root switches ids itself) or
            :data:`WITH_SUDO` (``sudo -n -u NAME``).
    """

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str
    how: str = SAME

    @property
    def switch(self) -> bool:
        """Whether programs must switch to this account (not the gateway's own)."""
        return self.how != SAME

    @classmethod
    def of_gateway(cls) -> JobOwner:
        """The account vizgate runs as."""
        uid = os.geteuid()
        try:
            entry = pwd.getpwuid(uid)
        except KeyError:
            return cls(str(uid), uid, os.getegid(), tuple(os.getgroups()), str(Path.home()))
        return cls(entry.pw_name, uid, entry.pw_gid, tuple(os.getgroups()), entry.pw_dir)

    @classmethod
    def of_user(cls, name: str, *, min_uid: int = DEFAULT_MIN_UID) -> JobOwner:
        """The account named ``name``, which sessions of the portal user ``name`` run as.

        Raises:
            JobOwnerError: no user name, no such account, an account that may not run
                sessions (root, a uid below ``min_uid``), or a gateway that cannot switch to it.
        """
        if not name:
            raise JobOwnerError(
                "sessions of this type run as their user's own account: open it from the "
                "portal, logged in"
            )
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise JobOwnerError(f"there is no account {name!r} on the gateway's host") from None
        if entry.pw_uid == 0 or entry.pw_uid < min_uid:
            raise JobOwnerError(
                f"the account {name!r} (uid {entry.pw_uid}) may not run sessions: only "
                f"accounts from uid {max(min_uid, 1)} on may"
            )
        if os.geteuid() == 0:
            how = AS_ROOT
        elif shutil.which("sudo"):
            how = WITH_SUDO
        else:
            raise JobOwnerError(
                f"the gateway cannot run sessions as {name!r}: it must run as root, or be "
                "allowed to run programs as its users with sudo"
            )
        groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir, how)

    def expand(self, path: str) -> Path:
        """``path`` with a leading ``~`` meaning this account's home."""
        if path == "~" or path.startswith("~/"):
            return Path(self.home + path[1:])
        return Path(path)

    def environment(self, environ: Mapping[str, str]) -> dict[str, str]:
        """``environ`` with this account's ``HOME``, ``USER`` and ``LOGNAME``."""
        if not self.switch:
            return dict(environ)
        return {**environ, "HOME": self.home, "USER": self.name, "LOGNAME": self.name}

    def command(
        self, argv: Sequence[str], environ: Mapping[str, str]
    ) -> tuple[list[str], dict[str, str], dict[str, Any]]:
        """How to run ``argv`` as this account with ``environ`` (given this account's
        :meth:`environment`): the argv, the environment and more keyword arguments of
        :func:`subprocess.run`."""
        environment = self.environment(environ)
        if self.how == AS_ROOT:
            ids = {"user": self.uid, "group": self.gid, "extra_groups": list(self.groups)}
            return list(argv), environment, ids
        if self.how == WITH_SUDO:
            # sudo starts the program with an environment of its own making: env -i sets
            # exactly the job's (no secret is among them: see slurm_commands).
            settings = [f"{name}={value}" for name, value in environment.items()]
            wrapped = ["sudo", "-n", "-u", self.name, "--", "env", "-i", *settings, *argv]
            return wrapped, {"PATH": environ.get("PATH", _DEFAULT_PATH)}, {}
        return list(argv), environment, {}


class OwnerFiles:
    """The session folder's files, handled as their owner (see the module's documentation).

    For the gateway's own account these are plain file operations; for another account each is
    a small program run as that account.
    """

    def __init__(self, owner: JobOwner) -> None:
        self.owner = owner

    def make_folder(self, base: Path, prefix: str) -> Path:
        """A new folder (mode 0700, a random suffix after ``prefix``) in ``base``, which is
        created (0700) if missing.

        Raises:
            OSError: it cannot be made; the message says why.
        """
        if not self.owner.switch:
            base.mkdir(mode=0o700, parents=True, exist_ok=True)
            return Path(tempfile.mkdtemp(prefix=prefix, dir=base))
        made = self._run(
            ["sh", "-c", 'umask 077 && mkdir -p -- "$1" && mktemp -d -- "$1/$2XXXXXXXX"', "sh",
             str(base), prefix],
        )  # fmt: skip
        folder = made.stdout.decode(errors="replace").strip()
        if made.returncode != 0 or not folder:
            raise OSError(self._failure(made))
        return Path(folder)

    def write_new(self, path: Path, data: bytes) -> None:
        """Create ``path`` (mode 0600; never an existing file) holding ``data``.

        Raises:
            OSError: it cannot be written.
        """
        if not self.owner.switch:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
            with os.fdopen(os.open(path, flags, 0o600), "wb") as stream:
                stream.write(data)
            return
        # noclobber: the redirection refuses an existing file (or a link in its place).
        written = self._run(
            ["sh", "-c", 'umask 077 && set -C && cat > "$1"', "sh", str(path)], data
        )
        if written.returncode != 0:
            raise OSError(self._failure(written))

    def read(self, path: Path, *, last: int | None = None) -> bytes | None:
        """What ``path`` holds (its ``last`` bytes only, if given), or None when it cannot be
        read (missing, not yet written)."""
        if not self.owner.switch:
            try:
                with path.open("rb") as stream:
                    if last is not None:
                        stream.seek(max(0, stream.seek(0, os.SEEK_END) - last))
                    return stream.read()
            except OSError:
                return None
        argv = (
            ["cat", "--", str(path)] if last is None else ["tail", "-c", str(last), "--", str(path)]
        )
        try:
            result = self._run(argv)
        except OSError:
            return None
        return result.stdout if result.returncode == 0 else None

    def remove_tree(self, path: Path) -> None:
        """Remove ``path`` and everything in it (quietly: what cannot be removed stays)."""
        if not self.owner.switch:
            shutil.rmtree(path, ignore_errors=True)
            return
        with contextlib.suppress(OSError):
            self._run(["rm", "-rf", "--", str(path)])

    def _run(self, argv: list[str], data: bytes = b"") -> subprocess.CompletedProcess[bytes]:
        owner = self.owner
        command, environment, ids = owner.command(
            argv, {"PATH": os.environ.get("PATH", _DEFAULT_PATH), "LC_ALL": "C"}
        )
        try:
            return subprocess.run(
                command,
                input=data,
                capture_output=True,
                timeout=_FILE_TIMEOUT,
                check=False,
                env=environment,
                cwd="/",
                **ids,
            )
        except subprocess.TimeoutExpired:
            raise OSError(
                f"{argv[0]} as {owner.name} did not finish within {_FILE_TIMEOUT:g} s"
            ) from None

    def _failure(self, result: subprocess.CompletedProcess[bytes]) -> str:
        said = result.stderr.decode(errors="replace").strip().splitlines()
        last = said[-1] if said else f"status {result.returncode}"
        if self.owner.how == WITH_SUDO and last.startswith("sudo:"):
            # sudo itself refused (no rule for this account, a password asked for): the site's
            # policy, not the user's files, is what must change.
            return (
                f"the gateway's account may not run programs as {self.owner.name} with sudo "
                f"({last}); a rule in /etc/sudoers.d must allow it (see docs/cluster.md)"
            )
        return f"as {self.owner.name}: {last}"
