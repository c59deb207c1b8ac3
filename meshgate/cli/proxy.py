"""`meshgate proxy`: Manage proxies (Envoy sidecars and edge gateways) and see their status."""

from __future__ import annotations

import click


@click.group("proxy")
def proxy() -> None:
    """Manage proxies (Envoy sidecars and edge gateways) and see their status."""
