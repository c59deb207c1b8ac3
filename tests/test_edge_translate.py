"""Edge gateway translation: structure of the generated Envoy config (pure, no Envoy),
plus one `envoy --mode validate` of the whole gateway."""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace
from pathlib import Path

from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt_pb2
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2 as lrl
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)
from envoy.extensions.http.early_header_mutation.header_mutation.v3 import (
    header_mutation_pb2 as early,
)
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

from meshgate.config.envoy_check import static_bootstrap
from meshgate.fleet.envoy import find_envoy
from meshgate.model import (
    EdgeCert,
    EdgeRoute,
    Instance,
    JwtProvider,
    Mesh,
    Policy,
    Proxy,
    RateLimit,
    Service,
    World,
)
from meshgate.xds import types
from meshgate.xds.translate import WorldIndex, service_parts, tls, translate_proxy
from meshgate.xds.translate.edge import edge_secret_names, edge_secrets
from tests.edge_kit import AUDIENCE, ISSUER, MeshCa, Signer, jwks

CA = MeshCa()
CLIENT_CA = MeshCa(trust_domain="clients.example")
HOST_CERT, HOST_KEY = CA.leaf("spiffe://example.org/unused", ("api.example.com",))


def _world(**changes: object) -> World:
    w = World(
        revision=1,
        mesh=Mesh("example.org"),
        services={"orders": Service("orders", port=8080), "admin": Service("admin", port=8080)},
        instances=(Instance(1, "orders", "127.0.0.1", 15006, 9001),),
        proxies={
            "public": Proxy("public", "edge", listen="127.0.0.1:8443", http_redirect_port=8080,
                            client_ca_pem=CLIENT_CA.pem),
            "other": Proxy("other", "edge", listen="127.0.0.1:9443"),
        },
        routes=(
            EdgeRoute("orders", "public", "api.example.com", "/orders", "orders", "jwt:idp",
                      rate=RateLimit(100, 1), claims=(("role", "admin"),)),
            EdgeRoute("orders-v2", "public", "api.example.com", "/orders/v2", "orders", "none"),
            EdgeRoute("root", "public", "api.example.com", "/", "orders", "none"),
            EdgeRoute("machines", "public", "m.example.com", "/", "admin", "mtls",
                      claims=(("san", "spiffe://clients.example/bot"),)),
            EdgeRoute("elsewhere", "other", "x.example.com", "/", "admin", "none"),
        ),
        jwt_providers={
            "idp": JwtProvider("idp", ISSUER, (AUDIENCE,), jwks=jwks(Signer.es256())),
            "remote": JwtProvider("remote", ISSUER, (AUDIENCE,), jwks_uri="https://login.example.com/keys"),
        },
        edge_certs=(
            EdgeCert("public", "api.example.com", HOST_CERT, b"sealed-api"),
            EdgeCert("public", "m.example.com", HOST_CERT, b"sealed-m"),
            EdgeCert("other", "x.example.com", HOST_CERT, b"sealed-other"),
        ),
    )
    return replace(w, **changes)  # type: ignore[arg-type]


def _by(resources, type_url):  # type: ignore[no-untyped-def]
    return {g.name: g for g in resources if g.type_url == type_url}


def _manager(listener) -> hcm.HttpConnectionManager:  # type: ignore[no-untyped-def]
    m = hcm.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(m)
    return m


def test_gateway_resources_and_shared_service_clusters() -> None:
    world = _world()
    out = translate_proxy(world, "public")
    assert [(g.type_url.rsplit(".", 1)[1], g.name) for g in out] == [
        ("Listener", "edge-https"), ("RouteConfiguration", "edge"), ("Listener", "edge-http"),
        ("Cluster", "svc/admin"), ("ClusterLoadAssignment", "svc/admin"),
        ("Cluster", "svc/orders"), ("ClusterLoadAssignment", "svc/orders"),
    ]
    cluster = _by(out, types.CLUSTER)["svc/orders"]
    shared, _ = service_parts(WorldIndex(world), "orders")
    # byte for byte the sidecars' cluster: the resource cache serializes it once for all
    assert cluster.message.SerializeToString(deterministic=True) == shared.message.SerializeToString(deterministic=True)


def test_tls_listener_has_an_sni_chain_per_certificate() -> None:
    listener = _by(translate_proxy(_world(), "public"), types.LISTENER)["edge-https"].message
    assert listener.address.socket_address.port_value == 8443
    assert [f.name for f in listener.listener_filters] == ["envoy.filters.listener.tls_inspector"]
    chains = {c.name: c for c in listener.filter_chains}
    assert list(chains) == ["api.example.com", "m.example.com"]
    ctxs = {}
    for name, chain in chains.items():
        assert list(chain.filter_chain_match.server_names) == [name]
        ctx = tls_pb2.DownstreamTlsContext()
        chain.transport_socket.typed_config.Unpack(ctx)
        ctxs[name] = ctx
        assert [s.name for s in ctx.common_tls_context.tls_certificate_sds_secret_configs] == [f"edge-cert/{name}"]
        assert list(ctx.common_tls_context.alpn_protocols) == ["h2", "http/1.1"]
    # api.* mixes jwt/none routes: no client certificate; m.* is mtls only: required in the handshake
    assert not ctxs["api.example.com"].common_tls_context.HasField("validation_context_sds_secret_config")
    assert ctxs["api.example.com"].require_client_certificate.value is False
    assert ctxs["m.example.com"].common_tls_context.validation_context_sds_secret_config.name == "edge-client-ca"
    assert ctxs["m.example.com"].require_client_certificate.value is True


def test_mixed_host_asks_for_a_client_certificate_without_requiring_it() -> None:
    world = _world()
    world = replace(world, routes=world.routes + (
        EdgeRoute("api-machines", "public", "api.example.com", "/machines", "admin", "mtls"),))
    listener = _by(translate_proxy(world, "public"), types.LISTENER)["edge-https"].message
    ctx = tls_pb2.DownstreamTlsContext()
    listener.filter_chains[0].transport_socket.typed_config.Unpack(ctx)
    assert ctx.common_tls_context.validation_context_sds_secret_config.name == "edge-client-ca"
    assert ctx.require_client_certificate.value is False


def test_connection_manager_trusts_nothing_from_outside() -> None:
    m = _manager(_by(translate_proxy(_world(), "public"), types.LISTENER)["edge-https"].message)
    assert m.use_remote_address.value is True
    assert m.forward_client_cert_details == hcm.HttpConnectionManager.SANITIZE
    assert m.normalize_path.value is True and m.merge_slashes is True
    assert m.path_with_escaped_slashes_action == hcm.HttpConnectionManager.REJECT_REQUEST
    assert m.common_http_protocol_options.headers_with_underscores_action == \
        m.common_http_protocol_options.DROP_HEADER
    (ext,) = m.early_header_mutation_extensions
    mutation = early.HeaderMutation()
    ext.typed_config.Unpack(mutation)
    removed = [x.remove for x in mutation.mutations if x.remove]
    prefixes = [x.remove_on_match.key_matcher.prefix for x in mutation.mutations if x.HasField("remove_on_match")]
    assert removed == ["x-forwarded-client-cert"] and prefixes == ["x-meshgate-", "x-envoy-"]
    assert [f.name for f in m.http_filters] == [
        "envoy.filters.http.local_ratelimit", "envoy.filters.http.jwt_authn",
        "meshgate.edge.route", "meshgate.edge.deny", "meshgate.edge.allow", "envoy.filters.http.router",
    ]
    jwt = jwt_pb2.JwtAuthentication()
    m.http_filters[1].typed_config.Unpack(jwt)
    assert list(jwt.providers) == ["idp"]  # only providers its routes use
    p = jwt.providers["idp"]
    assert (p.issuer, list(p.audiences), p.payload_in_metadata, p.forward) == (ISSUER, [AUDIENCE], "idp", False)
    assert json.loads(p.local_jwks.inline_string)["keys"][0]["kty"] == "EC"
    assert m.rds.route_config_name == "edge"


def test_routes_longest_prefix_first_with_per_route_checks() -> None:
    routes = _by(translate_proxy(_world(), "public"), types.ROUTE)["edge"]
    assert routes.refs == ((types.CLUSTER, "svc/admin"), (types.CLUSTER, "svc/orders"))
    vhosts = {v.name: v for v in routes.message.virtual_hosts}
    assert list(vhosts) == ["api.example.com", "m.example.com", "no-route"]
    api = vhosts["api.example.com"]
    assert [r.name for r in api.routes] == ["orders-v2", "orders", "root"]
    assert api.routes[1].match.path_separated_prefix == "/orders"
    assert api.routes[2].match.prefix == "/"
    assert api.routes[1].route.cluster == "svc/orders"
    cfg = api.routes[1].typed_per_filter_config
    assert sorted(cfg) == ["envoy.filters.http.jwt_authn", "envoy.filters.http.local_ratelimit", "meshgate.edge.route"]
    per_route = jwt_pb2.PerRouteConfig()
    cfg["envoy.filters.http.jwt_authn"].Unpack(per_route)
    assert per_route.requirement_name == "idp"
    limit = lrl.LocalRateLimit()
    cfg["envoy.filters.http.local_ratelimit"].Unpack(limit)
    assert (limit.token_bucket.max_tokens, limit.token_bucket.fill_interval.seconds) == (100, 1)
    rbac = http_rbac.RBACPerRoute()
    cfg["meshgate.edge.route"].Unpack(rbac)
    (name,) = rbac.rbac.rules.policies
    assert name == "route:orders"
    claim = rbac.rbac.rules.policies[name].principals[0].sourced_metadata.metadata_matcher
    assert [p.key for p in claim.path] == ["idp", "role"]
    # an unauthenticated route carries no RBAC and turns jwt verification off explicitly
    open_cfg = api.routes[2].typed_per_filter_config
    assert sorted(open_cfg) == ["envoy.filters.http.jwt_authn"]
    open_cfg["envoy.filters.http.jwt_authn"].Unpack(per_route)
    assert per_route.disabled is True
    # the mtls route requires a certificate and the SAN
    vhosts["m.example.com"].routes[0].typed_per_filter_config["meshgate.edge.route"].Unpack(rbac)
    ids = rbac.rbac.rules.policies["route:machines"].principals[0].and_ids.ids
    assert ids[0].authenticated.principal_name.safe_regex.regex == ".+"
    assert ids[1].authenticated.principal_name.exact == "spiffe://clients.example/bot"
    assert vhosts["no-route"].routes[0].direct_response.status == 404


def test_edge_policy_claims_become_gateway_rbac() -> None:
    world = _world(policies=(
        Policy("read", "allow", ("edge:public",), "orders", methods=("GET",)),
        Policy("write", "allow", ("edge:public",), "orders", methods=("POST",), claims=(("role", "writer"),)),
        Policy("block", "deny", ("edge:public",), "orders", claims=(("sub", "mallory"),)),
        Policy("other-gw", "allow", ("edge:other",), "admin", claims=(("role", "x"),)),
    ))
    routes = _by(translate_proxy(world, "public"), types.ROUTE)["edge"].message
    api = {r.name: r for r in routes.virtual_hosts[0].routes}
    cfg = api["root"].typed_per_filter_config
    deny, allow = http_rbac.RBACPerRoute(), http_rbac.RBACPerRoute()
    cfg["meshgate.edge.deny"].Unpack(deny)
    cfg["meshgate.edge.allow"].Unpack(allow)
    assert list(deny.rbac.rules.policies) == ["block"]
    assert sorted(allow.rbac.rules.policies) == ["read", "write"]
    assert allow.rbac.rules.policies["read"].principals[0].any is True
    # on a route without a JWT, a claim can never hold
    never = allow.rbac.rules.policies["write"].principals[0]
    assert never.not_id.any is True
    # a route to a service no claim policy targets carries none of it
    machines = routes.virtual_hosts[1].routes[0].typed_per_filter_config
    assert "meshgate.edge.allow" not in machines and "meshgate.edge.deny" not in machines


def test_no_certificate_no_listener_and_remote_jwks_cluster() -> None:
    world = _world(edge_certs=(), routes=(
        EdgeRoute("r", "public", "api.example.com", "/", "orders", "jwt:remote"),))
    out = translate_proxy(world, "public")
    assert "edge-https" not in _by(out, types.LISTENER)  # nothing to present yet
    jwks_cluster = _by(out, types.CLUSTER)["jwks/remote"].message
    ctx = tls_pb2.UpstreamTlsContext()
    jwks_cluster.transport_socket.typed_config.Unpack(ctx)
    assert ctx.sni == "login.example.com"
    assert ctx.common_tls_context.validation_context.trusted_ca.filename == "/etc/ssl/certs/ca-certificates.crt"
    assert ctx.common_tls_context.validation_context.match_typed_subject_alt_names[0].matcher.exact == "login.example.com"


def test_redirect_listener_points_at_the_https_port() -> None:
    listener = _by(translate_proxy(_world(), "public"), types.LISTENER)["edge-http"].message
    assert listener.address.socket_address.port_value == 8080
    m = _manager(listener)
    redirect = m.route_config.virtual_hosts[0].routes[0].redirect
    assert redirect.https_redirect is True and redirect.port_redirect == 8443


def test_secrets_belong_to_their_gateway_only() -> None:
    world = _world()
    assert edge_secret_names(world, "public") == {"edge-cert/api.example.com", "edge-cert/m.example.com",
                                                  "edge-client-ca"}
    assert edge_secret_names(world, "other") == {"edge-cert/x.example.com"}
    seen: list[bytes] = []

    def opened(sealed: bytes) -> str:
        seen.append(sealed)
        return HOST_KEY

    secrets = edge_secrets(world, "public", opened)
    assert [s.name for s in secrets] == ["edge-cert/api.example.com", "edge-cert/m.example.com", "edge-client-ca"]
    assert seen == [b"sealed-api", b"sealed-m"]  # another gateway's key is never opened
    assert secrets[2].validation_context.trusted_ca.inline_string == CLIENT_CA.pem
    assert edge_secrets(world, "nope", opened) == []


def test_real_envoy_accepts_the_gateway(tmp_path: Path) -> None:
    world = _world()
    world = replace(world, routes=world.routes + (
        EdgeRoute("remote", "public", "api.example.com", "/remote", "orders", "jwt:remote"),))
    secrets = edge_secrets(world, "public", lambda _s: HOST_KEY)
    secrets += [tls.identity_secret(*CA.leaf("spiffe://example.org/edge/public")),
                tls.trust_bundle_secret(CA.pem)]
    path = tmp_path / "gw.json"
    path.write_text(json.dumps(static_bootstrap(world.proxies["public"], translate_proxy(world, "public"),
                                                secrets=secrets)))
    out = subprocess.run([find_envoy(), "--mode", "validate", "-c", str(path), "--disable-hot-restart",
                          "-l", "error"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_sidecar_leaves_claim_conditioned_denies_to_the_gateway() -> None:
    """The sidecar cannot see claims: a deny rule from edge:public with claims must not
    deny every request the gateway forwards (the gateway enforces it)."""
    from meshgate.policy.compile import policy_for

    world = _world()
    p = Policy("block", "deny", ("edge:public",), "orders", claims=(("sub", "mallory"),))
    (principal,) = policy_for(world, p, http=True).principals
    assert principal.not_id.any is True
    mixed = Policy("block2", "deny", ("edge:public", "web"), "orders", claims=(("sub", "m"),))
    (principal,) = policy_for(world, mixed, http=True).principals
    assert principal.authenticated.principal_name.exact == "spiffe://example.org/svc/web"
