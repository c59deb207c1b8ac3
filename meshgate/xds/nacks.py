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


# A line of a protobuf text dump: `name: "svc/a"`, `connect_timeout {`, `}`.
_DUMP_LINE = re.compile(r"^([A-Za-z_][\w.\[\]/]*\s*(\{|:\s.*|:)|\})$")
_DEBUG_MARK = re.compile(r"\s*goo\.gle/debug\w*")


def reason(message: str) -> str:
    """The human part of an Envoy NACK message.

    Envoy 1.40 writes, for example (recorded):
      "Error adding/updating listener(s) dup: error adding listener '127.0.0.1:1': no filter chains specified"
      "Error adding/updating cluster(s) svc/bad: goo.gle/debugproto\n<dump>\n: Proto constraint validation failed (...)"
      "Invalid duration: Expected positive duration: goo.gle/debugonly\nseconds: -1"
    so: the last line that is not part of a resource dump, without protobuf's
    debug markers and a leading ": ".
    """
    lines = [ln.strip() for ln in message.strip().splitlines() if ln.strip()]
    text = [ln for ln in lines if not _DUMP_LINE.match(ln)]
    if not text:
        text = lines or [""]
    last = _DEBUG_MARK.sub("", text[-1]).strip()
    if last.startswith(":"):
        last = last[1:].strip()
    return last.rstrip(":").strip()[-MAX_REASON:]


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
