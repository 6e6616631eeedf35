"""Helpers for trying and testing a vizgate gateway without a VNC server.

:mod:`vizgate.testing.doubles` holds session scripts with known behaviours (start at once, start
slowly, never start, fail in each way a script can fail); a catalog uses them by naming
:data:`DOUBLE_SESSION_SCRIPT` as a type's ``script``.
"""

from vizgate.testing.doubles import (
    BEHAVIOURS,
    DOUBLE_SESSION_SCRIPT,
    DoubleScript,
    EchoServer,
    forget,
    instances,
    release_hung,
)

__all__ = [
    "BEHAVIOURS",
    "DOUBLE_SESSION_SCRIPT",
    "DoubleScript",
    "EchoServer",
    "forget",
    "instances",
    "release_hung",
]
