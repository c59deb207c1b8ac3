"""Test helper: an Envoy bootstrap holding a proxy's translated resources statically.

Lets tests run the real Envoy on pure translation output without the xDS
server: RDS references become inline route configurations, EDS clusters become
STATIC clusters with their ClusterLoadAssignment, and SDS references point at
static secrets of the same name (Envoy 1.40's `--mode validate` also segfaults
on SDS-over-ADS references, so this form serves both uses).
"""

from __future__ import annotations

import json
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from meshgate.xds import types
from meshgate.xds.translate.generated import Generated


def to_dict(message: Message) -> dict[str, Any]:
    return json.loads(json_format.MessageToJson(message))


def _walk(node: Any, fn) -> Any:  # type: ignore[no-untyped-def]
    if isinstance(node, dict):
        fn(node)
        for v in list(node.values()):
            _walk(v, fn)
    elif isinstance(node, list):
        for v in node:
            _walk(v, fn)
    return node


def static_bootstrap(
    resources: list[Generated],
    secrets: list[Message],
    admin_port: int,
    node_id: str = "test",
) -> dict[str, Any]:
    routes = {g.name: to_dict(g.message) for g in resources if g.type_url == types.ROUTE}
    endpoints = {g.name: to_dict(g.message) for g in resources if g.type_url == types.ENDPOINT}

    def inline(node: dict[str, Any]) -> None:
        node.pop("sdsConfig", None)
        rds = node.get("rds")
        if isinstance(rds, dict) and "routeConfigName" in rds:
            node.pop("rds")
            node["routeConfig"] = routes[rds["routeConfigName"]]

    listeners = [_walk(to_dict(g.message), inline) for g in resources if g.type_url == types.LISTENER]
    clusters = []
    for g in resources:
        if g.type_url != types.CLUSTER:
            continue
        c = _walk(to_dict(g.message), inline)
        if c.get("type") == "EDS":
            c["type"] = "STATIC"
            c.pop("edsClusterConfig", None)
            c["loadAssignment"] = endpoints.get(g.name, {"clusterName": g.name})
        clusters.append(c)
    return {
        "node": {"id": node_id, "cluster": node_id},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {
            "listeners": listeners,
            "clusters": clusters,
            "secrets": [to_dict(s) for s in secrets],
        },
    }
