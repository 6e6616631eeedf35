"""The database settings: SQLite by default, PostgreSQL by URL, never the URL in a message."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vizgate.web.database import database_settings


def test_without_a_url_sqlite_lives_in_the_data_dir(tmp_path: Path) -> None:
    settings = database_settings(None, tmp_path)
    assert settings["ENGINE"] == "django.db.backends.sqlite3"
    assert settings["NAME"] == tmp_path / "vizgate.sqlite3"
    assert "journal_mode=WAL" in settings["OPTIONS"]["init_command"]


def test_a_postgresql_url_gives_every_part(tmp_path: Path) -> None:
    settings = database_settings(
        "postgresql://viz%40gate:s3cr%2Ft@db.example:6543/vizgate?sslmode=require", tmp_path
    )
    assert settings == {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "vizgate",
        "USER": "viz@gate",
        "PASSWORD": "s3cr/t",
        "HOST": "db.example",
        "PORT": "6543",
        "OPTIONS": {"sslmode": "require"},
        "CONN_MAX_AGE": 60,
    }


def test_a_sqlite_url_names_its_file(tmp_path: Path) -> None:
    settings = database_settings(f"sqlite://{tmp_path}/other.db", tmp_path)
    assert settings["NAME"] == tmp_path / "other.db"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://root:hunter2@db/vizgate", "unsupported database 'mysql'"),
        ("postgresql://root:hunter2@db/", "names no database"),
        ("sqlite://", "needs a file path"),
        ("hunter2", "unsupported database '(none)'"),
    ],
)
def test_bad_urls_are_refused_without_repeating_them(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as refused:
        database_settings(url, Path("/nowhere"))
    assert "hunter2" not in str(refused.value)
