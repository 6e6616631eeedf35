"""Logging for the server: one readable line per record, with secrets taken out.

Every record goes through one handler that writes lines like::

    2026-11-29 01:02:03 INFO vizgate.broker: Desktop#0: reserved for alice at 1600x1200

or, for log collectors (``vizgate serve --log-format json``), one JSON object per line
(:class:`JsonLineFormatter`)::

    {"time": "2026-11-29T01:02:03.456Z", "level": "INFO", "logger": "vizgate.broker",
     "message": "Desktop#0: reserved for alice at 1600x1200"}

The handler's :class:`RedactingFilter` formats each record's message and replaces secrets in
it with ``[redacted]`` before anything is written. uvicorn's access log prints request paths
with their query strings (``"GET /v1/reserve/X?security_token=..."``) and its WebSocket log
prints ``"WebSocket /websockify?token=..." [accepted]``; Django logs ``Not Found:
/v1/release/TOKEN``. So the filter redacts the values of query fields named ``token``,
``security_token``, ``password`` or ``passwd`` (and names ending in ``_token`` or
``_password``), the path segment after ``/v1/release/`` and after ``/share/`` (a share link's
secret), and the values of the ``Cookie``,
``Set-Cookie`` and ``Authorization`` headers that protocol debug logs print.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
import sys
from typing import TextIO

__all__ = [
    "DATE_FORMAT",
    "LINE_FORMAT",
    "LOG_FORMATS",
    "REDACTED",
    "JsonLineFormatter",
    "RedactingFilter",
    "configure_logging",
    "redact",
]

REDACTED = "[redacted]"
LINE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"

# ``name=value`` where the name is a whole word (not the tail of a longer name such as
# ``notoken``) that is, or ends in, token / password / passwd. The value runs to the next
# query separator, blank, quote or fragment.
_SECRET_FIELD = re.compile(
    r"(?<![\w.%-])((?:[\w.-]*[_.-])?(?:token|password|passwd))=([^&;\s\"'#<>]+)",
    re.IGNORECASE,
)
# HTTP headers that carry credentials, as protocol debug logs print them
# (``< cookie: sessionid=...``): the whole value goes.
_SECRET_HEADER = re.compile(
    r"^([<>]?\s*(?:cookie|set-cookie|authorization|proxy-authorization)\s*:\s*)(\S.*)$",
    re.IGNORECASE | re.MULTILINE,
)
# The token is a path segment in the seed's release URL, and so is a share link's secret.
_SECRET_PATH = re.compile(r"(/v1/release/|/share/)([^/?#\s\"'<>]+)")

# The loggers uvicorn writes to; they must reach our handler and nothing else.
_UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")


def redact(text: str) -> str:
    """``text`` with the values of secret query fields and release tokens replaced.

    Example:
        ``redact("GET /v1/status?security_token=abc&x=1")`` gives
        ``"GET /v1/status?security_token=[redacted]&x=1"``.
    """
    text = _SECRET_FIELD.sub(rf"\1={REDACTED}", text)
    text = _SECRET_HEADER.sub(rf"\1{REDACTED}", text)
    return _SECRET_PATH.sub(rf"\1{REDACTED}", text)


class RedactingFilter(logging.Filter):
    """Formats a record's message, exception and stack now, with secrets redacted.

    Attach it to a handler (not a logger), so records propagated from every logger pass it.
    The record is changed in place: its ``msg`` becomes the redacted text and ``args`` empty.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            # A broken format string: leave it to the handler, which reports such records.
            return True
        record.msg = redact(message)
        record.args = None
        color_message = getattr(record, "color_message", None)
        if isinstance(color_message, str):
            # uvicorn's own formatters would print this variant; it holds the same secrets.
            record.color_message = record.msg
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


#: The formats :func:`configure_logging` writes.
LOG_FORMATS = ("text", "json")


class JsonLineFormatter(logging.Formatter):
    """One JSON object per record, on one line: ``time`` (UTC, ISO 8601 with milliseconds),
    ``level``, ``logger``, ``message`` and, when there is one, ``exception`` (the traceback).

    The record's message is the :class:`RedactingFilter`'s by then; newlines stay inside the
    JSON strings, so a collector never splits a record.
    """

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.datetime.fromtimestamp(record.created, tz=datetime.UTC)
        entry: dict[str, str] = {
            "time": moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(
    level: int | str = "info", *, stream: TextIO | None = None, log_format: str = "text"
) -> logging.Handler:
    """Send every log record of the process through one redacting handler.

    The root logger gets the handler (replacing any it had); uvicorn's and Django's loggers
    lose their own handlers and propagate to it.

    Args:
        level: the lowest level written, a name (``"debug"``, ``"info"``, ...) or a number.
        stream: where lines go; standard error by default.
        log_format: ``"text"`` (one readable line per record) or ``"json"`` (one JSON object
            per line, :class:`JsonLineFormatter`).

    Returns:
        The handler, so a caller can remove it again.
    """
    numeric = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    if log_format not in LOG_FORMATS:
        raise ValueError(f"unknown log format {log_format!r}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    formatter = (
        JsonLineFormatter() if log_format == "json" else logging.Formatter(LINE_FORMAT, DATE_FORMAT)
    )
    handler.setFormatter(formatter)
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    for name in (*_UVICORN_LOGGERS, "django"):
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            logger.removeHandler(old)
        logger.propagate = True
        logger.setLevel(logging.NOTSET)
    return handler
