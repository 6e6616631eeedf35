"""Calling a script's optional restart hooks: ``get_state()``, ``load_state()`` and ``poll()``.

A script that keeps more than its index needs to find its session again after the gateway
restarts (a Slurm job id, a remote host's process ids) implements ``get_state() -> dict`` and
``load_state(dict)``, as JupyterHub's spawners do; the broker saves the first with the session
and hands it back to the second when it adopts the session. ``poll()`` says whether the session
is still alive. A hook that raises is logged and treated as absent.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from vizgate.scripts import RemoteServiceScript

__all__ = ["load_script_state", "poll_script", "script_state"]

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
