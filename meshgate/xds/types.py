"""xDS type URLs, named once, and the order the server pushes them in.

Push order is CDS, EDS, SDS, LDS, RDS ("make before break"): a cluster and its
endpoints and secrets must exist in Envoy before a listener or route points at
them, else Envoy briefly routes to a cluster it does not know (503) or warms a
listener on a secret that never comes. Envoy itself asks in this order (ENVOY_NOTES.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from google.protobuf.message import Message

_PREFIX = "type.googleapis.com/"

CLUSTER = _PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINT = _PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
SECRET = _PREFIX + "envoy.extensions.transport_sockets.tls.v3.Secret"
LISTENER = _PREFIX + "envoy.config.listener.v3.Listener"
ROUTE = _PREFIX + "envoy.config.route.v3.RouteConfiguration"

PUSH_ORDER: tuple[str, ...] = (CLUSTER, ENDPOINT, SECRET, LISTENER, ROUTE)

S = TypeVar("S")
R = TypeVar("R")


def in_push_order(subscribed: Mapping[str, S], respond: Callable[[str, S], R | None]) -> list[R]:
    """`respond(type, state)` for every subscribed type in push order; the responses
    that are not None (the same walk for state-of-the-world and delta streams)."""
    out: list[R] = []
    for t in PUSH_ORDER:
        if t in subscribed:
            resp = respond(t, subscribed[t])
            if resp is not None:
                out.append(resp)
    return out

# Short names users see (`proxy status`, `proxy config --type`, proxy_status.type).
SHORT: dict[str, str] = {CLUSTER: "cds", ENDPOINT: "eds", SECRET: "sds", LISTENER: "lds", ROUTE: "rds"}
BY_SHORT: dict[str, str] = {v: k for k, v in SHORT.items()}

MESSAGE: dict[str, type[Message]] = {
    CLUSTER: cluster_pb2.Cluster,
    ENDPOINT: endpoint_pb2.ClusterLoadAssignment,
    SECRET: secret_pb2.Secret,
    LISTENER: listener_pb2.Listener,
    ROUTE: route_pb2.RouteConfiguration,
}

# In state-of-the-world, an empty name list means "everything" only for these
# (the legacy wildcard); EDS, RDS and SDS are always asked for by name.
WILDCARD_BY_DEFAULT: frozenset[str] = frozenset({CLUSTER, LISTENER})
WILDCARD = "*"


def short(type_url: str) -> str:
    return SHORT.get(type_url, type_url)


def is_known(type_url: str) -> bool:
    return type_url in SHORT
