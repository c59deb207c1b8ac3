"""`meshgate policy`: Manage authorization policies: who may call what."""

from __future__ import annotations

import click


@click.group("policy")
def policy() -> None:
    """Manage authorization policies: who may call what."""
