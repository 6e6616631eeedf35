"""Calling a script's optional hooks: ``get_state()``, ``load_state()``, ``poll()`` and ``node()``.

A script that keeps more than its index needs to find its session again after the gateway
restarts (a Slurm job id, a remote host's process ids) implements ``get_state() -> dict`` and
``load_state(dict)``, as JupyterHub's spawners do; the broker saves the first with the session
and hands it back to the second when it adopts the session. ``poll()`` says whether the session
is still alive. A hook that raises is logged and treated as absent.

``node() -> str`` names the machine an instance runs on, known before ``start()`` (an SSH
host's pool gives each index its node): administrators can then pause one node of a pool
(:class:`vizgate.pause.NodePauses`). A script whose node is chosen at start (a Slurm job)
has none.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from vizgate.scripts import RemoteServiceScript

__all__ = ["load_script_state", "poll_script", "script_node", "script_state"]

logger = logging.getLogger(__name__)


def script_state(script: RemoteServiceScript) -> dict[str, Any]:
    """What a script's optional ``get_state()`` returns; {} when it has none or it fails."""
    get_state = getattr(script, "get_state", None)
    if not callable(get_state):
        return {}
    try:
        state = get_state()
    except Exception:
        logger.exception("%r: get_state() raised", script)
        return {}
    return dict(state) if isinstance(state, Mapping) else {}


def load_script_state(script: RemoteServiceScript, state: Mapping[str, Any]) -> None:
    """Hand a saved state back to the script's optional ``load_state()``."""
    load_state = getattr(script, "load_state", None)
    if callable(load_state):
        try:
            load_state(dict(state))
        except Exception:
            logger.exception("%r: load_state() raised", script)


def poll_script(script: RemoteServiceScript) -> bool | None:
    """The script's ``poll()``: True alive, False dead, None unknown (also when it raises)."""
    try:
        return script.poll()
    except Exception:
        logger.exception("%r: poll() raised", script)
        return None


def script_node(script: RemoteServiceScript) -> str | None:
    """The node the instance runs on, from the script's optional ``node()``; None when it has
    none, it raises, or it gives no name."""
    node = getattr(script, "node", None)
    if not callable(node):
        return None
    try:
        name = node()
    except Exception:
        logger.exception("%r: node() raised", script)
        return None
    if not isinstance(name, str) or not name.strip():
        return None
    return name.strip()
