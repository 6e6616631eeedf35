"""A small browser for the portal's tests: accounts made with the CLI, cookies, CSRF tokens
from forms, no redirects followed."""

from __future__ import annotations

import http.client
import json
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websockets
import websockets.exceptions
import websockets.sync.client

from gateway import GatewayProcess, run_python
from support import scaled


@dataclass(frozen=True)
class Account:
    name: str
    password: str
    groups: tuple[str, ...] = ()
    admin: bool = False


# Runs the CLI's main() once per account, each reading its password from the next stdin line.
_CREATE_ACCOUNTS = """
import json, sys
from vizgate.cli import main
for argv in json.loads(sys.argv[1]):
    code = main(argv)
    if code != 0:
        sys.exit(code)
"""


def create_accounts(
    data_dir: Path,
    accounts: Sequence[Account],
    groups: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> None:
    """Create groups and users with the ``vizgate`` CLI, passwords on stdin, in one process
    (with ``env`` added to its environment)."""
    commands: list[list[str]] = [["group", "add", g, "--data-dir", str(data_dir)] for g in groups]
    for account in accounts:
        command = ["user", "add", account.name, "--data-dir", str(data_dir)]
        for group in account.groups:
            command += ["--group", group]
        if account.admin:
            command.append("--admin")
        commands.append(command)
    result = run_python(
        "-c",
        _CREATE_ACCOUNTS,
        json.dumps(commands),
        stdin="".join(account.password + "\n" for account in accounts),
        env=env,
    )
    for account in accounts:
        assert account.password not in result.stdout + result.stderr


# ---------------------------------------------------------------------------------------
# A small browser: cookies, CSRF tokens from forms, no redirects followed


@dataclass(frozen=True)
class Page:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()

    @property
    def location(self) -> str:
        return self.headers.get("Location", "")

    def json(self) -> Any:
        return json.loads(self.body)

    def csrf_token(self) -> str:
        match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', self.text)
        assert match, "no CSRF token in the page"
        return match.group(1)


@dataclass
class Browser:
    port: int
    cookies: dict[str, str] = field(default_factory=dict)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Page:
        all_headers = dict(headers or {})
        if self.cookies:
            all_headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=scaled(10))
        try:
            connection.request(method, path, body=body, headers=all_headers)
            reply = connection.getresponse()
            page = Page(reply.status, reply.headers, reply.read())
        finally:
            connection.close()
        for header in page.headers.get_all("Set-Cookie") or []:
            name, _, rest = header.partition("=")
            value = rest.split(";", 1)[0]
            if value and "Max-Age=0" not in header:
                self.cookies[name] = value
            else:
                self.cookies.pop(name, None)
        return page

    def get(self, path: str, headers: Mapping[str, str] | None = None) -> Page:
        return self.request("GET", path, headers=headers)

    def post(
        self, path: str, fields: Mapping[str, str], headers: Mapping[str, str] | None = None
    ) -> Page:
        return self.request(
            "POST",
            path,
            urllib.parse.urlencode(fields).encode(),
            {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})},
        )

    def login(self, account: Account) -> Page:
        form = self.get("/login/")
        return self.post(
            "/login/",
            {
                "username": account.name,
                "password": account.password,
                "csrfmiddlewaretoken": form.csrf_token(),
            },
        )

    def launch(self, service: str, size: str = "") -> Page:
        token = self.get("/").csrf_token()
        return self.post(
            "/launch", {"service": service, "size": size, "csrfmiddlewaretoken": token}
        )


def logged_in(gateway: GatewayProcess, account: Account) -> Browser:
    browser = Browser(gateway.port)
    page = browser.login(account)
    assert page.status == 302, page.text
    assert "sessionid" in browser.cookies
    return browser


def ws_url(gateway: GatewayProcess, query: str) -> str:
    return f"ws://127.0.0.1:{gateway.port}/websockify?{query}"


def open_socket(
    gateway: GatewayProcess,
    query: str,
    browser: Browser | None,
    origin: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> bytes | tuple[int, str]:
    """The first message of the tunnel's WebSocket (with ``browser``'s cookies and origin, and
    ``headers``), or how it was closed (code, reason)."""
    headers = dict(headers or {})
    if browser is not None and browser.cookies:
        headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in browser.cookies.items())
    if origin is None and browser is not None:
        origin = browser.origin
    with websockets.sync.client.connect(
        ws_url(gateway, query),
        subprotocols=[websockets.Subprotocol("binary")],
        additional_headers=headers,
        origin=websockets.Origin(origin) if origin else None,
        open_timeout=scaled(10),
    ) as ws:
        try:
            message = ws.recv(timeout=scaled(10))
        except websockets.exceptions.ConnectionClosed as closed:
            frame = closed.rcvd
            return (frame.code, frame.reason) if frame is not None else (1006, "")
        return message if isinstance(message, bytes) else message.encode()
