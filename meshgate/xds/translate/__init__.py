"""Translation: one immutable World in, Envoy protobuf out. Pure: no I/O, no clock.

    resources = translate_proxy(world, "orders-1")        # every resource, for tools and tests
    plan = proxy_plan(index, proxy, options)              # own resources + upstream names (server)
    parts = service_parts(index, "orders")   # svc/orders cluster (+ endpoints), shared by every caller

`translate_proxy` dispatches on the proxy's kind: sidecars (translate/sidecar.py)
and edge gateways (translate/edge.py). Secrets do not come from here: the
server's SecretProvider supplies them (edge host certificates and the client CA
via translate/edge.py's edge_secrets).
"""

from __future__ import annotations

from collections.abc import Callable

from meshgate.errors import NotFound
from meshgate.model import Proxy, World
from meshgate.xds.translate.edge import edge_plan
from meshgate.xds.translate.generated import DEFAULT_OPTIONS, Generated, Options
from meshgate.xds.translate.index import WorldIndex
from meshgate.xds.translate.plan import Plan, run
from meshgate.xds.translate.sidecar import service_parts, sidecar_plan

Planner = Callable[[WorldIndex, Proxy, Options], Plan]


PLANNERS: dict[str, Planner] = {"sidecar": sidecar_plan, "edge": edge_plan}


def proxy_plan(index: WorldIndex, proxy: Proxy, options: Options = DEFAULT_OPTIONS) -> Plan:
    """The proxy's plan, translated with its own options (`options.for_proxy`)."""
    return PLANNERS[proxy.kind](index, proxy, options.for_proxy(proxy.name))


def translate_proxy(
    world: World,
    proxy_name: str,
    *,
    options: Options = DEFAULT_OPTIONS,
    index: WorldIndex | None = None,
) -> list[Generated]:
    """Every resource (except secrets) the proxy gets, own first then per upstream."""
    proxy = world.proxies.get(proxy_name)
    if proxy is None:
        raise NotFound(f'proxy "{proxy_name}" not found')
    index = index or WorldIndex(world)
    plan = proxy_plan(index, proxy, options)
    out = list(plan.own)
    for name in plan.upstreams:
        out.extend(run(proxy, f"service {name}", service_parts, index, name))
    return out


__all__ = [
    "DEFAULT_OPTIONS",
    "Generated",
    "Options",
    "PLANNERS",
    "Plan",
    "WorldIndex",
    "proxy_plan",
    "service_parts",
    "translate_proxy",
]
