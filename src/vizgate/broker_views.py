"""What the broker shows of its sessions: read-only snapshots for the web layer and the API.

:class:`BrokerViews` is a part of :class:`vizgate.broker.Broker`: the queries that only read the
live sessions, the ended ones and the catalog, and turn them into the snapshots of
:mod:`vizgate.sessions` (wall-clock times, no secrets). The broker's other methods change
sessions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from vizgate.catalog import Catalog
from vizgate.placement import InstanceNodes
from vizgate.registry import SessionRegistry
from vizgate.sessions import NodeInfo, ServiceInfo, SessionInfo, ViewerInfo, token_hash

__all__ = ["BrokerViews"]


class BrokerViews:
    """The broker's read-only queries (mixed into :class:`vizgate.broker.Broker`)."""

    catalog: Catalog
    _live: SessionRegistry
    # Wall-clock time minus the event loop's monotonic time, set when the broker opens.
    _wall_offset: float
    failed_instance_rest: float
    paused_types: Callable[[], Mapping[str, str]]
    paused_nodes: Callable[[], Mapping[str, str]]
    _nodes: InstanceNodes

    def now(self) -> float:
        """The broker's clock (the event loop's monotonic time)."""
        raise NotImplementedError

    def _wall(self, monotonic: float | None) -> float | None:
        if monotonic is None:
            return None
        return self._wall_offset + monotonic

    def session_of_token(self, token: str) -> SessionInfo | None:
        """The live session of a token, or None."""
        session = self._live.by_token_hash(token_hash(token))
        return session.info(self._wall) if session is not None else None

    def session_by_id(self, session_id: str) -> SessionInfo | None:
        """The live session with this public id, or None."""
        session = self._live.by_id(session_id)
        return session.info(self._wall) if session is not None else None

    def viewers(self, session_id: str) -> list[ViewerInfo]:
        """Who is connected to a live session now, first come first; [] if it is not live."""
        session = self._live.by_id(session_id)
        if session is None:
            return []
        return [
            ViewerInfo(user=viewer.user, access=viewer.access, since=viewer.since)
            for viewer in session.attachments.values()
        ]

    def sessions(self) -> list[SessionInfo]:
        """Every live session, oldest first."""
        return [s.info(self._wall) for s in self._live]

    def history(self) -> list[SessionInfo]:
        """The last ended sessions, newest first."""
        return self._live.history()

    def services(self) -> list[ServiceInfo]:
        """Every session type with how many of its instances are in use, and which failed to
        start lately."""
        now = self.now()
        paused_types = self.paused_types()
        paused_nodes = self.paused_nodes()
        return [
            ServiceInfo(
                name=service.name,
                count=service.count,
                in_use=self._live.in_use(service.name),
                sizes=service.sizes,
                group=service.group,
                choices=service.choices,
                failed_recently=self._live.resting(service.name, now, self.failed_instance_rest),
                paused=paused_types.get(service.name),
                free_on_paused_nodes=self._free_on(paused_nodes, service.name),
            )
            for service in self.catalog
        ]

    def _free_on(self, nodes: Mapping[str, str], service_name: str) -> int:
        """How many free instances of a type run on one of ``nodes``."""
        return len(self._nodes.on(service_name, self._live.free_indexes(service_name), nodes))

    def nodes(self) -> list[NodeInfo]:
        """Every node the instances run on (as their scripts' ``node()`` say), and every paused
        one, by name."""
        paused = self.paused_nodes()
        instances = self._nodes.instances()
        free = {
            service.name: set(self._live.free_indexes(service.name)) for service in self.catalog
        }
        return [
            NodeInfo(
                name=name,
                instances=tuple(instances.get(name, ())),
                in_use=sum(index not in free[kind] for kind, index in instances.get(name, ())),
                paused=paused.get(name),
            )
            for name in sorted(instances.keys() | paused.keys())
        ]

    def sessions_on(self, node: str) -> list[SessionInfo]:
        """The live sessions whose instance runs on ``node``, oldest first."""
        return [
            session.info(self._wall)
            for session in self._live
            if self._nodes.of(session.service.name, session.index) == node
        ]
