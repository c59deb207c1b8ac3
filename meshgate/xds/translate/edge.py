"""An edge gateway's configuration: the public HTTPS side and the routes into the mesh.

    plan = edge_plan(index, gateway_proxy, options)   # PLANNERS["edge"]
    edge_secret_names(world, "public")                # what SDS may send this gateway
    edge_secrets(world, "public", open_key)           # those secrets (keys opened by the caller)

- `edge-https` on the gateway's `listen` address: the TLS inspector reads SNI
  and one filter chain per host with a certificate presents `edge-cert/<host>`
  (SDS). ALPN offers h2 and http/1.1. A host whose routes are all `mtls`
  requires a client certificate from `edge-client-ca` in the handshake; a host
  mixing `mtls` with other routes asks for one and RBAC enforces it per route.
- Its connection manager takes nothing on trust from outside: the caller's
  address is the TCP peer (use_remote_address), `x-forwarded-client-cert`,
  every `x-meshgate-*` and `x-envoy-*` header is removed before any filter or
  route sees the request, headers with underscores are dropped (some servers
  read `x_meshgate_x` as `x-meshgate-x`), and paths are hardened like every
  other meshgate HCM. Then the filters of `edge_auth` run, then the router.
- `edge` (RDS): one virtual host per host, routes longest prefix first to the
  shared `svc/<service>` clusters (the sidecar translation's, byte for byte);
  any other Host gets 404.
- `edge-http` (optional, `http_redirect_port`): plain HTTP answered with a
  redirect to https on the `listen` port.
- `jwks/<provider>` clusters for providers with a remote JWKS URI.

The gateway reaches services over mTLS with its `identity` secret
(`spiffe://<td>/edge/<gateway>`), so sidecars apply mesh policy to it like to
any caller.
"""

from __future__ import annotations

from collections.abc import Callable

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.common.mutation_rules.v3 import mutation_rules_pb2
from envoy.config.core.v3 import base_pb2, extension_pb2, protocol_pb2
from envoy.config.listener.v3 import listener_components_pb2 as lc
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)
from envoy.extensions.http.early_header_mutation.header_mutation.v3 import (
    header_mutation_pb2 as early_mutation,
)
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.type.matcher.v3 import metadata_pb2, string_pb2, value_pb2
from google.protobuf import wrappers_pb2

from meshgate.model import EdgeRoute, JwtProvider, Proxy, World
from meshgate.policy.hardening import apply_path_hardening
from meshgate.store.edge import host_matches
from meshgate.validation import is_ip, split_host_port
from meshgate.xds import types
from meshgate.xds.translate import edge_auth, tls
from meshgate.xds.translate.common import ads_source, pack, socket_address
from meshgate.xds.translate.edge_jwks import jwks_cluster
from meshgate.xds.translate.generated import Generated, Options
from meshgate.xds.translate.hcm import HCM_FILTER, router_filter
from meshgate.xds.translate.health import APP_UNAVAILABLE_HEADER, safe_retry_policy
from meshgate.xds.translate.index import WorldIndex
from meshgate.xds.translate.limits import apply_request_limits, limit_listener_buffer
from meshgate.xds.translate.names import service_cluster_name
from meshgate.xds.translate.plan import Plan, run
from meshgate.xds.translate.routes import no_route_virtual_host

HTTPS_LISTENER = "edge-https"
HTTP_LISTENER = "edge-http"
ROUTE_CONFIG = "edge"
CLIENT_CA_SECRET = "edge-client-ca"
TLS_INSPECTOR = "envoy.filters.listener.tls_inspector"
EARLY_MUTATION = "envoy.http.early_header_mutation.header_mutation"
STRIPPED_EXACT = ("x-forwarded-client-cert",)
STRIPPED_PREFIXES = ("x-meshgate-", "x-envoy-")
NO_ROUTE_BODY = "meshgate edge: no route for this host and path\n"


def edge_cert_secret(host: str) -> str:
    return f"edge-cert/{host}"


# -- what a gateway serves ---------------------------------------------------------


def gateway_routes(world: World, gateway: str) -> list[EdgeRoute]:
    return [r for r in world.routes if r.gateway == gateway]


def cert_hosts(world: World, gateway: str) -> list[str]:
    return sorted({c.host for c in world.edge_certs if c.gateway == gateway})


def used_providers(world: World, routes: list[EdgeRoute]) -> list[JwtProvider]:
    names = sorted({r.auth[4:] for r in routes if r.auth.startswith("jwt:")})
    return [world.jwt_providers[n] for n in names if n in world.jwt_providers]


def servable(world: World, route: EdgeRoute) -> bool:
    """A route Envoy can serve: its service exists and its provider too (the store
    guarantees both; a World built by hand might not)."""
    if route.service not in world.services:
        return False
    return not route.auth.startswith("jwt:") or route.auth[4:] in world.jwt_providers


# -- the HTTPS listener ------------------------------------------------------------


def _strip_identity_headers() -> extension_pb2.TypedExtensionConfig:
    mutations = [mutation_rules_pb2.HeaderMutation(remove=name) for name in STRIPPED_EXACT]
    mutations += [
        mutation_rules_pb2.HeaderMutation(
            remove_on_match=mutation_rules_pb2.HeaderMutation.RemoveOnMatch(
                key_matcher=string_pb2.StringMatcher(prefix=prefix, ignore_case=True)
            )
        )
        for prefix in STRIPPED_PREFIXES
    ]
    return extension_pb2.TypedExtensionConfig(
        name=EARLY_MUTATION, typed_config=pack(early_mutation.HeaderMutation(mutations=mutations))
    )


def https_manager(providers: list[JwtProvider], options: Options) -> lc.Filter:
    filters = [edge_auth.ratelimit_filter()]
    if providers:
        filters.append(edge_auth.jwt_filter(providers))
    filters += edge_auth.rbac_filters()
    manager = hcm.HttpConnectionManager(
        stat_prefix="edge_https",
        codec_type=hcm.HttpConnectionManager.AUTO,
        rds=hcm.Rds(config_source=ads_source(), route_config_name=ROUTE_CONFIG),
        http_filters=[*filters, router_filter()],
        access_log=list(options.http_access_log),
        forward_client_cert_details=hcm.HttpConnectionManager.SANITIZE,
        early_header_mutation_extensions=[_strip_identity_headers()],
        strip_any_host_port=True,
        common_http_protocol_options=protocol_pb2.HttpProtocolOptions(
            headers_with_underscores_action=protocol_pb2.HttpProtocolOptions.DROP_HEADER
        ),
    )
    manager.use_remote_address.value = True
    if providers:
        manager.local_reply_config.CopyFrom(_jwt_failures_are_401())
    apply_path_hardening(manager)
    apply_request_limits(manager, edge=True)  # anyone can connect here (limits.py)
    return lc.Filter(name=HCM_FILTER, typed_config=pack(manager))


def _jwt_failures_are_401() -> hcm.LocalReplyConfig:
    """jwt_authn answers a token for another audience with 403, every other bad
    token with 401 (measured). A token that fails verification is not an
    identity, so every failure becomes 401; RBAC's 403s (a valid token that
    lacks a claim) carry no failure status and stay 403."""
    failed = accesslog_pb2.AccessLogFilter(
        metadata_filter=accesslog_pb2.MetadataFilter(
            matcher=metadata_pb2.MetadataMatcher(
                filter=edge_auth.JWT_FILTER,
                path=[metadata_pb2.MetadataMatcher.PathSegment(key=edge_auth.JWT_FAILURE_KEY)],
                value=value_pb2.ValueMatcher(present_match=True),
            ),
            match_if_key_not_found=wrappers_pb2.BoolValue(value=False),
        )
    )
    forbidden = accesslog_pb2.AccessLogFilter(
        status_code_filter=accesslog_pb2.StatusCodeFilter(
            comparison=accesslog_pb2.ComparisonFilter(
                op=accesslog_pb2.ComparisonFilter.EQ,
                value=base_pb2.RuntimeUInt32(default_value=403, runtime_key="meshgate.edge.jwt403"),
            )
        )
    )
    return hcm.LocalReplyConfig(
        mappers=[
            hcm.ResponseMapper(
                filter=accesslog_pb2.AccessLogFilter(
                    and_filter=accesslog_pb2.AndFilter(filters=[forbidden, failed])
                ),
                status_code=wrappers_pb2.UInt32Value(value=401),
            )
        ]
    )


def chain_routes(cert_host: str, cert_hosts: list[str], routes: list[EdgeRoute]) -> list[EdgeRoute]:
    """Routes whose requests arrive on `cert_host`'s filter chain: its own host, and
    for a wildcard the hosts it covers that have no certificate of their own
    (Envoy picks the most specific server name)."""
    return [
        r for r in routes
        if r.host == cert_host
        or (cert_host.startswith("*.") and r.host not in cert_hosts and host_matches(r.host, (cert_host,)))
    ]


def _downstream_tls(host: str, host_routes: list[EdgeRoute], has_client_ca: bool) -> base_pb2.TransportSocket:
    wants_cert = has_client_ca and any(r.auth == "mtls" for r in host_routes)
    ctx = tls.edge_downstream_context(
        edge_cert_secret(host), CLIENT_CA_SECRET if wants_cert else None
    )
    if wants_cert and not all(r.auth == "mtls" for r in host_routes):
        ctx.require_client_certificate.value = False  # asked for; RBAC enforces per route
    return tls.transport_socket(ctx)


def https_listener(proxy: Proxy, world: World, routes: list[EdgeRoute], options: Options) -> Generated | None:
    """`edge-https`, or None while the gateway has no certificate (nothing to present)."""
    hosts = cert_hosts(world, proxy.name)
    parsed = split_host_port(proxy.listen or "")
    if not hosts or parsed is None:
        return None
    address, port = parsed
    manager = https_manager(used_providers(world, routes), options)
    listener = listener_pb2.Listener(
        name=HTTPS_LISTENER,
        address=socket_address(address if is_ip(address) else "0.0.0.0", port),
        traffic_direction=base_pb2.INBOUND,
        listener_filters=[
            lc.ListenerFilter(name=TLS_INSPECTOR, typed_config=pack(tls_inspector_pb2.TlsInspector()))
        ],
    )
    limit_listener_buffer(listener)
    has_ca = bool(proxy.client_ca_pem)
    for host in hosts:
        listener.filter_chains.append(
            lc.FilterChain(
                name=host,
                filter_chain_match=lc.FilterChainMatch(server_names=[host]),
                filters=[manager],
                transport_socket=_downstream_tls(host, chain_routes(host, hosts, routes), has_ca),
            )
        )
    refs: list[tuple[str, str]] = [(types.ROUTE, ROUTE_CONFIG)]
    refs += [(types.SECRET, edge_cert_secret(h)) for h in hosts]
    if has_ca:
        refs.append((types.SECRET, CLIENT_CA_SECRET))
    sources = [f"proxy:{proxy.name}"] + [f"edge-cert:{proxy.name}/{h}" for h in hosts]
    sources += [f"jwt-provider:{p.name}" for p in used_providers(world, routes)]
    return Generated(types.LISTENER, HTTPS_LISTENER, listener, sources=tuple(sources), refs=tuple(refs))


def http_redirect_listener(proxy: Proxy) -> Generated | None:
    """`edge-http`: every plain-HTTP request is redirected to https on the listen port."""
    parsed = split_host_port(proxy.listen or "")
    if proxy.http_redirect_port is None or parsed is None:
        return None
    address, https_port = parsed
    redirect = rc.RedirectAction(https_redirect=True)
    if https_port != 443:
        redirect.port_redirect = https_port
    config = route_pb2.RouteConfiguration(
        name=HTTP_LISTENER,
        virtual_hosts=[
            rc.VirtualHost(
                name="redirect",
                domains=["*"],
                routes=[rc.Route(match=rc.RouteMatch(prefix="/"), redirect=redirect)],
            )
        ],
    )
    manager = hcm.HttpConnectionManager(
        stat_prefix="edge_http",
        codec_type=hcm.HttpConnectionManager.AUTO,
        route_config=config,
        http_filters=[router_filter()],
        strip_any_host_port=True,
    )
    manager.use_remote_address.value = True
    apply_path_hardening(manager)
    apply_request_limits(manager, edge=True)
    listener = listener_pb2.Listener(
        name=HTTP_LISTENER,
        address=socket_address(address if is_ip(address) else "0.0.0.0", proxy.http_redirect_port),
        traffic_direction=base_pb2.INBOUND,
        filter_chains=[lc.FilterChain(filters=[lc.Filter(name=HCM_FILTER, typed_config=pack(manager))])],
    )
    limit_listener_buffer(listener)
    return Generated(types.LISTENER, HTTP_LISTENER, listener, sources=(f"proxy:{proxy.name}",))


# -- routes ----------------------------------------------------------------------


def _match(prefix: str) -> rc.RouteMatch:
    """`/orders` matches /orders and /orders/..., not /ordersx; `/` and `/a/` are plain prefixes."""
    if prefix == "/" or prefix.endswith("/"):
        return rc.RouteMatch(prefix=prefix)
    return rc.RouteMatch(path_separated_prefix=prefix)


def _route(index: WorldIndex, r: EdgeRoute, with_jwt: bool) -> rc.Route:
    route = rc.Route(
        name=r.id,
        match=_match(r.prefix),
        # retried on another instance only when the request never reached an app (health.py)
        route=rc.RouteAction(cluster=service_cluster_name(r.service), retry_policy=safe_retry_policy()),
        response_headers_to_remove=[APP_UNAVAILABLE_HEADER],  # meant for this hop only
    )
    # only the policies targeting the route's service matter (index: no scan per route)
    scoped = index.target_world(r.service)
    for name, cfg in sorted(edge_auth.route_filter_configs(scoped, r, with_jwt).items()):
        route.typed_per_filter_config[name].CopyFrom(cfg)
    return route


def edge_route_config(index: WorldIndex, routes: list[EdgeRoute]) -> Generated:
    """`edge`: a virtual host per host, longest prefix first; any other Host is 404."""
    world = index.world
    with_jwt = bool(used_providers(world, routes))
    hosts = sorted({r.host for r in routes})
    vhosts = []
    for host in hosts:
        mine = sorted((r for r in routes if r.host == host), key=lambda r: (-len(r.prefix), r.prefix))
        vhosts.append(rc.VirtualHost(name=host, domains=[host], routes=[_route(index, r, with_jwt) for r in mine]))
    vhosts.append(no_route_virtual_host(NO_ROUTE_BODY))
    config = route_pb2.RouteConfiguration(name=ROUTE_CONFIG, virtual_hosts=vhosts)
    sources = tuple(f"route:{r.id}" for r in routes) + tuple(
        f"policy:{p.id}" for p in world.policies
        if p.claims and any(f"edge:{r.gateway}" in p.sources and p.target == r.service for r in routes)
    )
    refs = tuple((types.CLUSTER, service_cluster_name(s)) for s in sorted({r.service for r in routes}))
    return Generated(types.ROUTE, ROUTE_CONFIG, config, sources=sources, refs=refs)


# -- the plan --------------------------------------------------------------------


def edge_plan(index: WorldIndex, proxy: Proxy, options: Options) -> Plan:
    world = index.world
    routes = [r for r in gateway_routes(world, proxy.name) if servable(world, r)]
    own: list[Generated] = []
    listener = run(proxy, "edge https listener", https_listener, proxy, world, routes, options)
    if listener is not None:
        own.append(listener)
        own.append(run(proxy, "edge routes", edge_route_config, index, routes))
    redirect = run(proxy, "edge http redirect listener", http_redirect_listener, proxy)
    if redirect is not None:
        own.append(redirect)
    for p in used_providers(world, routes):
        if p.jwks_uri:
            own.append(run(proxy, f"jwks cluster for {p.name}", jwks_cluster, p))
    upstreams = tuple(sorted({r.service for r in routes}))
    return Plan(own=tuple(own), upstreams=upstreams)


# -- secrets (served by the xDS server's secret provider) --------------------------


def edge_secret_names(world: World, gateway: str) -> set[str]:
    """The gateway-only secrets `gateway` may ask for (besides identity and trust-bundle)."""
    proxy = world.proxies.get(gateway)
    if proxy is None or proxy.kind != "edge":
        return set()
    names = {edge_cert_secret(h) for h in cert_hosts(world, gateway)}
    if proxy.client_ca_pem:
        names.add(CLIENT_CA_SECRET)
    return names


def edge_secrets(
    world: World, gateway: str, open_key: Callable[[bytes], str]
) -> list[secret_pb2.Secret]:
    """Host certificates (keys opened by `open_key`, e.g. KeyBox.decrypt) and the
    client CA bundle of `gateway`: never another gateway's."""
    proxy = world.proxies.get(gateway)
    if proxy is None or proxy.kind != "edge":
        return []
    out = [
        tls.identity_secret(c.cert_pem, open_key(c.key_pem_encrypted), name=edge_cert_secret(c.host))
        for c in world.edge_certs
        if c.gateway == gateway
    ]
    if proxy.client_ca_pem:
        out.append(tls.trust_bundle_secret(proxy.client_ca_pem, name=CLIENT_CA_SECRET))
    return sorted(out, key=lambda s: s.name)
