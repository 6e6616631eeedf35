"""What the gateway serves, written to its data directory for the commands run beside it.

``vizgate pause --type NAME`` and ``--node NAME`` act on files the gateway reads; a name that
is no type or node of the catalog would pause nothing, and say so to nobody. So the gateway
writes, each time it opens its catalog, the names of its session types and of the nodes their
scripts name (``catalog-served.json``), and the commands check a name against the last catalog
served without being given it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from vizgate.private_file import replace_privately

__all__ = ["SERVED_CATALOG_FILE_NAME", "ServedCatalog"]

logger = logging.getLogger(__name__)

#: The file in the data directory.
SERVED_CATALOG_FILE_NAME: Final = "catalog-served.json"


@dataclass(frozen=True)
class ServedCatalog:
    """The names a gateway served: its catalog file, session types and nodes."""

    config: str
    types: tuple[str, ...]
    nodes: tuple[str, ...]

    def save(self, data_dir: Path) -> None:
        """Write it to ``data_dir``, readable by the gateway's account only.

        Raises:
            OSError: the file cannot be written.
        """
        text = json.dumps(
            {"config": self.config, "types": list(self.types), "nodes": list(self.nodes)},
            indent=1,
            ensure_ascii=False,
        )
        replace_privately(data_dir / SERVED_CATALOG_FILE_NAME, (text + "\n").encode())

    @classmethod
    def load(cls, data_dir: Path) -> ServedCatalog | None:
        """What the gateway of ``data_dir`` served last; None when it never said, or the file
        cannot be read (logged)."""
        path = data_dir / SERVED_CATALOG_FILE_NAME
        try:
            found = json.loads(path.read_text(encoding="utf-8"))
            served = cls(
                config=_text(found["config"]),
                types=tuple(map(_text, found["types"])),
                nodes=tuple(map(_text, found["nodes"])),
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("cannot read %s: %s", path, exc)
            return None
        return served


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, not {value!r}")
    return value
