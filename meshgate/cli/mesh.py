"""`meshgate mesh`: Show and change mesh-wide settings."""

from __future__ import annotations

import click


@click.group("mesh")
def mesh() -> None:
    """Show and change mesh-wide settings."""
