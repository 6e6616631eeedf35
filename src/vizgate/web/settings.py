"""Django settings of vizgate.

They are read from a few environment variables, which ``vizgate serve`` sets (through
:func:`vizgate.web.setup_django`) before ``django.setup()``:

``VIZGATE_DATA_DIR``
    The data directory: the SQLite database ``vizgate.sqlite3`` and the ``secret_key`` file.
``VIZGATE_ALLOWED_HOSTS``
    Comma-separated host names the server answers to.
``VIZGATE_HTTPS``
    Non-empty when the server speaks https.
``VIZGATE_URL_PREFIX``
    The path the gateway is served under behind a reverse proxy (``/vizgate``), or empty.
``VIZGATE_REMOTE_USER_HEADER``, ``VIZGATE_REMOTE_GROUPS_HEADER``,
``VIZGATE_REMOTE_GROUPS_SEPARATOR``, ``VIZGATE_REMOTE_USER_CREATE``,
``VIZGATE_REMOTE_ADMIN_GROUP``, ``VIZGATE_REMOTE_USER_PATTERN``,
``VIZGATE_REMOTE_USER_LOWERCASE``, ``VIZGATE_LOGOUT_URL``
    Single sign-on through an authenticating reverse proxy (:mod:`vizgate.web.single_sign_on`).
``VIZGATE_DATABASE_URL``
    Set by the admin, not by the server: the database, when not SQLite in the data
    directory (see :mod:`vizgate.web.database`).

Settings of vizgate itself are prefixed ``VIZGATE_``; each has a default and a docstring.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from vizgate.web import default_data_dir
from vizgate.web.database import DATABASE_URL_ENV, database_settings

__all__: list[str] = []  # a settings module is read by Django, not imported from


def _env_list(name: str, default: list[str]) -> list[str]:
    value = os.environ.get(name, "")
    items = [item.strip() for item in value.split(",") if item.strip()]
    return items or default


def _secret_key(data_dir: Path, *, create: bool) -> str:
    """The key Django signs sessions and CSRF tokens with, kept in ``data_dir/secret_key``.

    Generated once and stored 0600, so sessions survive a restart. With ``create`` False and
    no file yet (the settings imported by a tool, not by the server), a key for this process
    only is used and nothing is written.
    """
    path = data_dir / "secret_key"
    try:
        key = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        key = ""
    if key:
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
        return key
    key = secrets.token_urlsafe(50)
    if not create:
        return key
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        # Another process created it between our read and our write; its key wins.
        return path.read_text(encoding="ascii").strip()
    with os.fdopen(descriptor, "w", encoding="ascii") as file:
        file.write(key + "\n")
    return key


# --- vizgate's own settings -------------------------------------------------------------------

VIZGATE_DATA_DIR: Path = Path(os.environ.get("VIZGATE_DATA_DIR") or default_data_dir())
"""The data directory: database and secret key. Default ``~/.local/share/vizgate``."""

VIZGATE_HTTPS: bool = bool(os.environ.get("VIZGATE_HTTPS"))
"""The server speaks https (``--cert`` / ``--key``): cookies are sent over https only."""

VIZGATE_URL_PREFIX: str = os.environ.get("VIZGATE_URL_PREFIX", "")
"""The path the gateway is served under (``--url-prefix``), e.g. ``/vizgate``; "" at the root.
Django builds every URL under it from the request (:class:`vizgate.web.asgi.Gateway` sets the
ASGI ``root_path``); the cookies are scoped to it, so other applications on the same host name
do not receive them."""

VIZGATE_REMOTE_USER_HEADER: str = os.environ.get("VIZGATE_REMOTE_USER_HEADER", "")
"""The header in which a trusted proxy names the signed-in user (``--remote-user-header``);
"" for no single sign-on."""

VIZGATE_REMOTE_GROUPS_HEADER: str = os.environ.get("VIZGATE_REMOTE_GROUPS_HEADER", "")
"""The header in which a trusted proxy lists the user's groups (``--remote-groups-header``);
"" to manage groups in vizgate."""

VIZGATE_REMOTE_GROUPS_SEPARATOR: str = os.environ.get("VIZGATE_REMOTE_GROUPS_SEPARATOR") or ","
"""What separates the groups in the groups header."""

VIZGATE_REMOTE_USER_CREATE: bool = os.environ.get("VIZGATE_REMOTE_USER_CREATE", "1") == "1"
"""Create the account of a user the proxy names at the first visit (else refuse unknown users)."""

VIZGATE_REMOTE_ADMIN_GROUP: str = os.environ.get("VIZGATE_REMOTE_ADMIN_GROUP", "")
"""The group of the groups header whose members are administrators (``--remote-admin-group``);
"" to make administrators in vizgate only."""

VIZGATE_REMOTE_USER_PATTERN: str = os.environ.get("VIZGATE_REMOTE_USER_PATTERN", "")
"""What the user header's value must match, its group ``user`` naming the account
(``--remote-user-pattern``); "" to take the value as the account's name."""

VIZGATE_REMOTE_USER_LOWERCASE: bool = os.environ.get("VIZGATE_REMOTE_USER_LOWERCASE") == "1"
"""Make the account name the proxy gives lower case (``--remote-user-lowercase``)."""

VIZGATE_LOGOUT_URL: str = os.environ.get("VIZGATE_LOGOUT_URL", "")
"""Where the browser goes after logging out of the portal (``--logout-url``), e.g. the proxy's
own logout; "" for the portal's login page."""

VIZGATE_DEFAULT_ALLOWED_HOSTS: list[str] = ["localhost", "127.0.0.1", "[::1]"]
"""Host names allowed when ``VIZGATE_ALLOWED_HOSTS`` is not set."""

# --- Django -----------------------------------------------------------------------------------

BASE_DIR = Path(__file__).resolve().parent

SECRET_KEY = _secret_key(VIZGATE_DATA_DIR, create="VIZGATE_DATA_DIR" in os.environ)

DEBUG = False

ALLOWED_HOSTS = _env_list("VIZGATE_ALLOWED_HOSTS", VIZGATE_DEFAULT_ALLOWED_HOSTS)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "vizgate.web.portal",
    "vizgate.web.api",
]

MIDDLEWARE = [
    # First, so that it sees the response last, with the cookies the others set.
    "vizgate.web.secure_cookies.SecureCookiesMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    *(["vizgate.web.single_sign_on.SingleSignOnMiddleware"] if VIZGATE_REMOTE_USER_HEADER else []),
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "vizgate.web.csp.ContentSecurityPolicyMiddleware",
]

ROOT_URLCONF = "vizgate.web.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "vizgate.web.portal.context.site_notice",
            ],
        },
    },
]

DATABASES = {"default": database_settings(os.environ.get(DATABASE_URL_ENV), VIZGATE_DATA_DIR)}
"""SQLite in the data directory, or the database ``VIZGATE_DATABASE_URL`` names."""

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# Static files (the portal's own JS and CSS, noVNC, the admin's) are found by the staticfiles
# finders in each app's ``static/`` folder and served by the gateway itself
# (:mod:`vizgate.web.portal.assets`); there is no collectstatic step. Relative, so that Django
# puts it under the request's script prefix (--url-prefix).
STATIC_URL = "static/"

# Every username/password check goes through the failed-login throttle.
AUTHENTICATION_BACKENDS = [
    "vizgate.web.portal.throttle.ThrottledModelBackend",
    *(["vizgate.web.single_sign_on.SingleSignOnBackend"] if VIZGATE_REMOTE_USER_HEADER else []),
]

LOGIN_URL = "portal:login"
LOGIN_REDIRECT_URL = "portal:catalogue"
LOGOUT_REDIRECT_URL = VIZGATE_LOGOUT_URL or "portal:login"

# The session cookie is all a browser needs to open its user's desktops: never readable from
# scripts, never sent by cross-site subrequests.
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_PATH = VIZGATE_URL_PREFIX + "/"
CSRF_COOKIE_PATH = VIZGATE_URL_PREFIX + "/"
SESSION_COOKIE_SAMESITE = "Lax"
# The portal's pages carry the CSRF token in their forms; no script needs the cookie.
CSRF_COOKIE_HTTPONLY = True

SESSION_COOKIE_SECURE = VIZGATE_HTTPS
CSRF_COOKIE_SECURE = VIZGATE_HTTPS

# vizgate.logs configures logging for the whole process (with redaction of secrets);
# Django must not install its own handlers next to it.
LOGGING_CONFIG = None
