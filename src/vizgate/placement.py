"""Where a new session goes: the free instance of its type a reservation gets.

The lowest free index, as the seed does, except that two kinds of instance are passed over:
one whose ``start()`` failed lately (it rests while another is free, :mod:`vizgate.registry`),
and one on a paused node (:class:`vizgate.pause.NodePauses`). Which node an instance runs on
is what its script's optional ``node()`` says (:func:`vizgate.script_hooks.script_node`),
asked once when the broker realizes the instances.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from vizgate.catalog import ServiceType
from vizgate.exceptions import ReservationError
from vizgate.registry import SessionRegistry
from vizgate.script_hooks import script_node
from vizgate.scripts import RemoteServiceScript

__all__ = ["InstanceNodes", "choose_instance"]


class InstanceNodes:
    """The node of each instance of each session type (None where its script does not say)."""

    def __init__(self) -> None:
        self._by_type: dict[str, list[str | None]] = {}

    def add_type(self, name: str, instances: Sequence[RemoteServiceScript]) -> None:
        """Ask each instance of type ``name`` its node (blocking: scripts' code runs)."""
        self._by_type[name] = [script_node(instance) for instance in instances]

    def of(self, name: str, index: int) -> str | None:
        """The node of instance ``index`` of type ``name``, or None."""
        nodes = self._by_type.get(name, [])
        return nodes[index] if index < len(nodes) else None

    def of_type(self, name: str) -> list[str | None]:
        """The node of each instance of type ``name``, by index."""
        return list(self._by_type.get(name, []))

    def instances(self) -> dict[str, list[tuple[str, int]]]:
        """Every node named, with its instances (type, index), in the catalog's order."""
        found: dict[str, list[tuple[str, int]]] = {}
        for name, nodes in self._by_type.items():
            for index, node in enumerate(nodes):
                if node is not None:
                    found.setdefault(node, []).append((name, index))
        return found

    def on(self, name: str, indexes: Iterable[int], nodes: Mapping[str, str]) -> dict[int, str]:
        """Which of ``indexes`` of type ``name`` run on one of ``nodes``, with that node."""
        if not nodes:
            return {}
        return {
            index: node
            for index in indexes
            if (node := self.of(name, index)) is not None and node in nodes
        }


def choose_instance(
    live: SessionRegistry,
    service: ServiceType,
    nodes: InstanceNodes,
    paused_nodes: Mapping[str, str],
    *,
    now: float,
    rest: float,
) -> int:
    """The index a new session of ``service`` gets.

    Raises:
        ReservationError: every free instance is on a paused node (reason ``paused``, with the
            node and why), or none is free (``no_free_instance``).
    """
    free = live.free_indexes(service.name)
    on_paused = nodes.on(service.name, free, paused_nodes)
    index = live.free_index(service.name, now, rest, on_paused)
    if index is not None:
        return index
    if on_paused:
        node = on_paused[min(on_paused)]
        raise ReservationError(
            f"new {service.name} sessions are paused on {node}: {paused_nodes[node]}",
            reason="paused",
        )
    raise ReservationError(
        f"no free instance of {service.name!r} ({service.count} of {service.count} in use)",
        reason="no_free_instance",
    )
