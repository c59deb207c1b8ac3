"""Translation is pure: a World in, Envoy protobuf out. Names, shapes, scoping, seams."""

from __future__ import annotations

import pytest
from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from meshgate.model import Instance, Mesh, Policy, Proxy, Service, World
from meshgate.policy import compile as policy_compile
from meshgate.xds import types
from meshgate.xds.errors import TranslateError
from meshgate.xds.translate import Options, WorldIndex, translate_proxy
from meshgate.xds.translate import sidecar as sidecar_mod


def world(default_action: str = "allow", mtls: str = "strict", policies: tuple[Policy, ...] = ()) -> World:
    return World(
        revision=7,
        mesh=Mesh("example.org", mtls_mode=mtls, default_action=default_action),  # type: ignore[arg-type]
        services={
            "web": Service("web"),
            "orders": Service("orders", port=8080),
            "pay": Service("pay", protocol="grpc", port=9090),
            "db": Service("db", protocol="tcp", port=25432),
        },
        instances=(
            Instance(1, "web", "127.0.0.1", 15001, 9000, proxy="web-1"),
            Instance(2, "orders", "10.0.0.2", 15006, 8080, proxy="orders-1"),
            Instance(3, "orders", "10.0.0.3", 15006, 8080, healthy=False),
            Instance(4, "pay", "10.0.0.4", 15006, 9090, weight=3),
            Instance(5, "db", "10.0.0.5", 15006, 5432, proxy="db-1"),
        ),
        proxies={
            "web-1": Proxy("web-1", "sidecar", service="web", outbound_port=15101),
            "web-2": Proxy("web-2", "sidecar", service="web"),
            "orders-1": Proxy("orders-1", "sidecar", service="orders"),
            "db-1": Proxy("db-1", "sidecar", service="db"),
        },
        policies=policies,
    )


def by_name(gens) -> dict[tuple[str, str], object]:  # type: ignore[no-untyped-def]
    return {(types.short(g.type_url), g.name): g for g in gens}


def hcm_of(listener) -> hcm_pb2.HttpConnectionManager:  # type: ignore[no-untyped-def]
    m = hcm_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[-1].typed_config.Unpack(m)
    return m


def test_sidecar_names_and_shapes() -> None:
    res = by_name(translate_proxy(world(), "web-1"))
    assert set(res) == {
        ("cds", "local-app"), ("lds", "inbound"), ("rds", "inbound"), ("lds", "outbound"),
        ("rds", "outbound"), ("lds", "outbound-tcp/db"),
        *{(t, f"svc/{s}") for s in ("db", "orders", "pay", "web") for t in ("cds", "eds")},
    }
    orders = res[("cds", "svc/orders")].message
    assert orders.type == cluster_pb2.Cluster.EDS and orders.eds_cluster_config.eds_config.HasField("ads")
    pay = res[("cds", "svc/pay")].message
    assert "envoy.extensions.upstreams.http.v3.HttpProtocolOptions" in pay.typed_extension_protocol_options
    eds = res[("eds", "svc/orders")].message
    ports = [(lb.endpoint.address.socket_address.address) for lb in eds.endpoints[0].lb_endpoints]
    assert ports == ["10.0.0.2"]  # the unhealthy instance is left out
    local = res[("cds", "local-app")].message
    assert local.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value == 9000
    inbound = res[("lds", "inbound")].message
    assert inbound.address.socket_address.port_value == 15001
    assert inbound.filter_chains[0].transport_socket.name == "envoy.transport_sockets.tls"
    outbound = res[("lds", "outbound")].message
    assert (outbound.address.socket_address.address, outbound.address.socket_address.port_value) == ("127.0.0.1", 15101)
    assert hcm_of(outbound).rds.route_config_name == "outbound"
    routes = res[("rds", "outbound")].message
    vhosts = {v.name: list(v.domains) for v in routes.virtual_hosts}
    assert vhosts == {"orders": ["orders", "orders:8080"], "pay": ["pay", "pay:9090"], "web": ["web", "web:80"],
                      "no-route": ["*"]}  # tcp services have no virtual host
    tcp = res[("lds", "outbound-tcp/db")].message
    assert tcp.address.socket_address.port_value == 25432
    assert res[("eds", "svc/orders")].sources == ("service:orders", "instance:10.0.0.2:15006")


def test_every_hcm_is_hardened_and_inbound_forwards_the_caller_identity() -> None:
    res = by_name(translate_proxy(world(), "web-1"))
    for name in ("inbound", "outbound"):
        m = hcm_of(res[("lds", name)].message)
        assert m.normalize_path.value and m.merge_slashes
        assert m.path_with_escaped_slashes_action == hcm_pb2.HttpConnectionManager.REJECT_REQUEST
        assert m.http_filters[-1].name == "envoy.filters.http.router"
    assert hcm_of(res[("lds", "inbound")].message).forward_client_cert_details == \
        hcm_pb2.HttpConnectionManager.SANITIZE_SET


def test_default_deny_scopes_outbound_to_allowed_services() -> None:
    w = world("deny", policies=(Policy("web-to-orders", "allow", ("web",), "orders"),))
    web = by_name(translate_proxy(w, "web-1"))
    assert {n for t, n in web if t == "cds"} == {"local-app", "svc/orders"}
    orders = by_name(translate_proxy(w, "orders-1"))
    assert {n for t, n in orders if t == "cds"} == {"local-app"}  # orders may call nobody
    inbound = hcm_of(orders[("lds", "inbound")].message)
    names = [f.name for f in inbound.http_filters]
    assert names[-3:] == [policy_compile.DENY_FILTER, policy_compile.ALLOW_FILTER, "envoy.filters.http.router"]
    # the rules ride on RDS `inbound` (policy changes must not touch the listener)
    assert inbound.rds.route_config_name == "inbound"
    assert "policy:web-to-orders" in orders[("rds", "inbound")].sources
    vhost = orders[("rds", "inbound")].message.virtual_hosts[0]
    assert set(vhost.typed_per_filter_config) == {policy_compile.DENY_FILTER, policy_compile.ALLOW_FILTER}


def test_tcp_service_inbound_uses_network_rbac_then_tcp_proxy() -> None:
    w = world("deny", policies=(Policy("web-db", "allow", ("web",), "db"),))
    inbound = by_name(translate_proxy(w, "db-1"))[("lds", "inbound")].message
    filters = [f.name for f in inbound.filter_chains[0].filters]
    assert filters == [policy_compile.ALLOW_FILTER, "envoy.filters.network.tcp_proxy"]


def test_permissive_mode_has_tls_and_plaintext_chains() -> None:
    inbound = by_name(translate_proxy(world(mtls="permissive"), "web-1"))[("lds", "inbound")].message
    assert [lf.name for lf in inbound.listener_filters] == ["envoy.filters.listener.tls_inspector"]
    chains = {c.name: c for c in inbound.filter_chains}
    assert chains["mtls"].filter_chain_match.transport_protocol == "tls" and chains["mtls"].HasField("transport_socket")
    assert chains["plaintext"].filter_chain_match.transport_protocol == "raw_buffer"
    assert not chains["plaintext"].HasField("transport_socket")


def test_sidecar_without_an_instance_has_no_inbound_side() -> None:
    res = by_name(translate_proxy(world(), "web-2"))
    assert ("lds", "inbound") not in res and ("cds", "local-app") not in res
    assert ("lds", "outbound") in res


def test_shared_resources_are_the_same_bytes_for_every_caller_and_translation_is_deterministic() -> None:
    w = world()
    a = by_name(translate_proxy(w, "web-1"))
    b = by_name(translate_proxy(w, "orders-1"))
    for key in (("cds", "svc/pay"), ("eds", "svc/pay")):
        assert a[key].message.SerializeToString(deterministic=True) == \
            b[key].message.SerializeToString(deterministic=True)
    again = by_name(translate_proxy(w, "web-1"))
    assert {k: g.message.SerializeToString(deterministic=True) for k, g in a.items()} == \
        {k: g.message.SerializeToString(deterministic=True) for k, g in again.items()}


def test_access_log_hook_reaches_every_hcm_and_tcp_proxy() -> None:
    http_log = accesslog_pb2.AccessLog(name="test.http")
    tcp_log = accesslog_pb2.AccessLog(name="test.tcp")
    res = by_name(translate_proxy(world(), "web-1", options=Options(http_access_log=(http_log,),
                                                                     tcp_access_log=(tcp_log,))))
    for name in ("inbound", "outbound"):
        assert [a.name for a in hcm_of(res[("lds", name)].message).access_log] == ["test.http"]
    tp = tcp_proxy_pb2.TcpProxy()
    res[("lds", "outbound-tcp/db")].message.filter_chains[0].filters[0].typed_config.Unpack(tp)
    assert [a.name for a in tp.access_log] == ["test.tcp"]


def test_a_failing_generator_names_the_proxy_and_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_a: object) -> None:
        raise ValueError("bad port")

    monkeypatch.setattr(sidecar_mod, "outbound_listener", boom)
    with pytest.raises(TranslateError, match='proxy "web-1": outbound listener failed: ValueError: bad port'):
        translate_proxy(world(), "web-1")


def test_narrowed_worlds_give_the_same_policy_results() -> None:
    policies = (
        Policy("a", "allow", ("web",), "orders", seq=1),
        Policy("b", "allow", ("*",), "pay", seq=2),
        Policy("c", "deny", ("web",), "pay", methods=("DELETE",), seq=3),
        Policy("d", "allow", ("orders", "web"), "db", mode="audit", seq=4),
    )
    for default in ("allow", "deny"):
        w = world(default, policies=policies)
        idx = WorldIndex(w)
        for s in w.services:
            assert idx.reachable(s) == frozenset(policy_compile.reachable_services(w, s))
            narrowed, full = idx.target_world(s), w
            for fn in (policy_compile.http_rbac_filters, policy_compile.network_rbac_filters):
                assert [f.SerializeToString(deterministic=True) for f in fn(narrowed, s)] == \
                    [f.SerializeToString(deterministic=True) for f in fn(full, s)]
