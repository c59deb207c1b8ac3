"""Errors of config as code: every problem of a file, each with its place.

    ConfigError (a ValidationError)   every problem of the file, each with file:line:column;
                                      exit 2 (bad input), or 1 when the store refused a
                                      change (conflict, not found)
    EnvoyRejected (exit 1)            Envoy's --mode validate rejected a proxy's config
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from meshgate.errors import MeshgateError, ValidationError, Violation, printable


@dataclass(frozen=True)
class Problem:
    where: str  # "mesh.yaml:12:5" or "mesh.yaml:12:5 (Service \"orders\")"
    message: str

    def __str__(self) -> str:
        return printable(f"{self.where}: {self.message}")  # one line, whatever the file held


class ConfigError(ValidationError):
    """Every problem found in the input, one per line; nothing was written."""

    multiline = True

    def __init__(self, problems: Iterable[Problem], exit_code: int = 2) -> None:
        self.problems = tuple(problems)
        self.exit_code = exit_code
        super().__init__([Violation(p.where, p.message) for p in self.problems], "config")
        n = len(self.problems)
        lines = "\n".join(f"  {p}" for p in self.problems)
        self.args = (f"{n} problem{'s' if n != 1 else ''} in the config; nothing was changed:\n{lines}",)

    def __str__(self) -> str:
        return str(self.args[0])


class EnvoyRejected(MeshgateError):
    """Envoy refused the configuration of one or more proxies."""

    multiline = True

    def __init__(self, failures: Iterable[tuple[str, str]], suffix: str = "") -> None:
        self.failures = tuple(failures)
        lines = "\n".join(f"  proxy {name}: {reason}" for name, reason in self.failures)
        n = len(self.failures)
        super().__init__(
            f"Envoy rejected the configuration of {n} prox{'ies' if n != 1 else 'y'}{suffix}:\n{lines}"
        )
