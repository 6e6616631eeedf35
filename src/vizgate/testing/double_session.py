"""A session script that realizes vizgate's test doubles; name it in a catalog to try a gateway.

    {"Try me": {"script": "<path of this file>", "count": 2, "options": {"behaviour": "starts"}}}

``options.behaviour`` picks what the sessions do; see :mod:`vizgate.testing.doubles`.
:data:`vizgate.testing.DOUBLE_SESSION_SCRIPT` is the path of this file.
"""

from vizgate.testing.doubles import realize_service

__all__ = ["realize_service"]
