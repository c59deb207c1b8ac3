"""The root of meshgate's error hierarchy.

Each subpackage draws its own errors from `MeshgateError` in its own errors
module. The CLI turns any `MeshgateError` into one clear line and exit code 1;
usage errors (bad arguments) exit 2.

    MeshgateError
    ├── ValidationError      input that breaks a rule; carries every violation with its field
    ├── NotFound             a named object does not exist
    ├── AlreadyExists        a named object exists already
    ├── Conflict             the change contradicts the current state
    └── (per package) StoreError, CaError, PolicyError, XdsError, FleetError ...
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass


class MeshgateError(Exception):
    """Base of every error meshgate raises on purpose."""

    exit_code = 1
    multiline = False  # True: a header line, then one indented line per problem


def printable(text: str) -> str:
    """`text` with control, format and line-separator characters escaped (`\\n`,
    `\\x00`, `\\u202e`): a value echoed in an error cannot break it into lines, hide
    parts of it or reorder it on a terminal."""

    def shown(c: str) -> str:
        if unicodedata.category(c) not in ("Cc", "Cf", "Zl", "Zp"):
            return c
        escaped = repr(c)[1:-1]
        return escaped if escaped != c else f"\\u{ord(c):04x}"

    return "".join(shown(c) for c in text)


@dataclass(frozen=True)
class Violation:
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class ValidationError(MeshgateError):
    """Every violation found in one input, each naming its field."""

    exit_code = 2

    def __init__(self, violations: Iterable[Violation], subject: str = "") -> None:
        self.violations = tuple(violations)
        self.subject = subject
        head = f"invalid {subject}: " if subject else "invalid input: "
        super().__init__(head + "; ".join(str(v) for v in self.violations))


class NotFound(MeshgateError):
    pass


class AlreadyExists(MeshgateError):
    pass


class Conflict(MeshgateError):
    pass
