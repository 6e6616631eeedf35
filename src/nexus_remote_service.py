"""Compatibility module: session scripts written for Nexus / ADR import from here.

``from nexus_remote_service import RemoteServiceScript`` works unchanged with vizgate.
"""

from vizgate.scripts import RemoteServiceScript

__all__ = ["RemoteServiceScript"]
