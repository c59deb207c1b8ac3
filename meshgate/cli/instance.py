"""`meshgate instance`: Manage the instances (replicas) of services."""

from __future__ import annotations

import click


@click.group("instance")
def instance() -> None:
    """Manage the instances (replicas) of services."""
