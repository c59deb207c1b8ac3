"""Reading Envoy's NACKs, and remembering them so a rejected version is never resent.

Envoy puts the reason at the END of `error_detail.message`, after a dump of
the offending resource (ENVOY_NOTES.md); several rejected resources give
several lines.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterable

MAX_REASON = 500
MAX_REMEMBERED = 64  # NACKed versions remembered per proxy and type


def reason(message: str) -> str:
    """The human part of an Envoy NACK message: its last non-empty line, trimmed."""
    lines = [ln.strip() for ln in message.strip().splitlines() if ln.strip()]
    if not lines:
        return ""
    last = lines[-1]
    # A resource dump ends in "}" and the reason follows the last "}: " on the line.
    if "}: " in last:
        last = last.rsplit("}: ", 1)[1]
    return last[-MAX_REASON:]


def named_in(message: str, names: Iterable[str]) -> list[str]:
    """The resource names that appear in the message as whole names."""
    out = []
    for n in names:
        if re.search(r"(?<![\w/.-])" + re.escape(n) + r"(?![\w/.-])", message):
            out.append(n)
    return out


class NackMemory:
    """Per proxy: which (type, version) and (type, name, version) Envoy rejected.

    Lives in the server (not the stream), so a proxy that reconnects is not
    sent again what it rejected before.
    """

    def __init__(self) -> None:
        self._versions: dict[str, OrderedDict[str, None]] = {}

    def add(self, key: str, version: str) -> None:
        seen = self._versions.setdefault(key, OrderedDict())
        seen[version] = None
        seen.move_to_end(version)
        while len(seen) > MAX_REMEMBERED:
            seen.popitem(last=False)

    def __contains__(self, item: tuple[str, str]) -> bool:
        key, version = item
        return version in self._versions.get(key, ())
