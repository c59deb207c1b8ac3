"""Who may pass an edge gateway: JWT checks, client certificates, claims, rate limits.

Every check is an Envoy HTTP filter on the gateway's HTTPS connection manager,
configured per route (typed_per_filter_config), in this order:

1. `envoy.filters.http.local_ratelimit`: a token bucket per route; 429 when empty.
   It runs first, so a flood of bad tokens is cut off before any signature check.
2. `envoy.filters.http.jwt_authn`: a `jwt:<provider>` route requires a valid
   token from that provider (signature, `iss`, `aud`, `exp`/`nbf`); anything
   else is 401 before the request goes further. The verified payload goes to
   dynamic metadata under the provider's name (`payload_in_metadata`) and to
   the service as `x-meshgate-jwt-payload` (base64url JSON); the token itself
   is not forwarded.
3. `meshgate.edge.route` (RBAC): the route's own conditions. An `mtls` route
   needs a verified client certificate (and `san=` its SAN); `--claim k=v`
   on a `jwt:` route needs claim k to equal v (or, for a list claim, hold v).
   403 otherwise.
4. `meshgate.edge.deny` / `meshgate.edge.allow` (RBAC): mesh policies whose
   source is this gateway and which carry claims. The target's sidecar sees
   only the gateway's identity, never the token, so claim conditions can be
   enforced only here. Present only for routes to a service such a policy
   targets; then they mirror every enforced policy the gateway is subject to
   for that service (deny first, and allow when the mesh default is deny).

RBAC policy names are the route (`route:<id>`) or the policy id, so a 403's
details (`rbac_access_denied_matched_policy[...]`) name what decided.
"""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.config.rbac.v3 import rbac_pb2 as rbac
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt_pb2
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2 as lrl
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)
from envoy.type.matcher.v3 import metadata_pb2, regex_pb2, string_pb2, value_pb2
from envoy.type.v3 import percent_pb2, token_bucket_pb2
from google.protobuf import any_pb2, wrappers_pb2

from meshgate.model import EdgeRoute, JwtProvider, Policy, World
from meshgate.policy.compile import permission_for
from meshgate.policy.validate import ANY_SOURCE, EDGE_PREFIX
from meshgate.xds.translate.common import pack, seconds

RATELIMIT_FILTER = "envoy.filters.http.local_ratelimit"
JWT_FILTER = "envoy.filters.http.jwt_authn"
ROUTE_RBAC_FILTER = "meshgate.edge.route"
DENY_RBAC_FILTER = "meshgate.edge.deny"
ALLOW_RBAC_FILTER = "meshgate.edge.allow"
JWT_PAYLOAD_HEADER = "x-meshgate-jwt-payload"
JWT_FAILURE_KEY = "jwt_failure"  # dynamic metadata key of a failed verification's status
SAN_CLAIM = "san"
JWKS_FETCH_TIMEOUT_S = 5.0
JWKS_CACHE_S = 300
# Claims that hold space-separated lists (OAuth 2.0 scopes): matched per item.
SPACE_DELIMITED_CLAIMS = ("scope", "scp")


def jwks_cluster_name(provider: str) -> str:
    return f"jwks/{provider}"


# -- jwt_authn -------------------------------------------------------------------


def jwt_provider_config(p: JwtProvider) -> jwt_pb2.JwtProvider:
    cfg = jwt_pb2.JwtProvider(
        issuer=p.issuer,
        audiences=list(p.audiences),
        forward=False,
        forward_payload_header=JWT_PAYLOAD_HEADER,
        payload_in_metadata=p.name,
        failed_status_in_metadata=JWT_FAILURE_KEY,
        normalize_payload_in_metadata=jwt_pb2.JwtProvider.NormalizePayload(
            space_delimited_claims=list(SPACE_DELIMITED_CLAIMS)
        ),
    )
    if p.jwks is not None:
        cfg.local_jwks.inline_string = p.jwks
    else:
        cfg.remote_jwks.CopyFrom(
            jwt_pb2.RemoteJwks(
                http_uri=_http_uri(p),
                cache_duration=seconds(JWKS_CACHE_S),
                # fetched when the listener starts, not on the first request
                async_fetch=jwt_pb2.JwksAsyncFetch(fast_listener=False),
            )
        )
    return cfg


def _http_uri(p: JwtProvider):  # type: ignore[no-untyped-def]
    from envoy.config.core.v3 import http_uri_pb2

    return http_uri_pb2.HttpUri(
        uri=p.jwks_uri or "",
        cluster=jwks_cluster_name(p.name),
        timeout=seconds(JWKS_FETCH_TIMEOUT_S),
    )


def jwt_filter(providers: list[JwtProvider]) -> hcm.HttpFilter:
    """jwt_authn with one requirement per provider, chosen per route."""
    cfg = jwt_pb2.JwtAuthentication(
        providers={p.name: jwt_provider_config(p) for p in providers},
        requirement_map={
            p.name: jwt_pb2.JwtRequirement(provider_name=p.name) for p in providers
        },
    )
    return hcm.HttpFilter(name=JWT_FILTER, typed_config=pack(cfg))


def jwt_route_config(route: EdgeRoute) -> any_pb2.Any:
    if route.auth.startswith("jwt:"):
        return pack(jwt_pb2.PerRouteConfig(requirement_name=route.auth[4:]))
    return pack(jwt_pb2.PerRouteConfig(disabled=True))


# -- rate limits -----------------------------------------------------------------


def ratelimit_filter() -> hcm.HttpFilter:
    """Disabled by itself; each limited route carries its own bucket."""
    return hcm.HttpFilter(
        name=RATELIMIT_FILTER, typed_config=pack(lrl.LocalRateLimit(stat_prefix="edge_rate"))
    )


def _always() -> base_pb2.RuntimeFractionalPercent:
    return base_pb2.RuntimeFractionalPercent(
        default_value=percent_pb2.FractionalPercent(
            numerator=100, denominator=percent_pb2.FractionalPercent.HUNDRED
        ),
        runtime_key="meshgate.edge.ratelimit",
    )


def ratelimit_route_config(route: EdgeRoute) -> any_pb2.Any | None:
    if route.rate is None:
        return None
    return pack(
        lrl.LocalRateLimit(
            stat_prefix=f"edge_rate.{route.id}",  # edge_rate.<id>.http_local_rate_limit.rate_limited
            token_bucket=token_bucket_pb2.TokenBucket(
                max_tokens=route.rate.requests,
                tokens_per_fill=wrappers_pb2.UInt32Value(value=route.rate.requests),
                fill_interval=seconds(route.rate.per_seconds),
            ),
            filter_enabled=_always(),
            filter_enforced=_always(),
            enable_x_ratelimit_headers=ratelimit_pb2.DRAFT_VERSION_03,
        )
    )


# -- claims and client certificates ------------------------------------------------


def _claim_value(value: str) -> value_pb2.ValueMatcher:
    """The claim equals `value`, or is a list holding it; `true`/`false` and numbers
    also match the JSON boolean or number."""
    exact = value_pb2.ValueMatcher(string_match=string_pb2.StringMatcher(exact=value))
    options = [exact, value_pb2.ValueMatcher(list_match=value_pb2.ListMatcher(one_of=exact))]
    if value in ("true", "false"):
        options.append(value_pb2.ValueMatcher(bool_match=value == "true"))
    else:
        try:
            number = float(value)
        except ValueError:
            pass
        else:
            if number == number and abs(number) != float("inf"):
                options.append(value_pb2.ValueMatcher(
                    double_match=_double_exact(number)))
    return value_pb2.ValueMatcher(or_match=value_pb2.OrMatcher(value_matchers=options))


def _double_exact(number: float):  # type: ignore[no-untyped-def]
    from envoy.type.matcher.v3 import number_pb2

    return number_pb2.DoubleMatcher(exact=number)


def _never() -> rbac.Principal:
    return rbac.Principal(not_id=rbac.Principal(any=True))


def claim_principal(route: EdgeRoute, key: str, value: str) -> rbac.Principal:
    """`key=value` as an RBAC principal for a request on `route`.

    `san` is the verified client certificate's principal (URI SAN, else DNS
    SAN, else subject); any other key is a claim of the route's JWT, which
    only a `jwt:` route has (elsewhere the condition never holds).
    """
    if key == SAN_CLAIM:
        return rbac.Principal(
            authenticated=rbac.Principal.Authenticated(
                principal_name=string_pb2.StringMatcher(exact=value)
            )
        )
    if not route.auth.startswith("jwt:"):
        return _never()
    return rbac.Principal(
        sourced_metadata=rbac.SourcedMetadata(
            metadata_matcher=metadata_pb2.MetadataMatcher(
                filter=JWT_FILTER,
                path=[
                    metadata_pb2.MetadataMatcher.PathSegment(key=route.auth[4:]),
                    metadata_pb2.MetadataMatcher.PathSegment(key=key),
                ],
                value=_claim_value(value),
            )
        )
    )


def client_cert_principal() -> rbac.Principal:
    """A verified client certificate was presented.

    `authenticated {}` alone is not enough: Envoy matches it on any TLS
    connection, certificate or not (measured). A principal name that is not
    empty exists only with a peer certificate; the handshake has already
    verified it against `edge-client-ca`.
    """
    return rbac.Principal(
        authenticated=rbac.Principal.Authenticated(
            principal_name=string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=".+"))
        )
    )


def _all_of(principals: list[rbac.Principal]) -> rbac.Principal:
    if not principals:
        return rbac.Principal(any=True)
    if len(principals) == 1:
        return principals[0]
    return rbac.Principal(and_ids=rbac.Principal.Set(ids=principals))


def _per_route_rbac(action: int, policies: dict[str, rbac.Policy], stat_prefix: str) -> any_pb2.Any:
    return pack(
        http_rbac.RBACPerRoute(
            rbac=http_rbac.RBAC(
                rules=rbac.RBAC(action=action, policies=policies), rules_stat_prefix=stat_prefix
            )
        )
    )


def route_rbac_config(route: EdgeRoute) -> any_pb2.Any | None:
    """The route's own conditions (mtls, claims) as one ALLOW policy, or None."""
    conditions: list[rbac.Principal] = []
    if route.auth == "mtls":
        conditions.append(client_cert_principal())
    conditions += [claim_principal(route, k, v) for k, v in route.claims]
    if not conditions:
        return None
    policy = rbac.Policy(permissions=[rbac.Permission(any=True)], principals=[_all_of(conditions)])
    return _per_route_rbac(rbac.RBAC.ALLOW, {f"route:{route.id}": policy}, "edge_route.")


def _applies(p: Policy, gateway: str) -> bool:
    return EDGE_PREFIX + gateway in p.sources or ANY_SOURCE in p.sources


def policy_rbac_configs(world: World, route: EdgeRoute) -> dict[str, any_pb2.Any]:
    """Per-route configs of the deny/allow filters, for claims on edge-sourced policies."""
    source = EDGE_PREFIX + route.gateway
    rules = [
        p for p in world.policies
        if p.target == route.service and p.mode == "enforce" and _applies(p, route.gateway)
    ]
    out: dict[str, any_pb2.Any] = {}

    def principal(p: Policy) -> rbac.Principal:
        # claims bind only the edge source; a rule matching the gateway through
        # '*' alone has no claim to check
        if p.claims and source in p.sources:
            return _all_of([claim_principal(route, k, v) for k, v in p.claims])
        return rbac.Principal(any=True)

    def compiled(ps: list[Policy]) -> dict[str, rbac.Policy]:
        return {
            p.id: rbac.Policy(permissions=[permission_for(p, http=True)], principals=[principal(p)])
            for p in ps
        }

    deny = [p for p in rules if p.action == "deny"]
    if any(p.claims and source in p.sources for p in deny):
        out[DENY_RBAC_FILTER] = _per_route_rbac(rbac.RBAC.DENY, compiled(deny), "edge_deny.")
    allow = [p for p in rules if p.action == "allow"]
    if world.mesh.default_action == "deny" and any(p.claims and source in p.sources for p in allow):
        out[ALLOW_RBAC_FILTER] = _per_route_rbac(rbac.RBAC.ALLOW, compiled(allow), "edge_allow.")
    return out


def rbac_filters() -> list[hcm.HttpFilter]:
    """The three RBAC filters; without a per-route config each lets everything through."""
    return [
        hcm.HttpFilter(name=name, typed_config=pack(http_rbac.RBAC(rules_stat_prefix=prefix)))
        for name, prefix in (
            (ROUTE_RBAC_FILTER, "edge_route."),
            (DENY_RBAC_FILTER, "edge_deny."),
            (ALLOW_RBAC_FILTER, "edge_allow."),
        )
    ]


def route_filter_configs(world: World, route: EdgeRoute, with_jwt: bool) -> dict[str, any_pb2.Any]:
    """Every per-route filter config of `route`, keyed by filter name."""
    out: dict[str, any_pb2.Any] = {}
    limit = ratelimit_route_config(route)
    if limit is not None:
        out[RATELIMIT_FILTER] = limit
    if with_jwt:
        out[JWT_FILTER] = jwt_route_config(route)
    own = route_rbac_config(route)
    if own is not None:
        out[ROUTE_RBAC_FILTER] = own
    out.update(policy_rbac_configs(world, route))
    return out
