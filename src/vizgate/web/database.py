"""The gateway's database: SQLite in the data directory by default, PostgreSQL by URL.

An admin points vizgate at PostgreSQL with the environment variable ``VIZGATE_DATABASE_URL``
(``postgresql://USER:PASSWORD@HOST:PORT/NAME``; install vizgate with its ``postgres`` extra for
the driver). It is read from the environment only, never from the command line, where other
users of the machine could read the password in the process list; nothing logs it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

__all__ = ["DATABASE_URL_ENV", "database_settings", "describe_database"]

DATABASE_URL_ENV = "VIZGATE_DATABASE_URL"

_POSTGRES_SCHEMES = frozenset({"postgres", "postgresql", "pgsql"})


def database_settings(url: str | None, data_dir: Path) -> dict[str, Any]:
    """Django's ``DATABASES["default"]`` for ``url``, or SQLite in ``data_dir`` without one.

    Raises:
        ValueError: the URL is not a PostgreSQL or SQLite URL, or names no database. The
            message never repeats the URL (it may hold a password).
    """
    if not url:
        return _sqlite(data_dir / "vizgate.sqlite3")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "sqlite":
        path = unquote(parts.path)
        if not path or path == "/":
            raise ValueError(f"{DATABASE_URL_ENV}: a sqlite URL needs a file path")
        return _sqlite(Path(path))
    if scheme not in _POSTGRES_SCHEMES:
        raise ValueError(
            f"{DATABASE_URL_ENV}: unsupported database {scheme or '(none)'!r}; "
            "use postgresql://USER:PASSWORD@HOST:PORT/NAME or sqlite:///PATH"
        )
    name = unquote(parts.path.lstrip("/"))
    if not name:
        raise ValueError(f"{DATABASE_URL_ENV}: the URL names no database (…/NAME)")
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": name,
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "",
        "PORT": str(parts.port or ""),
        "OPTIONS": dict(parse_qsl(parts.query)),
        # Connections are reused by the store's thread and by views.
        "CONN_MAX_AGE": 60,
    }


def _sqlite(path: Path) -> dict[str, Any]:
    return {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": path,
        "OPTIONS": {
            # The server writes from several threads; WAL lets readers go on while one writes,
            # and IMMEDIATE takes the write lock up front instead of failing mid-transaction.
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL",
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
        },
    }


def describe_database(settings: dict[str, Any]) -> str:
    """Which database ``settings`` (Django's ``DATABASES["default"]``) name, for messages: the
    file, or the server, database and account; never the password."""
    if settings["ENGINE"].endswith("sqlite3"):
        return f"SQLite {settings['NAME']}"
    where = settings.get("HOST") or "the local socket"
    if settings.get("PORT"):
        where += f":{settings['PORT']}"
    account = f" as {settings['USER']}" if settings.get("USER") else ""
    return f"PostgreSQL database {settings['NAME']} on {where}{account}"
