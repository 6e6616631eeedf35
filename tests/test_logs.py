"""Tests of :mod:`vizgate.logs`: the line format and the redaction of secrets.

Records are built the way uvicorn and Django build theirs (a format string and an ``args``
tuple), so the filter is tested on what the server really logs.
"""

from __future__ import annotations

import io
import json
import logging
import re
import sys
from collections.abc import Iterator

import pytest

from vizgate.logs import REDACTED, RedactingFilter, configure_logging, redact

SECRET = "Zq3-secret_VALUE.9"


def make_record(
    name: str, msg: str, args: tuple[object, ...] | None = None, level: int = logging.INFO
) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def format_through_filter(record: logging.LogRecord) -> str:
    """What a handler with the redacting filter writes for ``record``."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    handler.handle(record)
    return stream.getvalue()


# ---------------------------------------------------------------------------------------
# redact()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            f"GET /v1/reserve/Desktop?security_token={SECRET}&size=1600x1200",
            f"GET /v1/reserve/Desktop?security_token={REDACTED}&size=1600x1200",
        ),
        (
            f"GET /v1/reserve/Desktop?size=1600x1200&security_token={SECRET}",
            f"GET /v1/reserve/Desktop?size=1600x1200&security_token={REDACTED}",
        ),
        (f"/websockify?token={SECRET}", f"/websockify?token={REDACTED}"),
        (f"/websockify?path=x&token={SECRET}#top", f"/websockify?path=x&token={REDACTED}#top"),
        (f"/login?user=al&password={SECRET}", f"/login?user=al&password={REDACTED}"),
        (f"/login?user=al&passwd={SECRET}", f"/login?user=al&passwd={REDACTED}"),
        (f"/x?Password={SECRET}", f"/x?Password={REDACTED}"),
        (
            f"/x?vnc_password={SECRET}&access_token={SECRET}",
            f"/x?vnc_password={REDACTED}&access_token={REDACTED}",
        ),
        (f"Not Found: /v1/release/{SECRET}", f"Not Found: /v1/release/{REDACTED}"),
        (
            f'"GET /v1/release/{SECRET}?security_token={SECRET} HTTP/1.1" 200',
            f'"GET /v1/release/{REDACTED}?security_token={REDACTED} HTTP/1.1" 200',
        ),
        (f"'/x?token={SECRET}'", f"'/x?token={REDACTED}'"),
        # A share link's secret.
        (f'"GET /share/{SECRET}/ HTTP/1.1" 302', f'"GET /share/{REDACTED}/ HTTP/1.1" 302'),
        # Header lines as uvicorn's WebSocket debug log prints them.
        (f"< cookie: sessionid={SECRET}; csrftoken=x", f"< cookie: {REDACTED}"),
        (f"> Set-Cookie: sessionid={SECRET}; Path=/", f"> Set-Cookie: {REDACTED}"),
        (f"< authorization: Basic {SECRET}", f"< authorization: {REDACTED}"),
        (f"request\n< Cookie: a={SECRET}\n< host: h", f"request\n< Cookie: {REDACTED}\n< host: h"),
    ],
)
def test_redact_replaces_secret_values(text: str, expected: str) -> None:
    assert redact(text) == expected
    assert SECRET not in redact(text)
    assert redact(redact(text)) == redact(text)


@pytest.mark.parametrize(
    "text",
    [
        "GET /v1/status HTTP/1.1",
        "GET /v1/reserve/Desktop?size=1600x1200&username=alice",
        "/x?notoken=abc&tokens=2",  # other names that merely contain the word
        "the token is released",  # the word itself, not a field
        "< host: 127.0.0.1:8000",
        "the cookie: is a header",  # not at the start of a line
        "/x?token=",  # nothing to hide
        "Desktop#0: reserved for alice at 1600x1200 (session 025b0bdab40ce458)",
    ],
)
def test_redact_leaves_other_text_alone(text: str) -> None:
    assert redact(text) == text


# ---------------------------------------------------------------------------------------
# RedactingFilter on records shaped like the server's


def test_uvicorn_access_record_is_redacted() -> None:
    # uvicorn.protocols.http: access_logger.info('%s - "%s %s HTTP/%s" %d', ...)
    record = make_record(
        "uvicorn.access",
        '%s - "%s %s HTTP/%s" %d',
        (
            "127.0.0.1:50432",
            "GET",
            f"/v1/reserve/Desktop?security_token={SECRET}&size=1600x1200",
            "1.1",
            200,
        ),
    )
    line = format_through_filter(record)
    assert line == (
        'uvicorn.access: 127.0.0.1:50432 - "GET '
        f'/v1/reserve/Desktop?security_token={REDACTED}&size=1600x1200 HTTP/1.1" 200\n'
    )
    assert record.args is None
    assert record.getMessage() == line.split(": ", 1)[1].rstrip("\n")


def test_uvicorn_websocket_record_is_redacted() -> None:
    # uvicorn.protocols.websockets: logger.info('%s - "WebSocket %s" [accepted]', ...)
    record = make_record(
        "uvicorn.error",
        '%s - "WebSocket %s" [accepted]',
        ("127.0.0.1:50434", f"/websockify?token={SECRET}"),
    )
    line = format_through_filter(record)
    assert SECRET not in line
    assert f'"WebSocket /websockify?token={REDACTED}" [accepted]' in line


def test_uvicorn_color_message_is_redacted_too() -> None:
    record = make_record("uvicorn.error", "%s", (f"/x?token={SECRET}",))
    record.color_message = "%s"
    format_through_filter(record)
    assert SECRET not in record.color_message


def test_django_not_found_record_for_a_release_is_redacted() -> None:
    # django.utils.log.log_response: logger.warning("%s: %s", reason_phrase, request.path)
    record = make_record(
        "django.request", "%s: %s", ("Not Found", f"/v1/release/{SECRET}"), logging.WARNING
    )
    assert format_through_filter(record) == f"django.request: Not Found: /v1/release/{REDACTED}\n"


def test_exception_text_and_stack_are_redacted() -> None:
    try:
        raise RuntimeError(f"could not open /websockify?token={SECRET}")
    except RuntimeError:
        record = logging.LogRecord(
            "vizgate.tunnel", logging.ERROR, __file__, 1, "relay failed", None, sys.exc_info()
        )
    record.stack_info = f"Stack (most recent call last):\n  url=/v1/release/{SECRET}"
    output = format_through_filter(record)
    assert "RuntimeError" in output
    assert f"token={REDACTED}" in output
    assert f"/v1/release/{REDACTED}" in output
    assert SECRET not in output


def test_a_broken_record_is_left_to_the_handler() -> None:
    record = make_record("x", "%d apples", ("many",))
    assert RedactingFilter().filter(record) is True
    assert record.args == ("many",)


# ---------------------------------------------------------------------------------------
# configure_logging()


@pytest.fixture
def clean_logging() -> Iterator[None]:
    """Put the root logger and uvicorn's/Django's loggers back as they were."""
    root = logging.getLogger()
    names = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi", "django")
    saved_root = (list(root.handlers), root.level)
    saved = {
        name: (list(logger.handlers), logger.level, logger.propagate)
        for name in names
        for logger in [logging.getLogger(name)]
    }
    yield
    root.handlers[:] = saved_root[0]
    root.setLevel(saved_root[1])
    for name, (handlers, level, propagate) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate


LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (?P<level>[A-Z]+) (?P<name>[\w.]+): (?P<msg>.*)$"
)


@pytest.mark.usefixtures("clean_logging")
def test_configure_logging_writes_one_redacted_line_per_record() -> None:
    # uvicorn's own configuration leaves handlers on its loggers; they must go.
    stray = io.StringIO()
    logging.getLogger("uvicorn.access").addHandler(logging.StreamHandler(stray))
    logging.getLogger("uvicorn.access").propagate = False

    stream = io.StringIO()
    handler = configure_logging("info", stream=stream)
    assert logging.getLogger().handlers == [handler]

    logging.getLogger("vizgate.broker").info("Desktop#%d: reserved", 0)
    logging.getLogger("vizgate.broker").debug("not shown at info")
    logging.getLogger("uvicorn.access").info(
        '%s - "%s %s HTTP/%s" %d',
        "127.0.0.1:1",
        "GET",
        f"/v1/status?security_token={SECRET}",
        "1.1",
        200,
    )
    logging.getLogger("django.request").warning("%s: %s", "Not Found", f"/v1/release/{SECRET}")

    lines = stream.getvalue().splitlines()
    parsed = [LINE.match(line) for line in lines]
    assert all(parsed), lines
    assert [(m["level"], m["name"], m["msg"]) for m in parsed if m] == [
        ("INFO", "vizgate.broker", "Desktop#0: reserved"),
        (
            "INFO",
            "uvicorn.access",
            f'127.0.0.1:1 - "GET /v1/status?security_token={REDACTED} HTTP/1.1" 200',
        ),
        ("WARNING", "django.request", f"Not Found: /v1/release/{REDACTED}"),
    ]
    assert stray.getvalue() == ""


@pytest.mark.usefixtures("clean_logging")
def test_configure_logging_takes_levels_by_name_and_number() -> None:
    configure_logging("DEBUG", stream=io.StringIO())
    assert logging.getLogger().level == logging.DEBUG
    configure_logging(logging.WARNING, stream=io.StringIO())
    assert logging.getLogger().level == logging.WARNING
    with pytest.raises(ValueError, match="unknown log level"):
        configure_logging("chatty", stream=io.StringIO())


@pytest.mark.usefixtures("clean_logging")
def test_json_lines_are_one_redacted_object_per_record() -> None:
    stream = io.StringIO()
    configure_logging("info", stream=stream, log_format="json")
    logging.getLogger("uvicorn.access").info('"GET /v1/status?security_token=%s"', SECRET)
    try:
        raise RuntimeError(f"failed with token={SECRET}\nsecond line")
    except RuntimeError:
        logging.getLogger("vizgate.broker").exception("Desktop#%d: start() raised", 0)

    lines = stream.getvalue().splitlines()
    assert len(lines) == 2, lines
    access, failure = (json.loads(line) for line in lines)
    assert set(access) == {"time", "level", "logger", "message"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", access["time"])
    assert (access["level"], access["logger"]) == ("INFO", "uvicorn.access")
    assert access["message"] == f'"GET /v1/status?security_token={REDACTED}"'
    assert (failure["level"], failure["message"]) == ("ERROR", "Desktop#0: start() raised")
    assert failure["exception"].startswith("Traceback (most recent call last):")
    assert f"token={REDACTED}\nsecond line" in failure["exception"]
    assert SECRET not in stream.getvalue()
    with pytest.raises(ValueError, match="unknown log format"):
        configure_logging("info", stream=io.StringIO(), log_format="xml")
