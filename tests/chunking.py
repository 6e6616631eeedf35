"""Cutting a byte stream into the chunks a sans-I/O parser is fed, every way a test needs."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator


def cut(data: bytes, offsets: Iterable[int]) -> list[bytes]:
    """``data`` cut at each of ``offsets`` (ascending)."""
    bounds = [0, *offsets, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def chunks_of(data: bytes, size: int) -> list[bytes]:
    """``data`` in chunks of ``size`` bytes, the last one shorter."""
    return [data[i : i + size] for i in range(0, len(data), size)]


def cut_twice_near(data: bytes, boundaries: Iterable[int], margin: int) -> Iterator[list[bytes]]:
    """``data`` cut twice within ``margin`` bytes of each boundary: a message's last bytes, or
    the next one's type and header bytes, alone in a call of their own."""
    for boundary in boundaries:
        near = range(max(1, boundary - margin), min(len(data), boundary + margin + 1))
        for first, second in itertools.combinations(near, 2):
            yield cut(data, [first, second])


def _whole(data: bytes) -> Iterator[list[bytes]]:
    yield [data]


def _byte_by_byte(data: bytes) -> Iterator[list[bytes]]:
    yield chunks_of(data, 1)


def _cut_once_everywhere(data: bytes) -> Iterator[list[bytes]]:
    return (cut(data, [offset]) for offset in range(1, len(data)))


def _every_fixed_size(data: bytes) -> Iterator[list[bytes]]:
    return (chunks_of(data, size) for size in range(1, len(data) + 1))


def every_chunking(
    data: bytes, boundaries: Iterable[int], margin: int
) -> dict[str, Iterator[list[bytes]]]:
    """Every deterministic way the stream tests feed ``data``, by name (:data:`CHUNKINGS`):
    whole, byte by byte, cut once at every offset, in chunks of every fixed size, and cut twice
    within ``margin`` bytes of each message boundary inside ``data``."""
    inner = [b for b in boundaries if 0 < b < len(data)]
    return {
        "at once": _whole(data),
        "byte by byte": _byte_by_byte(data),
        "cut once at every offset": _cut_once_everywhere(data),
        "in fixed-size chunks": _every_fixed_size(data),
        "cut twice around every message boundary": cut_twice_near(data, inner, margin),
    }


#: The names of :func:`every_chunking`'s chunkings, to parametrize tests with.
CHUNKINGS = tuple(every_chunking(b"", (), 0))
