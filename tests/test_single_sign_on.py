"""Single sign-on through an authenticating reverse proxy: a real gateway process, requests that
carry the headers such a proxy sets (``--remote-user-header``, ``--remote-groups-header``).

The tests' connections come from 127.0.0.1, which the gateway trusts as a proxy by default; a
gateway told to trust another address (``FORWARDED_ALLOW_IPS``) shows what a browser reaching
it directly gets.
"""

from __future__ import annotations

import contextlib
import html
import http.client
import re
import sqlite3
import urllib.parse
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from gateway import GatewayProcess, launch_gateway, run_python, start_gateway, write_config
from portal_client import Account, Browser, Page, create_accounts, open_socket
from support import scaled, wait_until
from vizgate.testing.doubles import RFB_GREETING
from vizgate.web.portal.auth import SIGNED_IN_ELSEWHERE_REFUSAL

pytestmark = pytest.mark.integration

DESKTOP = "Desktop"
RENDERING = "Cluster Rendering"
RENDERERS = "renderers"
USER = "X-Remote-User"
GROUPS = "X-Remote-Groups"
LOCAL_ADMIN = Account("root", "root-keeps-a-local-login-73", admin=True)
SSO = ("--remote-user-header", USER, "--remote-groups-header", GROUPS)


def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "run" / "data"


def start(tmp_path: Path, *args: str, env: Mapping[str, str] | None = None) -> GatewayProcess:
    config = write_config(
        tmp_path / "config",
        {
            DESKTOP: {"options": {"behaviour": "starts"}},
            RENDERING: {"options": {"behaviour": "starts", "group": RENDERERS}},
        },
    )
    create_accounts(data_dir(tmp_path), [LOCAL_ADMIN], groups=[RENDERERS])
    return start_gateway(tmp_path / "run", config, *args, env=env)


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[GatewayProcess]:
    gateway = start(tmp_path, *SSO)
    try:
        yield gateway
    finally:
        gateway.stop()


def signed_in_as(page: Page) -> str:
    match = re.search(r'class="who">\s*([^<\s]+)', page.text)
    assert match, "the page names no signed-in user"
    return match.group(1)


def catalogue_types(page: Page) -> list[str]:
    return re.findall(r'name="service" value="([^"]+)"', page.text)


def test_the_user_the_proxy_names_is_signed_in_with_a_new_account(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    browser = Browser(gateway.port)
    page = browser.get("/", {USER: "carol"})
    assert page.status == 200, page.text
    assert signed_in_as(page) == "carol"
    assert "sessionid" in browser.cookies
    assert catalogue_types(page) == [DESKTOP]
    assert "created the account carol at its first single sign-on" in gateway.output()
    # The new account has no usable password (Django's mark): it signs in through the proxy only.
    database = sqlite3.connect(f"file:{data_dir(tmp_path) / 'vizgate.sqlite3'}?mode=ro", uri=True)
    with contextlib.closing(database):
        [(password,)] = database.execute(
            "SELECT password FROM auth_user WHERE username = 'carol'"
        ).fetchall()
    assert password.startswith("!")


def test_the_portal_session_stays_while_the_proxy_keeps_naming_the_user(
    gateway: GatewayProcess,
) -> None:
    browser = Browser(gateway.port)
    browser.get("/", {USER: "carol"})
    cookie = browser.cookies["sessionid"]
    again = browser.get("/sessions/", {USER: "carol"})
    assert again.status == 200
    assert browser.cookies["sessionid"] == cookie


def test_membership_of_vizgates_groups_follows_the_groups_header(gateway: GatewayProcess) -> None:
    browser = Browser(gateway.port)
    page = browser.get("/", {USER: "dave", GROUPS: f"staff, {RENDERERS},unknown-to-vizgate"})
    assert sorted(catalogue_types(page)) == sorted([DESKTOP, RENDERING])
    # The directory took dave out of the group: the gated type is gone at the next request.
    assert catalogue_types(browser.get("/", {USER: "dave", GROUPS: "staff"})) == [DESKTOP]
    assert RENDERING in catalogue_types(browser.get("/", {USER: "dave", GROUPS: RENDERERS}))
    # No groups header at all: no groups.
    assert catalogue_types(browser.get("/", {USER: "dave"})) == [DESKTOP]
    # Groups vizgate does not have are not created.
    assert "groups of dave follow the single sign-on: none" in gateway.output()
    assert "unknown-to-vizgate" not in gateway.output()


def test_the_admin_group_of_the_groups_header_makes_administrators(tmp_path: Path) -> None:
    gateway = start(tmp_path, *SSO, "--remote-admin-group", "viz-admins")
    try:
        browser = Browser(gateway.port)
        page = browser.get("/", {USER: "grace", GROUPS: "staff,viz-admins"})
        assert "(administrator)" in page.text
        assert browser.get("/status/", {USER: "grace", GROUPS: "staff,viz-admins"}).status == 200
        assert "grace is now an administrator (in viz-admins" in gateway.output()
        # Out of the group at the directory: no longer an administrator at the next request.
        page = browser.get("/", {USER: "grace", GROUPS: "staff"})
        assert "(administrator)" not in page.text
        assert browser.get("/status/", {USER: "grace", GROUPS: "staff"}).status == 403
        assert "grace is no longer an administrator" in gateway.output()
    finally:
        gateway.stop()


def test_another_name_from_the_proxy_ends_the_previous_users_portal_session(
    gateway: GatewayProcess,
) -> None:
    browser = Browser(gateway.port)
    browser.get("/", {USER: "carol"})
    first = browser.cookies["sessionid"]
    page = browser.get("/", {USER: "erin"})
    assert signed_in_as(page) == "erin"
    assert browser.cookies["sessionid"] != first
    # The old cookie is no one's any more.
    stale = Browser(gateway.port, {"sessionid": first}).get("/")
    assert stale.status == 302
    assert "/login/" in stale.location


def test_names_that_cannot_be_accounts_are_refused_with_why(gateway: GatewayProcess) -> None:
    page = Browser(gateway.port).get("/", {USER: "carol smith"})
    assert page.status == 403
    assert "cannot be a vizgate account" in page.text
    assert "carol smith" in page.text


def test_requests_without_the_header_keep_the_local_login(gateway: GatewayProcess) -> None:
    browser = Browser(gateway.port)
    assert browser.get("/").status == 302
    assert browser.login(LOCAL_ADMIN).status == 302
    assert signed_in_as(browser.get("/")) == LOCAL_ADMIN.name


def test_headers_from_an_address_that_is_not_a_trusted_proxy_are_ignored(
    tmp_path: Path,
) -> None:
    gateway = start(tmp_path, *SSO, env={"FORWARDED_ALLOW_IPS": "192.0.2.10"})
    try:
        page = Browser(gateway.port).get("/", {USER: LOCAL_ADMIN.name})
        assert page.status == 302
        assert "/login/" in page.location
        wait_until(
            lambda: (
                "identity headers from 127.0.0.1 ignored: it is not a trusted proxy"
                in gateway.output()
            ),
            timeout=scaled(10),
        )
    finally:
        gateway.stop()


def test_an_underscore_spelling_or_a_repeated_header_signs_nobody_in(
    gateway: GatewayProcess,
) -> None:
    # Django reads X_Remote_User as X-Remote-User; proxies pass such headers on.
    page = Browser(gateway.port).get("/", {"X_Remote_User": LOCAL_ADMIN.name})
    assert page.status == 302
    assert "/login/" in page.location
    # The browser's own header next to the proxy's: neither is believed.
    connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=scaled(10))
    try:
        connection.putrequest("GET", "/")
        connection.putheader(USER, LOCAL_ADMIN.name)
        connection.putheader(USER, "carol")
        connection.endheaders()
        twice = connection.getresponse()
        twice.read()
    finally:
        connection.close()
    assert twice.status == 302
    assert "/login/" in twice.headers["Location"]
    assert "carried an identity header twice" in gateway.output()


def test_accounts_are_not_created_when_the_admin_says_so(tmp_path: Path) -> None:
    gateway = start(tmp_path, "--remote-user-header", USER, "--no-create-remote-users")
    try:
        page = Browser(gateway.port).get("/", {USER: "mallory"})
        assert page.status == 403
        assert "vizgate has no active account for" in page.text
        existing = Browser(gateway.port).get("/", {USER: LOCAL_ADMIN.name})
        assert existing.status == 200
        assert signed_in_as(existing) == LOCAL_ADMIN.name
        # An account made for single sign-on, without a password, as an admin would.
        run_python(
            "-m", "vizgate", "user", "add", "frank", "--no-password",
            "--data-dir", str(data_dir(tmp_path)),
        )  # fmt: skip
        assert signed_in_as(Browser(gateway.port).get("/", {USER: "frank"})) == "frank"
    finally:
        gateway.stop()


def test_logging_out_goes_on_to_the_logout_url(tmp_path: Path) -> None:
    logout = "https://login.example.org/logout?return=viz"
    gateway = start(tmp_path, *SSO, "--logout-url", logout)
    try:
        browser = Browser(gateway.port)
        page = browser.get("/", {USER: "carol"})
        answer = browser.post(
            "/logout/", {"csrfmiddlewaretoken": page.csrf_token()}, {USER: "carol"}
        )
        assert answer.status == 302
        assert answer.location == logout
        assert "sessionid" not in browser.cookies
    finally:
        gateway.stop()


def test_the_tunnel_refuses_a_cookie_of_another_user_than_the_proxy_names(
    gateway: GatewayProcess,
) -> None:
    browser = Browser(gateway.port)
    catalogue = browser.get("/", {USER: "carol"})
    launched = browser.post(
        "/launch",
        {"service": DESKTOP, "size": "", "csrfmiddlewaretoken": catalogue.csrf_token()},
        {USER: "carol"},
    )
    assert launched.status == 302, launched.text
    query = "session=" + urllib.parse.quote(launched.location.rstrip("/").rsplit("/", 1)[-1])
    refused = open_socket(gateway, query, browser, headers={USER: "erin"})
    assert refused == (1008, SIGNED_IN_ELSEWHERE_REFUSAL)
    assert open_socket(gateway, query, browser, headers={USER: "carol"}) == RFB_GREETING


def test_a_user_pattern_maps_the_proxys_names_to_accounts_and_refuses_the_rest(
    tmp_path: Path,
) -> None:
    gateway = start(
        tmp_path, *SSO, "--remote-user-pattern", r"(?P<user>[^@]+)@EXAMPLE\.ORG",
        "--remote-user-lowercase",
    )  # fmt: skip
    try:
        browser = Browser(gateway.port)
        alice = {USER: "alice@EXAMPLE.ORG"}
        catalogue = browser.get("/", alice)
        assert catalogue.status == 200, catalogue.text
        assert signed_in_as(catalogue) == "alice"
        # As typed at the identity provider: the same account.
        assert signed_in_as(Browser(gateway.port).get("/", {USER: "Alice@EXAMPLE.ORG"})) == "alice"
        stranger = Browser(gateway.port).get("/", {USER: "alice@OTHER.ORG"})
        assert stranger.status == 403
        assert "is not one this gateway serves" in html.unescape(stranger.text)
        assert "alice@OTHER.ORG" in html.unescape(stranger.text)
        assert "does not match --remote-user-pattern" in gateway.output()
        # The tunnel maps the header as the portal does.
        launched = browser.post(
            "/launch",
            {"service": DESKTOP, "size": "", "csrfmiddlewaretoken": catalogue.csrf_token()},
            alice,
        )
        assert launched.status == 302, launched.text
        query = "session=" + urllib.parse.quote(launched.location.rstrip("/").rsplit("/", 1)[-1])
        assert open_socket(gateway, query, browser, headers=alice) == RFB_GREETING
        assert open_socket(gateway, query, browser, headers={USER: "ALICE@EXAMPLE.ORG"}) == (
            RFB_GREETING
        )
        for other in ("alice@OTHER.ORG", "erin@EXAMPLE.ORG"):
            refused = open_socket(gateway, query, browser, headers={USER: other})
            assert refused == (1008, SIGNED_IN_ELSEWHERE_REFUSAL)
    finally:
        gateway.stop()


def test_lowercase_names_warn_of_accounts_with_capitals_which_a_rename_keeps(
    tmp_path: Path,
) -> None:
    create_accounts(data_dir(tmp_path), [Account("Lena", "lena-had-a-password-41", (RENDERERS,))],
                    groups=[RENDERERS])  # fmt: skip
    gateway = start(tmp_path, "--remote-user-header", USER, "--remote-user-lowercase")
    try:
        assert "--remote-user-lowercase: nobody signs in as Lena any more" in gateway.output()
        assert "'vizgate user rename Lena lena'" in gateway.output()
        renamed = run_python(
            "-m", "vizgate", "user", "rename", "Lena", "lena", "--data-dir", str(data_dir(tmp_path))
        )
        assert renamed.stdout.startswith("renamed Lena to lena")
        page = Browser(gateway.port).get("/", {USER: "LENA"})
        assert signed_in_as(page) == "lena"
        # The same account, not a new one: its group came with it.
        assert sorted(catalogue_types(page)) == sorted([DESKTOP, RENDERING])
        assert "created the account" not in gateway.output()
    finally:
        gateway.stop()


@pytest.mark.parametrize(
    ("args", "env", "said"),
    [
        (
            ("--remote-groups-header", GROUPS),
            {},
            "--remote-groups-header needs --remote-user-header",
        ),
        (("--remote-user-header", "X_Remote_User"), {}, "is not a header name"),
        (("--remote-user-header", "Authorization"), {}, "already means something else"),
        (SSO, {"FORWARDED_ALLOW_IPS": "*"}, "trusts every address"),
        (("--logout-url", "javascript:alert(1)"), {}, "--logout-url"),
        ((*SSO, "--remote-user-pattern", "(?P<user>"), {}, "is not a regular expression"),
    ],
)
def test_bad_single_sign_on_options_stop_the_server_with_why(
    tmp_path: Path, args: tuple[str, ...], env: dict[str, str], said: str
) -> None:
    config = write_config(tmp_path / "config", {DESKTOP: {}})
    gateway = launch_gateway(tmp_path / "run", config, *args, env=env)
    try:
        assert gateway.process.wait(timeout=scaled(60)) == 2
        assert said in gateway.output()
    finally:
        gateway.stop()


def test_a_disabled_user_is_refused_at_once_with_sso_and_with_a_password(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    sso = Browser(gateway.port)
    assert signed_in_as(sso.get("/", {USER: "ivan"})) == "ivan"
    local = Browser(gateway.port)
    assert local.login(LOCAL_ADMIN).status == 302
    for name in ("ivan", LOCAL_ADMIN.name):
        run_python("-m", "vizgate", "user", "disable", name, "--data-dir", str(data_dir(tmp_path)))
    refused = sso.get("/", {USER: "ivan"})
    assert refused.status == 403
    assert "no active account" in html.unescape(refused.text)
    assert local.get("/").status == 302
    assert "/login/" in local.get("/").location
