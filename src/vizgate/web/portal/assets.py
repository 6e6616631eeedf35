"""Static files served by the gateway itself: the portal's JS and CSS, noVNC, the admin's.

One process serves everything, so there is no web server in front to hand static files to.
Files are looked up with Django's staticfiles finders (each app's ``static/`` folder), which
needs no ``collectstatic`` step. Only regular files are served: a folder is not listed, a path
with a ``..``, an empty or a hidden (``.name``) part is refused, and the finders' storages refuse
anything outside their folders. ES modules need a JavaScript content type (the HTML standard's
module scripts check it), so types come from a fixed table before ``mimetypes``, whose answers
vary between systems.
"""

from __future__ import annotations

import asyncio
import mimetypes
import os
import stat
from dataclasses import dataclass

from django.contrib.staticfiles import finders
from django.core.exceptions import SuspiciousFileOperation
from django.http import HttpRequest, HttpResponse, HttpResponseBase, HttpResponseNotModified
from django.utils.http import http_date, parse_http_date_safe
from django.views.decorators.csrf import csrf_exempt

__all__ = ["CONTENT_TYPES", "content_type_of", "find_static", "is_safe_path", "serve"]

#: Content types by file suffix; text types are served as UTF-8.
CONTENT_TYPES: dict[str, str] = {
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".css": "text/css",
    ".html": "text/html",
    ".json": "application/json",
    ".map": "application/json",
    ".txt": "text/plain",
    ".md": "text/plain",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".gif": "image/gif",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".ico": "image/vnd.microsoft.icon",
    ".webp": "image/webp",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".ttf": "font/ttf",
    ".otf": "font/otf",
    ".wasm": "application/wasm",
}

_TEXT_TYPES = ("text/", "application/json", "image/svg+xml")

# A browser revalidates with If-Modified-Since; the answer is a 304 when nothing changed.
_CACHE_CONTROL = "no-cache"


def is_safe_path(path: str) -> bool:
    """Is ``path`` (already URL-decoded) a plain relative path to a visible file?"""
    if not path or path.startswith("/") or "\\" in path:
        return False
    if any(ord(char) < 32 or char == "\x7f" for char in path):
        return False
    return all(part and not part.startswith(".") for part in path.split("/"))


def content_type_of(path: str) -> str:
    """The ``Content-Type`` of a static file, by its name."""
    suffix = os.path.splitext(path)[1].lower()
    kind = CONTENT_TYPES.get(suffix) or mimetypes.guess_type(path)[0] or "application/octet-stream"
    if kind.startswith(_TEXT_TYPES):
        return f"{kind}; charset=utf-8"
    return kind


@dataclass(frozen=True)
class _Found:
    path: str
    size: int
    mtime: float


def find_static(path: str) -> str | None:
    """The file a static URL path names, or None (unsafe, missing, or not a regular file)."""
    if not is_safe_path(path):
        return None
    try:
        found = finders.find(path)
    except SuspiciousFileOperation:
        return None
    if not isinstance(found, str):
        return None
    try:
        info = os.stat(found)
    except OSError:
        return None
    return found if stat.S_ISREG(info.st_mode) else None


def _lookup(path: str) -> _Found | None:
    found = find_static(path)
    if found is None:
        return None
    info = os.stat(found)
    return _Found(found, info.st_size, info.st_mtime)


def _read(path: str) -> bytes:
    with open(path, "rb") as file:
        return file.read()


# Exempt from CSRF: nothing here changes state, and another method must get 405, not 403.
@csrf_exempt
async def serve(request: HttpRequest, path: str) -> HttpResponseBase:
    """``GET /static/<path>``: one static file, or 404."""
    if request.method not in ("GET", "HEAD"):
        refused = HttpResponse(status=405)
        refused["Allow"] = "GET, HEAD"
        return refused
    # Finding and reading touch the disk: off the event loop.
    found = await asyncio.to_thread(_lookup, path)
    if found is None:
        return HttpResponse("Not found", status=404, content_type="text/plain; charset=utf-8")
    last_modified = http_date(found.mtime)
    since = parse_http_date_safe(request.headers.get("If-Modified-Since", ""))
    if since is not None and int(found.mtime) <= since:
        not_modified = HttpResponseNotModified()
        not_modified["Last-Modified"] = last_modified
        not_modified["Cache-Control"] = _CACHE_CONTROL
        return not_modified
    body = b"" if request.method == "HEAD" else await asyncio.to_thread(_read, found.path)
    response = HttpResponse(body, content_type=content_type_of(found.path))
    response["Content-Length"] = str(found.size)
    response["Last-Modified"] = last_modified
    response["Cache-Control"] = _CACHE_CONTROL
    return response
