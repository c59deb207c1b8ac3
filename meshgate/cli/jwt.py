"""`meshgate jwt`: Manage JWT providers used by edge routes."""

from __future__ import annotations

import click


@click.group("jwt")
def jwt() -> None:
    """Manage JWT providers used by edge routes."""
