"""Resource names users see in Envoy's admin page and stats: stable and readable."""

from __future__ import annotations

LOCAL_APP_CLUSTER = "local-app"
INBOUND_LISTENER = "inbound"
INBOUND_ROUTE = "inbound"  # RDS: the local app route, carrying the RBAC rules
OUTBOUND_LISTENER = "outbound"
OUTBOUND_ROUTE = "outbound"
TCP_LISTENER_PREFIX = "outbound-tcp/"


def service_cluster_name(service: str) -> str:
    return f"svc/{service}"


def tcp_listener_name(service: str) -> str:
    return TCP_LISTENER_PREFIX + service


def instance_source(address: str, port: int) -> str:
    """`instance:<address>:<inbound port>` (the instance's stable key, as in revisions)."""
    host = f"[{address}]" if ":" in address else address
    return f"instance:{host}:{port}"
