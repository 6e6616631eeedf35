"""The Django project of vizgate: settings, URLs and the ASGI application of the gateway.

Django is configured through a few environment variables that :func:`setup_django` sets
before ``django.setup()`` (see :mod:`vizgate.web.settings`); the server calls it once, before
its event loop starts, because migrations are synchronous database work.

Importing this package does not import Django.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vizgate.web.proxy_trust import SingleSignOn

__all__ = [
    "SETTINGS_MODULE",
    "check_data_dir_owner",
    "data_dir_of",
    "default_data_dir",
    "setup_django",
]

SETTINGS_MODULE = "vizgate.web.settings"


def default_data_dir() -> Path:
    """Where vizgate keeps its database and secret key when ``--data-dir`` is not given.

    ``$XDG_DATA_HOME/vizgate``, else ``~/.local/share/vizgate`` (XDG Base Directory spec).
    """
    base = os.environ.get("XDG_DATA_HOME", "")
    # The XDG spec says a relative value is invalid and must be ignored.
    root = Path(base) if os.path.isabs(base) else Path.home() / ".local" / "share"
    return root / "vizgate"


def data_dir_of(given: str | None) -> Path:
    """The data directory a ``--data-dir`` option names (``~`` expanded), or the default."""
    return Path(given).expanduser() if given else default_data_dir()


def check_data_dir_owner(data_dir: Path) -> None:
    """Refuse to work in an existing data directory that belongs to another account.

    Run as root on the gateway's directory, a command would leave files there the gateway
    cannot open: SQLite's ``-wal`` and ``-shm`` beside the database, a pause or a notice.

    Raises:
        PermissionError: it belongs to another account; the message says which and what to do.
    """
    try:
        owner = data_dir.stat().st_uid
    except FileNotFoundError:
        return
    if owner == os.geteuid():
        return
    import pwd

    try:
        name = pwd.getpwuid(owner).pw_name
    except KeyError:
        name = f"uid {owner}"
    raise PermissionError(
        errno.EACCES,
        f"it belongs to {name}: run vizgate as that account (e.g. runuser -u {name} -- vizgate "
        f"...), or the files it writes there would be unusable to the gateway",
    )


def setup_django(
    data_dir: Path,
    *,
    allowed_hosts: Sequence[str],
    https: bool = False,
    url_prefix: str = "",
    single_sign_on: SingleSignOn | None = None,
    logout_url: str = "",
    migrate: bool = True,
) -> None:
    """Configure and set up Django for this process, and bring the database up to date.

    Args:
        data_dir: the data directory (created 0700 if missing); holds the SQLite database and
            the secret key.
        allowed_hosts: the host names the server answers to (Django's ``ALLOWED_HOSTS``).
        https: the server speaks https, so cookies are marked ``Secure``.
        url_prefix: the path the gateway is served under (``/vizgate``), or "".
        single_sign_on: how a trusted proxy names the signed-in user, if it does.
        logout_url: where the browser goes after logging out ("": the login page).
        migrate: apply migrations (quietly).

    Raises:
        OSError: the data directory cannot be created, belongs to another account, or the
            secret key cannot be written.
        DatabaseSetupError: the database cannot be used (a bad URL, no driver, a server that
            refuses or cannot be reached).
    """
    check_data_dir_owner(data_dir)
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.environ["VIZGATE_DATA_DIR"] = str(data_dir)
    os.environ["VIZGATE_ALLOWED_HOSTS"] = ",".join(allowed_hosts)
    os.environ["VIZGATE_HTTPS"] = "1" if https else ""
    os.environ["VIZGATE_URL_PREFIX"] = url_prefix
    os.environ["VIZGATE_LOGOUT_URL"] = logout_url
    for name in (
        "VIZGATE_REMOTE_USER_HEADER",
        "VIZGATE_REMOTE_GROUPS_HEADER",
        "VIZGATE_REMOTE_ADMIN_GROUP",
        "VIZGATE_REMOTE_USER_PATTERN",
        "VIZGATE_REMOTE_USER_LOWERCASE",
    ):
        os.environ.pop(name, None)
    if single_sign_on is not None:
        os.environ.update(single_sign_on.environment())
    # Unconditionally: a DJANGO_SETTINGS_MODULE left in the shell by another project must not
    # turn vizgate into that project.
    os.environ["DJANGO_SETTINGS_MODULE"] = SETTINGS_MODULE

    import django
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import call_command
    from django.db import Error as DjangoDatabaseError

    from vizgate.exceptions import DatabaseSetupError

    try:
        django.setup()
    except ValueError as exc:
        # vizgate.web.database refuses a bad VIZGATE_DATABASE_URL (without repeating it).
        raise DatabaseSetupError(str(exc)) from None
    from vizgate.web.database_outage import OutageLogFilter, outage_reason

    request_log = logging.getLogger("django.request")
    if not any(isinstance(f, OutageLogFilter) for f in request_log.filters):
        request_log.addFilter(OutageLogFilter())
    if migrate:
        from django.conf import settings

        from vizgate.web.database import describe_database

        where = describe_database(settings.DATABASES["default"])
        try:
            call_command("migrate", interactive=False, verbosity=0)
        except ImproperlyConfigured as exc:
            # The driver is missing: "Error loading psycopg2 or psycopg module".
            raise DatabaseSetupError(
                f"cannot use the {where}: {exc} (install vizgate's postgres extra: "
                "pip install 'vizgate[postgres]')"
            ) from None
        except DjangoDatabaseError as exc:
            raise DatabaseSetupError(f"cannot use the {where}: {outage_reason(exc)}") from None
