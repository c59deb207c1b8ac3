"""meshgate CLI: demo."""

from __future__ import annotations

import click


@click.command("demo")
def demo() -> None:
    """Run the demo fleet."""
    raise click.ClickException("not available yet")
