"""`meshgate service`: Manage services (name, protocol, port, labels)."""

from __future__ import annotations

import click


@click.group("service")
def service() -> None:
    """Manage services (name, protocol, port, labels)."""
