"""Click parameter types that leave judgement to meshgate's validation.

Click stops at the first value it cannot convert, so `--port abc --protocol ftp`
would report only the port. These types convert what they can and pass the
rest through unchanged; the store's `validate_*` functions then report every
bad field at once, each with its name, in one `error:` line (exit 2).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import click
from click.shell_completion import CompletionItem

from meshgate.errors import ValidationError, Violation

_INT = re.compile(r"^[+-]?[0-9]+$")  # ASCII digits: int() also reads "٨٠" and "８０"


class LenientInt(click.ParamType):
    """An integer when the text is one; otherwise the text, for validation to name."""

    name = "integer"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, int):
            return value
        text = str(value).strip()
        if not _INT.match(text):
            return value
        try:
            return int(text)
        except ValueError:  # more digits than Python converts (4300): no port or count anyway
            return value


class LenientChoice(click.ParamType):
    """One of `choices` (shown in help and offered by shell completion), checked later."""

    name = "choice"

    def __init__(self, choices: Iterable[str]) -> None:
        self.choices = tuple(choices)

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "[" + "|".join(self.choices) + "]"

    def shell_complete(
        self, ctx: click.Context, param: click.Parameter, incomplete: str
    ) -> list[CompletionItem]:
        return [CompletionItem(c) for c in self.choices if c.startswith(incomplete)]


INT = LenientInt()


def require_any(**given: Any) -> None:
    """Usage error (exit 2) unless at least one of the named options was given."""
    if all(v is None or v == () for v in given.values()):
        names = ", ".join("--" + k.replace("_", "-") for k in given)
        raise click.UsageError(f"nothing to change: give at least one of {names}")


def describe_update(before: dict[str, Any], after: dict[str, Any]) -> str:
    """`port 80 -> 8080, labels {} -> {'team': 'shop'}` for the fields that differ."""
    parts = [
        f"{k} {before.get(k)!r} -> {after.get(k)!r}"
        for k in after
        if before.get(k) != after.get(k)
    ]
    return ", ".join(parts)


def echo_update(what: str, changed: bool, revision: int | None, change: str | None = None) -> None:
    """`<what> unchanged`, or `<what> updated (revision N)` and, if given, what changed."""
    if not changed:
        click.echo(f"{what} unchanged")
    else:
        click.echo(f"{what} updated (revision {revision})" + (f": {change}" if change is not None else ""))


def read_text_file(path: str | None, field: str) -> str | None:
    """The file's text (None without a path), or ValidationError naming `field`
    (unreadable, not UTF-8)."""
    if path is None:
        return None
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValidationError([Violation(field, f"{path}: not UTF-8 text")]) from None
    except OSError as exc:
        raise ValidationError([Violation(field, f"{path}: {exc.strerror or exc}")]) from None
