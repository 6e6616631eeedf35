"""The broker's in-memory view of a live session and of each viewer attached to it."""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vizgate.catalog import ServiceType
from vizgate.lifecycle import SessionLifecycle, State
from vizgate.scripts import RemoteServiceScript
from vizgate.sessions import CloseRequest, SessionInfo
from vizgate.store import SessionRecord
from vizgate.vnc_password import read_vnc_password_file

if TYPE_CHECKING:
    from vizgate.broker import Broker

__all__ = ["Attachment", "LiveSession"]


# Reservation options under keys like these are not saved: a caller may pass a credential.
_SECRET_OPTION = re.compile(r"pass|secret|token|key|credential", re.IGNORECASE)


@dataclass(eq=False)
class LiveSession:
    """A live session as the broker holds it: its script instance, lifecycle and viewers."""

    # The token is known to this process only if it made the reservation or a viewer presented
    # it since; a session adopted after a restart is known by the token's hash.
    token: str | None
    token_hash: str
    id: str
    service: ServiceType
    index: int
    script: RemoteServiceScript
    user: str
    options: dict[str, Any]
    lifecycle: SessionLifecycle
    created: float
    ready: asyncio.Future[tuple[str, int]]
    bound: bool = False
    attachments: dict[int, Attachment] = field(default_factory=dict)
    bytes_to_client: int = 0
    bytes_to_server: int = 0
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    script_state: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.service.name}#{self.index}"

    def vnc_password(self, config_folder: Path) -> bytes | None:
        """The VNC password the gateway answers the session's VNC server with.

        The script's own ``set_password()`` wins; else the type's ``vnc_password_file`` option
        (TigerVNC's ``passwd`` format; ``~`` expanded; relative to ``config_folder``, the
        catalog's), read at each connection so that a changed file takes effect at once.

        Raises:
            VncPasswordFileError: the file named by ``vnc_password_file`` cannot be read.
        """
        password = self.script.password()
        if password is not None:
            return password
        name = self.service.options.get("vnc_password_file")
        if not name:
            return None
        path = Path(os.path.expanduser(str(name)))
        if not path.is_absolute():
            path = config_folder / path
        return read_vnc_password_file(path)

    def info(self, wall: Callable[[float | None], float | None]) -> SessionInfo:
        """A snapshot for status pages; ``wall`` turns the broker's clock into wall time."""
        lifecycle = self.lifecycle
        host_port = lifecycle.host_port
        deadline = lifecycle.timeout_deadline()
        return SessionInfo(
            id=self.id,
            token_prefix=self.token[:6] if self.token else "",
            service=self.service.name,
            index=self.index,
            user=self.user,
            size=str(self.options.get("size", "")),
            state=lifecycle.state.value,
            connections=len(self.attachments),
            host=host_port[0] if host_port else None,
            port=host_port[1] if host_port else None,
            created=self.created,
            started=wall(lifecycle.ready_at),
            ended=wall(lifecycle.ended_at),
            end_reason=lifecycle.end_reason.value if lifecycle.end_reason else None,
            message=lifecycle.message,
            bytes_to_client=self.bytes_to_client
            + sum(a.bytes_to_client for a in self.attachments.values()),
            bytes_to_server=self.bytes_to_server
            + sum(a.bytes_to_server for a in self.attachments.values()),
            stop_timed_out=lifecycle.stop_timed_out,
            progress=self.script.progress()
            if lifecycle.state in (State.STARTING, State.WAITING_READY)
            else "",
            bound=self.bound,
            ends_at=wall(deadline[0]) if deadline else None,
            ends_because=deadline[1].value if deadline else None,
            watchers=sum(1 for viewer in self.attachments.values() if viewer.grant),
            choices=tuple(
                (name, str(self.options[name]))
                for name in self.service.choices
                if name in self.options
            ),
        )

    def record(self, wall: Callable[[float | None], float | None]) -> SessionRecord:
        """What a store saves of the self."""
        lifecycle = self.lifecycle
        host_port = lifecycle.host_port
        info = self.info(wall)
        return SessionRecord(
            id=self.id,
            token_hash=self.token_hash,
            service=self.service.name,
            index=self.index,
            user=self.user,
            bound=self.bound,
            options={k: v for k, v in self.options.items() if not _SECRET_OPTION.search(k)},
            state=lifecycle.state.value,
            host=host_port[0] if host_port else None,
            port=host_port[1] if host_port else None,
            created=self.created,
            started=info.started,
            ended=info.ended,
            last_activity=wall(lifecycle.last_activity),
            end_reason=info.end_reason,
            message=lifecycle.message,
            bytes_to_client=info.bytes_to_client,
            bytes_to_server=info.bytes_to_server,
            stop_timed_out=lifecycle.stop_timed_out,
            script_state=dict(self.script_state),
            ends_at=wall(lifecycle.ends_at),
        )


class Attachment:
    """One viewer connection attached to a running session.

    The tunnel relays bytes between its WebSocket and ``host:port``, counts them here, calls
    :meth:`note_input` when the viewer sends something, awaits :attr:`close_requested` alongside
    the relay, and calls :meth:`Broker.detach` when it is done.
    """

    def __init__(
        self,
        broker: Broker,
        session: LiveSession,
        connection_id: int,
        client: str,
        grant: str = "",
        user: str = "",
    ) -> None:
        self._broker = broker
        self._session = session
        self.connection_id = connection_id
        self.client = client
        #: What let this viewer in if not its owner (a share link); see Broker.revoke_grant.
        self.grant = grant
        #: The viewer's account when known, for the audit trail.
        self.user = user
        self.since = time.time()
        #: Set to a reason a person reads when the viewer's access ends before the session does.
        self.revoked: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.host = ""
        self.port = 0
        self.bytes_to_client = 0
        self.bytes_to_server = 0
        self.close_requested: asyncio.Future[CloseRequest] = (
            asyncio.get_running_loop().create_future()
        )
        self.detached = False

    @property
    def session_id(self) -> str:
        return self._session.id

    @property
    def access(self) -> str:
        """How the audit trail describes this viewer's access: "" for full control."""
        return f"view only ({self.grant})" if self.grant else ""

    @property
    def password(self) -> bytes | None:
        """The VNC password the gateway answers the VNC server with, if the session has one."""
        return self._session.vnc_password(self._broker.catalog.path.parent)

    def revoke(self, message: str) -> None:
        """End this viewer's access (its grant expired or was withdrawn); idempotent."""
        if not self.revoked.done():
            self.revoked.set_result(message)

    def note_input(self) -> None:
        """The viewer sent input: the session is not idle."""
        self._session.lifecycle.activity(self._broker.now())

    def server_closed(self) -> None:
        """The VNC server closed this viewer's connection; the broker checks whether the
        server is gone (the session then ends as crashed) or only dropped this viewer."""
        self._broker.server_closed(self._session)
