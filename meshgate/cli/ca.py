"""`meshgate ca`: Manage the mesh certificate authority."""

from __future__ import annotations

import click


@click.group("ca")
def ca() -> None:
    """Manage the mesh certificate authority."""
