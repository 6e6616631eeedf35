"""What every portal page's template is given: the notice to users (:mod:`vizgate.notice`)."""

from __future__ import annotations

import functools
from pathlib import Path

from django.conf import settings
from django.http import HttpRequest

from vizgate.notice import NoticeFile

__all__ = ["notice_file", "site_notice"]


@functools.cache
def notice_file() -> NoticeFile:
    """The notice to users in the gateway's data directory."""
    return NoticeFile.in_data_dir(Path(settings.VIZGATE_DATA_DIR))


def site_notice(request: HttpRequest) -> dict[str, str | None]:
    """A template context processor: ``site_notice``, the notice every page shows (or None)."""
    return {"site_notice": notice_file().text()}
