"""`meshgate edge`: Manage edge gateways, their routes and certificates."""

from __future__ import annotations

import click


@click.group("edge")
def edge() -> None:
    """Manage edge gateways, their routes and certificates."""
