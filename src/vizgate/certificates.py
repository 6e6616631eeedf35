"""A renewed TLS certificate, taken up without a restart.

Certificates are renewed every few months (every 60 days with ACME clients). A restart of the
gateway keeps the desktops, but it drops every viewer's WebSocket for a moment. So when the
gateway serves https itself (``--cert``/``--key``), it loads the certificate and key again into
the TLS context it serves with whenever either file changes (checked every
:data:`CHECK_INTERVAL` seconds) and at once on SIGHUP (``systemctl reload``). New connections
get the new certificate; open ones keep theirs. A pair that cannot be loaded (a key that does
not match, a file half written) is refused with why in the log, and the one in use stays.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path
from typing import Final

__all__ = ["CHECK_INTERVAL", "CertificateReloader", "watch_certificate"]

logger = logging.getLogger(__name__)

#: Seconds between looks at the certificate's and key's files.
CHECK_INTERVAL: Final = 60.0

_Stamp = tuple[tuple[int, int, int] | None, ...]


class CertificateReloader:
    """Loads ``cert`` and ``key`` into ``context`` again when they change.

    Args:
        context: the server's TLS context (loaded with them already).
        cert: the certificate chain's file (PEM).
        key: its private key's file (PEM).
    """

    def __init__(self, context: ssl.SSLContext, cert: Path, key: Path) -> None:
        self.context = context
        self.cert = cert
        self.key = key
        self._loaded = self._stamp()

    def _stamp(self) -> _Stamp:
        stamps: list[tuple[int, int, int] | None] = []
        for path in (self.cert, self.key):
            try:
                info = path.stat()
            except OSError:
                stamps.append(None)
            else:
                stamps.append((info.st_ino, info.st_mtime_ns, info.st_size))
        return tuple(stamps)

    def check(self, *, force: bool = False) -> bool:
        """Load the pair again if a file changed since the last attempt (or with ``force``);
        True when a new pair is in use."""
        stamp = self._stamp()
        if stamp == self._loaded and not force:
            return False
        # Tried once per change: a broken pair is not retried (and logged) every minute.
        self._loaded = stamp
        try:
            # Tried on a context of its own first: a key that does not match its certificate
            # would leave the serving context with neither.
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(self.cert, self.key)
            self.context.load_cert_chain(self.cert, self.key)
        except (OSError, ssl.SSLError) as exc:
            logger.error(
                "cannot use the renewed TLS certificate %s with key %s, keeping the one in use: %s",
                self.cert,
                self.key,
                exc,
            )
            return False
        logger.warning("serving the TLS certificate %s as it is now (new connections)", self.cert)
        return True


async def watch_certificate(
    reloader: CertificateReloader, interval: float = CHECK_INTERVAL
) -> None:
    """Check ``reloader`` every ``interval`` seconds, until cancelled."""
    while True:
        await asyncio.sleep(interval)
        reloader.check()
