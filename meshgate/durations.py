"""Durations as people write them: `90s`, `30m`, `1h`, `7d`, `1h30m`, or plain seconds.

    parse_duration("1h30m") == 5400
    format_duration(5400) == "1h30m"
"""

from __future__ import annotations

import re

_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_PART = re.compile(r"([0-9]+)([dhms])")  # ASCII digits only (\d also matches "٣")
_WHOLE = re.compile(r"^([0-9]+[dhms])+$")


def parse_duration(text: str | int) -> int:
    """Seconds in `text`; raises ValueError when it is not a duration.

    A bare number is seconds. Units: d, h, m, s, largest first, each at most once.
    """
    if isinstance(text, bool):
        raise ValueError(f"{text!r} is not a duration")
    if isinstance(text, int):
        return text
    value = text.strip().lower()
    if value.isascii() and value.isdigit():
        return int(value)
    if not _WHOLE.match(value):
        raise ValueError(f"{text!r} is not a duration (e.g. 90s, 30m, 1h, 1h30m)")
    units = [u for _, u in _PART.findall(value)]
    order = list(_UNITS)
    if units != sorted(set(units), key=order.index):
        raise ValueError(f"{text!r} is not a duration (units largest first, each once: 1h30m)")
    return sum(int(n) * _UNITS[u] for n, u in _PART.findall(value))


def format_duration(seconds: int) -> str:
    """The shortest `1h30m`-style spelling of `seconds` (`0s` for zero)."""
    if seconds == 0:
        return "0s"
    parts = []
    rest = seconds
    for unit, size in _UNITS.items():
        n, rest = divmod(rest, size)
        if n:
            parts.append(f"{n}{unit}")
    return "".join(parts)
