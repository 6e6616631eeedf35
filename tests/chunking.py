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
