"""Printing records as a rich table, JSON or YAML (`--output`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click
import yaml

FORMATS = ("table", "json", "yaml")
F = TypeVar("F", bound=Callable[..., Any])


def output_option(f: F) -> F:
    return click.option(
        "--output",
        "-o",
        type=click.Choice(FORMATS),
        default="table",
        show_default=True,
        help="Output format.",
    )(f)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ",".join(_cell(v) for v in value) or "-"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "-"
    return str(value)


def emit(
    data: Sequence[dict[str, Any]] | dict[str, Any],
    output: str,
    columns: Sequence[str] | None = None,
    title: str | None = None,
) -> None:
    """Print a list of records (or one record) in the chosen format."""
    if output == "json":
        click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))
        return
    if output == "yaml":
        click.echo(yaml.safe_dump(data, sort_keys=False, default_flow_style=False).rstrip())
        return
    from rich.console import Console
    from rich.markup import escape  # values are data: "[resources: ...]" is not rich markup
    from rich.table import Table

    console = Console(soft_wrap=True)
    if not console.is_terminal:
        # Piped or captured: print rows at their natural width (no folding), so that
        # `meshgate ... | grep` sees whole values.
        console = Console(soft_wrap=True, width=1000)
    if isinstance(data, dict):
        table = Table(show_header=False, title=title, box=None)
        table.add_column("field", style="bold")
        table.add_column("value", overflow="fold")
        for k, v in data.items():
            table.add_row(k, escape(_cell(v)))
        console.print(table)
        return
    rows = list(data)
    cols = list(columns or (rows[0].keys() if rows else []))
    table = Table(title=title)
    for c in cols:
        table.add_column(c, overflow="fold")
    for r in rows:
        table.add_row(*(escape(_cell(r.get(c))) for c in cols))
    if not rows:
        click.echo("(none)")
        return
    console.print(table)
