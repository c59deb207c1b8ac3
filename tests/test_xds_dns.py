"""Instances addressed by a host name: Envoy's EDS takes IP addresses only, so such a
service's `svc/<name>` is a strict DNS cluster with its endpoints inline (no EDS resource).

Real Envoys: callers over delta (web-1) and state-of-the-world (api-1) reach an orders
instance registered as `localhost`; the cluster follows the instances from DNS to EDS
and back (within 5 s, nothing warming, nothing rejected). Translation: the DNS cluster's
shape, its provenance (NACK tracing), and a consistent snapshot without EDS.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format

from meshgate.fleet.app import App
from meshgate.fleet.bootstrap import render_bootstrap
from meshgate.fleet.envoy import EnvoyProcess, free_port
from meshgate.model import Instance, Mesh, Proxy, Service, World
from meshgate.store.world import load_world
from meshgate.xds import types
from meshgate.xds.resources import Resource
from meshgate.xds.snapshot import Snapshot
from meshgate.xds.translate import WorldIndex, service_parts, translate_proxy
from meshgate.xds.translate.clusters import DNS_CLUSTER
from tests.mesh_kit import wait_for
from tests.xds_support import (
    ServerThread,
    instance,
    issuer_secrets,
    new_mesh,
    service,
    set_instance_address,
    sidecar,
)

SETTLE = 5.0
_SEEN: dict[str, Any] = {}  # what the last poll saw, per caller (for failure messages)


def _world(*instances: Instance) -> World:
    return World(revision=1, mesh=Mesh("example.org", default_action="allow"),
                 services={"orders": Service("orders", port=8080), "web": Service("web")},
                 proxies={"web-1": Proxy("web-1", "sidecar", service="web", outbound_port=15001)},
                 instances=instances)


def test_a_host_name_instance_makes_a_dns_cluster_with_inline_endpoints() -> None:
    world = _world(Instance(1, "orders", "10.0.0.7", 15006, 8080),
                   Instance(2, "orders", "orders-2.internal", 15006, 8080, weight=3),
                   Instance(3, "orders", "orders-3.internal", 15006, 8080, healthy=False))
    (cluster,) = service_parts(WorldIndex(world), "orders")  # one resource: no EDS
    c = json_format.MessageToDict(cluster.message, preserving_proto_field_name=True)
    assert "type" not in c and "eds_cluster_config" not in c
    assert c["cluster_type"]["name"] == DNS_CLUSTER
    dns = c["cluster_type"]["typed_config"]
    assert dns["respect_dns_ttl"] is True and dns["dns_lookup_family"] == "V4_PREFERRED"
    assert not dns.get("all_addresses_in_single_endpoint")  # strict DNS: every address a host
    hosts = [(lb["endpoint"]["address"]["socket_address"]["address"], lb["load_balancing_weight"])
             for loc in c["load_assignment"]["endpoints"] for lb in loc["lb_endpoints"]]
    assert hosts == [("10.0.0.7", 1), ("orders-2.internal", 3)]  # the unhealthy one is left out
    assert c["load_assignment"]["cluster_name"] == "svc/orders"
    # a CDS NACK names the instances, since they are now part of the cluster
    assert cluster.sources == ("service:orders", "instance:10.0.0.7:15006", "instance:orders-2.internal:15006")
    assert (types.ENDPOINT, "svc/orders") not in cluster.refs
    # the same bytes for every caller; the caller's snapshot is consistent without EDS
    resources = [Resource.from_generated(g) for g in translate_proxy(world, "web-1")]
    snap = Snapshot.build(resources)
    assert snap.problems() == [] and "svc/orders" not in snap.of(types.ENDPOINT)
    assert "svc/web" in snap.of(types.ENDPOINT)  # web keeps its EDS
    assert snap.of(types.CLUSTER)["svc/orders"].body == Resource.from_generated(cluster).body
    # only IP addresses (even an unhealthy host name decides): EDS again
    ips = _world(Instance(1, "orders", "10.0.0.7", 15006, 8080), Instance(2, "orders", "fd00::7", 15006, 8080))
    cluster, endpoints = service_parts(WorldIndex(ips), "orders")
    assert cluster.message.type == cluster.message.EDS and endpoints.type_url == types.ENDPOINT


def _poll(what: str, check: Callable[[], Any], timeout: float = SETTLE) -> Any:
    try:
        return wait_for(what, check, timeout)
    except AssertionError as exc:  # say what each caller saw last
        raise AssertionError(f"{exc} {_SEEN}") from None


def _get(port: int, host: str) -> tuple[int, Any]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/hello", headers={"Host": host})
    try:
        with urllib.request.urlopen(req, timeout=3) as r:  # noqa: S310 - loopback
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _orders_cluster(envoy: EnvoyProcess) -> dict[str, Any]:
    for section in envoy.config_dump()["configs"]:
        if section["@type"].endswith("ClustersConfigDump"):
            for c in section.get("dynamic_active_clusters", []):
                if c["cluster"]["name"] == "svc/orders":
                    return c["cluster"]  # type: ignore[no-any-return]
    return {}


def _kind(cluster: dict[str, Any]) -> str:
    return "dns" if cluster.get("cluster_type", {}).get("name") == DNS_CLUSTER else cluster.get("type", "")


@pytest.mark.envoy
def test_an_instance_named_localhost_takes_traffic_and_the_cluster_follows(tmp_path: Path) -> None:
    engine = new_mesh(tmp_path / "mesh.db")
    for name in ("web", "api", "orders"):
        service(engine, name)
    outbound = {"web-1": free_port(), "api-1": free_port()}
    tokens = {n: sidecar(engine, n, n.split("-")[0], p) for n, p in outbound.items()}
    tokens["orders-1"] = sidecar(engine, "orders-1", "orders", free_port())
    inbound = free_port()
    envoys: dict[str, EnvoyProcess] = {}
    with App("orders") as app:
        # the sidecar's inbound listener binds 0.0.0.0 for a host name: localhost and 127.0.0.1 reach it
        by_name = instance(engine, "orders", inbound, app.port, address="localhost", proxy="orders-1")
        world = load_world(engine)
        try:
            with ServerThread(engine, secrets=issuer_secrets(engine)) as srv:
                for name, delta in (("web-1", True), ("api-1", False), ("orders-1", True)):
                    boot = render_bootstrap(world.proxies[name], tokens[name], servers=[f"127.0.0.1:{srv.port}"],
                                            admin_port=free_port(), xds_ca_pem=None, delta=delta)
                    envoys[name] = EnvoyProcess(boot, tmp_path, name).start()
                for e in envoys.values():
                    e.wait_live()
                callers = ("web-1", "api-1")

                seen = _SEEN
                seen.clear()

                def serving(kind: str) -> bool:
                    for name in callers:
                        e = envoys[name]
                        status, body = _get(outbound[name], "orders")
                        seen[name] = (_kind(_orders_cluster(e)), e.stat("cluster_manager.warming_clusters"), status)
                        if seen[name] != (kind, 0, 200) or body["service"] != "orders":
                            return False
                    return True

                _poll("both callers reach localhost over a DNS cluster", lambda: serving("dns"), 15)
                for name in callers:
                    e = envoys[name]
                    assert e.stat("cluster.svc/orders.upstream_rq_200") >= 1
                    hosts = json.loads(e.admin("/clusters?format=json"))["cluster_statuses"]
                    (orders,) = [c for c in hosts if c["name"] == "svc/orders"]
                    assert [h["hostname"] for h in orders["host_statuses"]] == ["localhost"]
                # the instance is given its IP address: an EDS cluster (the sidecar's inbound
                # listener moves from 0.0.0.0 to 127.0.0.1); then its host name again: DNS
                set_instance_address(engine, by_name, "127.0.0.1")
                _poll("EDS again", lambda: serving("EDS"))
                set_instance_address(engine, by_name, "localhost")
                _poll("DNS again", lambda: serving("dns"))
                for name in callers:  # nothing was rejected along the way
                    e = envoys[name]
                    assert e.stat("cluster_manager.cds.update_rejected") == 0, name
                    assert e.stat("cluster.svc/orders.update_rejected") == 0, name
        finally:
            for e in envoys.values():
                e.stop()
            engine.dispose()
