"""What a trusted proxy may say: the identity header guard as an ASGI layer, and the checks of
``vizgate serve``'s single sign-on options (unit tests; the gateway is in test_single_sign_on)."""

from __future__ import annotations

import argparse
import asyncio
import re
from typing import Any

import pytest

from vizgate.web.proxy_trust import (
    SingleSignOn,
    account_name,
    add_single_sign_on_arguments,
    header_name_problem,
    logout_url_problem,
    single_sign_on_of,
    trusted_proxy_layers,
)

PROXY = "192.0.2.10"
BROWSER = "198.51.100.7"


def seen_by_the_application(
    client: str, headers: list[tuple[bytes, bytes]], kind: str = "http"
) -> dict[str, Any]:
    """The scope the application gets behind the layers, for a request from ``client``."""
    seen: dict[str, Any] = {}

    async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.update(scope)

    layers = trusted_proxy_layers(application, PROXY, ["X-Remote-User", "X-Remote-Groups"])
    scope = {"type": kind, "client": (client, 40000), "headers": headers, "scheme": "http"}

    async def nothing() -> None:
        return None

    asyncio.run(layers(scope, nothing, nothing))  # type: ignore[arg-type]
    return seen


def test_a_trusted_proxys_identity_headers_reach_the_application() -> None:
    headers = [
        (b"x-remote-user", b"carol"),
        (b"x-remote-groups", b"viz,cfd"),
        (b"x-forwarded-for", BROWSER.encode()),
        (b"accept", b"text/html"),
    ]
    for kind in ("http", "websocket"):
        seen = seen_by_the_application(PROXY, headers, kind)
        assert seen["headers"] == headers
        # uvicorn's layer still did its work inside the guard: the browser's address.
        assert seen["client"][0] == BROWSER


def test_identity_headers_from_any_other_address_are_removed() -> None:
    headers = [
        (b"x-remote-user", b"root"),
        (b"accept", b"text/html"),
        (b"X-Remote-Groups", b"admins"),
        (b"x-forwarded-for", b"203.0.113.9"),
    ]
    seen = seen_by_the_application(BROWSER, headers)
    assert seen["headers"] == [(b"accept", b"text/html"), (b"x-forwarded-for", b"203.0.113.9")]
    # Nor is the X-Forwarded-For of an untrusted peer believed.
    assert seen["client"][0] == BROWSER


def test_underscore_spellings_are_removed_even_from_the_proxy() -> None:
    headers = [(b"x_remote_user", b"root"), (b"x-remote-user", b"carol")]
    assert seen_by_the_application(PROXY, headers)["headers"] == [(b"x-remote-user", b"carol")]


def test_a_header_the_proxy_sent_twice_is_not_believed(caplog: pytest.LogCaptureFixture) -> None:
    headers = [
        (b"x-remote-user", b"root"),
        (b"x-remote-user", b"carol"),
        (b"x-remote-groups", b"viz"),
    ]
    seen = seen_by_the_application(PROXY, headers)
    assert seen["headers"] == [(b"x-remote-groups", b"viz")]
    assert "carried an identity header twice" in caplog.text


def test_requests_without_identity_headers_pass_unchanged() -> None:
    headers = [(b"accept", b"*/*")]
    assert seen_by_the_application(BROWSER, headers)["headers"] is headers


def test_without_single_sign_on_only_uvicorns_layer_is_there() -> None:
    async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
        return None

    layers = trusted_proxy_layers(application, PROXY)
    assert type(layers).__name__ == "ProxyHeadersMiddleware"


def test_uvicorns_trusted_hosts_answer_membership_as_the_guard_asks() -> None:
    # The guard asks uvicorn's ProxyHeadersMiddleware.trusted_hosts (not a documented API)
    # whether a peer is a proxy: this fails loudly if that changes.
    from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

    trusted = ProxyHeadersMiddleware(lambda *args: None, "127.0.0.1, 10.0.0.0/8").trusted_hosts  # type: ignore[arg-type]
    assert "127.0.0.1" in trusted
    assert "10.1.2.3" in trusted
    assert "192.0.2.1" not in trusted
    assert None not in trusted


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("X-Remote-User", None),
        ("REMOTE-USER", None),
        ("X_Remote_User", "is not a header name"),
        ("X-Remote-User:", "is not a header name"),
        ("-X", "is not a header name"),
        ("", "is not a header name"),
        ("Cookie", "already means something else"),
        ("x-forwarded-for", "already means something else"),
    ],
)
def test_header_names(name: str, problem: str | None) -> None:
    found = header_name_problem(name)
    assert (found is None) if problem is None else (found is not None and problem in found)


@pytest.mark.parametrize(
    ("url", "good"),
    [
        ("", True),
        ("/oauth2/sign_out", True),
        ("https://login.example.org/logout?next=x", True),
        ("http://login.example.org/", True),
        ("javascript:alert(1)", False),
        ("//evil.example.org/", False),
        ("https:///nohost", False),
        ("logout", False),
    ],
)
def test_logout_urls(url: str, good: bool) -> None:
    assert (logout_url_problem(url) is None) == good


def parsed(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_single_sign_on_arguments(parser)
    return parser.parse_args(argv)


def test_single_sign_on_options() -> None:
    assert single_sign_on_of(parsed(), "127.0.0.1") is None
    sign_on = single_sign_on_of(
        parsed(
            "--remote-user-header",
            "X-Remote-User",
            "--remote-groups-header",
            "X-Groups",
            "--remote-groups-separator",
            ";",
            "--no-create-remote-users",
            "--remote-admin-group",
            " viz-admins ",
        ),
        "127.0.0.1,::1",
    )
    assert sign_on == SingleSignOn(
        "X-Remote-User", "X-Groups", ";", create_users=False, admin_group="viz-admins"
    )
    assert sign_on.headers == ["X-Remote-User", "X-Groups"]
    assert sign_on.environment()["VIZGATE_REMOTE_USER_CREATE"] == "0"
    assert sign_on.environment()["VIZGATE_REMOTE_ADMIN_GROUP"] == "viz-admins"
    assert sign_on.environment()["VIZGATE_REMOTE_USER_PATTERN"] == ""
    assert sign_on.environment()["VIZGATE_REMOTE_USER_LOWERCASE"] == ""
    pattern = r"(?P<user>[^@]+)@EXAMPLE\.ORG"
    with_pattern = single_sign_on_of(
        parsed(
            "--remote-user-header", "X-U", "--remote-user-pattern", pattern,
            "--remote-user-lowercase",
        ),
        "127.0.0.1",
    )  # fmt: skip
    assert with_pattern is not None
    assert with_pattern.environment()["VIZGATE_REMOTE_USER_PATTERN"] == pattern
    assert with_pattern.environment()["VIZGATE_REMOTE_USER_LOWERCASE"] == "1"


REALM = r"(?P<user>[^@]+)@EXAMPLE\.ORG"


@pytest.mark.parametrize(
    ("value", "pattern", "account"),
    [
        (" alice ", "", "alice"),
        ("alice@EXAMPLE.ORG", "", "alice@EXAMPLE.ORG"),
        ("alice@EXAMPLE.ORG", REALM, "alice"),
        (" alice@EXAMPLE.ORG\t", REALM, "alice"),
        # The whole value must match: not a prefix, not a suffix, not another realm.
        ("alice@EXAMPLE.ORG.evil", REALM, None),
        ("mallory@OTHER.ORG", REALM, None),
        ("alice", REALM, None),
        ("eve@attacker@EXAMPLE.ORG", REALM, None),
        # A pattern without groups only filters.
        ("alice", "[a-z]+", "alice"),
        ("Alice", "[a-z]+", None),
        # An optional group that took no part: an empty name, which accounts refuse.
        ("@EXAMPLE.ORG", r"(?:(?P<user>[^@]+))?@EXAMPLE\.ORG", ""),
    ],
)
def test_the_account_a_user_header_names(value: str, pattern: str, account: str | None) -> None:
    assert account_name(value, pattern) == account


def test_lower_case_accounts_keep_the_pattern_on_the_value_as_sent() -> None:
    assert account_name(" Alice ", "", lowercase=True) == "alice"
    realm = r"(?P<user>[^@]+)@EXAMPLE\.ORG"
    assert account_name("Alice@EXAMPLE.ORG", realm, lowercase=True) == "alice"
    assert account_name("alice@example.org", realm, lowercase=True) is None


@pytest.mark.parametrize(
    ("argv", "trusted", "said"),
    [
        (("--remote-groups-header", "X-G"), "127.0.0.1", "needs --remote-user-header"),
        (("--no-create-remote-users",), "127.0.0.1", "needs --remote-user-header"),
        (("--remote-user-header", "X-U", "--remote-groups-header", "x-u"), "127.0.0.1", "same"),
        (("--remote-user-header", "X-U", "--remote-groups-separator", " "), "127.0.0.1", "empty"),
        (("--remote-user-header", "X-U"), "127.0.0.1, *", "trusts every address"),
        (("--remote-user-header", "X-U"), "0.0.0.0/0", "trusts every address"),
        (("--remote-user-header", "Host"), "127.0.0.1", "--remote-user-header: 'Host'"),
        (("--remote-user-pattern", "(?P<user>.+)"), "127.0.0.1", "needs --remote-user-header"),
        (("--remote-user-lowercase",), "127.0.0.1", "needs --remote-user-header"),
        (
            ("--remote-user-header", "X-U", "--remote-user-pattern", "(?P<user>[a-z]+"),
            "127.0.0.1",
            "is not a regular expression: missing ), unterminated subpattern",
        ),
        (
            ("--remote-user-header", "X-U", "--remote-user-pattern", "([a-z]+)@(EXAMPLE|TEST)"),
            "127.0.0.1",
            "none named 'user'",
        ),
    ],
)
def test_bad_single_sign_on_options(argv: tuple[str, ...], trusted: str, said: str) -> None:
    with pytest.raises(ValueError, match=re.escape(said)):
        single_sign_on_of(parsed(*argv), trusted)
