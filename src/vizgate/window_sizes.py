"""Window sizes as the catalog's ``sizes`` option writes them: ``"1600x1200"``.

The seed's default list, parsing a size, and the hint for a size that is too large by one
stray digit (``"16000x1200"`` was probably ``"1600x1200"``).
"""

from __future__ import annotations

import re

__all__ = [
    "DEFAULT_SIZES",
    "MAX_SANE_DIMENSION",
    "parse_size",
    "typo_hint",
]

#: The seed: ``sizes`` "defaults to a list of common window sizes".
DEFAULT_SIZES: tuple[str, ...] = ("1024x768", "1280x1024", "1600x1200", "1920x1080")

#: Wider or taller windows than this are legal but almost always a typo; they get a warning.
MAX_SANE_DIMENSION = 8192

_SIZE_RE = re.compile(r"([1-9][0-9]*)x([1-9][0-9]*)")

# Screen sizes people actually use; a too-large size that is one stray digit away from one of
# these is reported with the likely intended value.
_COMMON_SIZES: tuple[tuple[int, int], ...] = (
    (800, 600),
    (1024, 768),
    (1152, 864),
    (1280, 720),
    (1280, 800),
    (1280, 1024),
    (1366, 768),
    (1440, 900),
    (1600, 900),
    (1600, 1200),
    (1680, 1050),
    (1920, 1080),
    (1920, 1200),
    (2048, 1536),
    (2560, 1080),
    (2560, 1440),
    (2560, 1600),
    (3440, 1440),
    (3840, 2160),
    (5120, 2880),
    (7680, 4320),
)


def parse_size(size: str) -> tuple[int, int]:
    """Split a window size written ``WIDTHxHEIGHT`` into two positive integers.

    Args:
        size: e.g. ``"1600x1200"``; lower-case ``x``, no spaces, no leading zeros.

    Returns:
        ``(width, height)``, e.g. ``(1600, 1200)``.

    Raises:
        ValueError: ``size`` is not a string of that form, or a dimension is zero.
    """
    match = _SIZE_RE.fullmatch(size) if isinstance(size, str) else None
    if match is None:
        raise ValueError(
            f"{size!r} is not a window size; write WIDTHxHEIGHT with two positive whole "
            'numbers, e.g. "1600x1200"'
        )
    return int(match.group(1)), int(match.group(2))


def typo_hint(width: int, height: int) -> str | None:
    """The common size one stray digit away from ``width`` x ``height``, if there is one."""

    def candidates(number: int) -> set[int]:
        if number <= MAX_SANE_DIMENSION:
            return {number}
        digits = str(number)
        return {int(digits[:i] + digits[i + 1 :]) for i in range(len(digits))}

    widths, heights = candidates(width), candidates(height)
    for common in _COMMON_SIZES:
        if common[0] in widths and common[1] in heights:
            return f"{common[0]}x{common[1]}"
    return None
