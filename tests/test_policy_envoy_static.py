"""`policy check` agrees with the real Envoy, request by request.

One static Envoy carries the compiled RBAC filters and the HCM hardening on
mTLS listeners (one per target service); callers present real client
certificates with SPIFFE URI SANs. Every row of the table is sent through
Envoy and asked of `check`: status (200 / 403 / 400), the rule named in
Envoy's response detail, and the path the filters saw must all agree. The
table includes path-normalization bypass attempts.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import time
from collections.abc import Iterator

import pytest

from meshgate.model import Mesh, PathMatch, Policy, Proxy, Service, World
from meshgate.policy.check import check
from meshgate.policy.paths import normalize_request_path
from tests.policy_envoy_kit import StaticInbound

pytestmark = pytest.mark.envoy

TD = "example.org"
WORLD = World(
    revision=1,
    mesh=Mesh(TD),
    services={
        "web": Service("web"),
        "orders": Service("orders"),
        "stranger": Service("stranger"),
        "billing": Service("billing", "grpc", 9000),
        "db": Service("db", "tcp", 5432),
    },
    proxies={"public": Proxy("public", "edge", listen="127.0.0.1:8443")},
    policies=(
        Policy("web-reads-api", "allow", ("web",), "orders", methods=("GET", "HEAD"),
               paths=(PathMatch("glob", "/api/**"),)),
        Policy("web-creates-orders", "allow", ("web",), "orders", methods=("POST",),
               paths=(PathMatch("exact", "/api/orders"),), headers=(("x-tenant", "blue"),)),
        Policy("anyone-health", "allow", ("*",), "orders", paths=(PathMatch("exact", "/health"),)),
        Policy("edge-public", "allow", ("edge:public",), "orders",
               paths=(PathMatch("prefix", "/public/"),)),
        Policy("no-admin", "deny", ("*",), "orders", paths=(PathMatch("prefix", "/admin"),)),
        Policy("web-no-delete", "deny", ("web",), "orders", methods=("DELETE",)),
        Policy("audit-legacy", "deny", ("web",), "orders", paths=(PathMatch("exact", "/api/legacy"),),
               mode="audit"),
        Policy("audit-stranger", "allow", ("stranger",), "orders", methods=("GET",), mode="audit"),
        Policy("web-charges", "allow", ("web",), "billing", grpc_methods=("shop.Billing/Charge",)),
        Policy("web-db", "allow", ("web",), "db"),
    ),
)

# (case id, caller, target, method, path, headers, expected status) -- the expected
# status documents intent; the test's real claim is check == Envoy on every row.
ROWS = [
    ("api-get", "web", "orders", "GET", "/api/items", {}, 200),
    ("api-head", "web", "orders", "HEAD", "/api/items", {}, 200),
    ("api-post-not-allowed", "web", "orders", "POST", "/api/items", {}, 403),
    ("post-header-ok", "web", "orders", "POST", "/api/orders", {"x-tenant": "blue"}, 200),
    ("post-header-wrong", "web", "orders", "POST", "/api/orders", {"x-tenant": "red"}, 403),
    ("post-header-missing", "web", "orders", "POST", "/api/orders", {}, 403),
    ("admin", "web", "orders", "GET", "/admin", {}, 403),
    ("admin-sub", "web", "orders", "GET", "/admin/users", {}, 403),
    ("dotdot-out-of-admin", "web", "orders", "GET", "/admin/../api/x", {}, 200),
    ("dotdot-into-admin", "web", "orders", "GET", "/api/../admin", {}, 403),
    ("double-slash-admin", "web", "orders", "GET", "//admin", {}, 403),
    ("double-slash-api", "web", "orders", "GET", "/api//x///y", {}, 200),
    ("encoded-dots", "web", "orders", "GET", "/%2e%2e/admin", {}, 403),
    ("encoded-dots-mixed", "web", "orders", "GET", "/api/%2E%2e/admin", {}, 403),
    ("dot-segments", "web", "orders", "GET", "/api/./x/.", {}, 200),
    ("encoded-slash", "web", "orders", "GET", "/api/x%2Fadmin", {}, 400),
    ("encoded-slash-lower", "web", "orders", "GET", "/admin%2f", {}, 400),
    ("encoded-backslash", "web", "orders", "GET", "/api%5cadmin", {}, 400),
    ("backslash-dotdot", "web", "orders", "GET", "/api\\..\\admin", {}, 403),
    ("upper-case", "web", "orders", "GET", "/ADMIN", {}, 403),
    ("mixed-case", "web", "orders", "GET", "/Admin/x", {}, 403),
    ("encoded-letter", "web", "orders", "GET", "/%41dmin", {}, 403),
    ("encoded-lower-letter", "web", "orders", "GET", "/%61dmin", {}, 403),
    ("allow-is-case-exact", "web", "orders", "GET", "/API/items", {}, 403),
    ("query-ignored", "web", "orders", "GET", "/api/items?next=/admin", {}, 200),
    ("query-not-a-path", "web", "orders", "GET", "/admin?x=/api/items", {}, 403),
    ("delete-denied", "web", "orders", "DELETE", "/api/items", {}, 403),
    ("lower-case-method-deny", "web", "orders", "delete", "/api/items", {}, 400),
    ("lower-case-method-allow", "web", "orders", "get", "/api/items", {}, 400),
    ("other-method", "web", "orders", "PROPFIND", "/api/items", {}, 403),
    ("fragment", "web", "orders", "GET", "/admin#x", {}, 400),
    ("fragment-api", "web", "orders", "GET", "/api/x#/../../admin", {}, 400),
    ("nul", "web", "orders", "GET", "/api/%00/x", {}, 400),
    ("semicolon", "web", "orders", "GET", "/admin;jsessionid=1", {}, 403),
    ("semicolon-dotdot", "web", "orders", "GET", "/api/..;/admin", {}, 403),
    ("semicolon-dot", "web", "orders", "GET", "/admin/.;/x", {}, 403),
    ("health-any", "web", "orders", "GET", "/health", {}, 200),
    ("health-stranger", "stranger", "orders", "GET", "/health", {}, 200),
    ("stranger-audit-only", "stranger", "orders", "GET", "/api/items", {}, 403),
    ("unlisted-pair", "orders", "web", "GET", "/", {}, 403),
    ("edge-public", "edge:public", "orders", "GET", "/public/page", {}, 200),
    ("edge-not-api", "edge:public", "orders", "GET", "/api/items", {}, 403),
    ("edge-admin", "edge:public", "orders", "GET", "/public/../admin", {}, 403),
    ("audit-legacy-passes", "web", "orders", "GET", "/api/legacy", {}, 200),
    ("grpc-allowed", "web", "billing", "POST", "/shop.Billing/Charge", {"content-type": "application/grpc"}, 200),
    ("grpc-other-method", "web", "billing", "POST", "/shop.Billing/Refund", {"content-type": "application/grpc"}, 403),
    ("grpc-case", "web", "billing", "POST", "/shop.billing/Charge", {"content-type": "application/grpc"}, 403),
]


def _uri(caller: str) -> str:
    if caller.startswith("edge:"):
        return f"spiffe://{TD}/edge/{caller[5:]}"
    return f"spiffe://{TD}/svc/{caller}"


@pytest.fixture(scope="module")
def inbound(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StaticInbound]:
    env = StaticInbound(WORLD, tmp_path_factory.mktemp("policy-envoy"))
    try:
        yield env.start()
    finally:
        env.stop()


@pytest.fixture(scope="module")
def clients(inbound: StaticInbound) -> dict[str, ssl.SSLContext]:
    callers = {row[1] for row in ROWS} | {"web", "orders"}
    return {c: inbound.ca.client_context(_uri(c), inbound.workdir) for c in callers}


def send(inbound: StaticInbound, ctx: ssl.SSLContext, target: str, method: str, path: str,
         headers: dict[str, str]) -> int:
    """The HTTP status the caller sees; for gRPC requests Envoy's local reply is HTTP 200
    with grpc-status 7 (PERMISSION_DENIED), which is reported here as 403."""
    conn = http.client.HTTPSConnection("127.0.0.1", inbound.ports[target], context=ctx, timeout=5)
    try:
        conn.request(method, path, headers=headers)
        resp = conn.getresponse()
        resp.read()
        if resp.getheader("grpc-status") == "7":
            assert resp.status == 200
            return 403
        return resp.status
    finally:
        conn.close()


def log_entry(inbound: StaticInbound, case: str) -> dict:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for line in inbound.log_lines(inbound.access_log):
            if line["case"] == case:
                return line
        time.sleep(0.05)
    raise AssertionError(f"no access log line for {case}: {inbound.envoy and inbound.envoy.tail()}")


@pytest.mark.parametrize(("case", "caller", "target", "method", "path", "headers", "expected"),
                         ROWS, ids=[r[0] for r in ROWS])
def test_check_agrees_with_envoy(inbound: StaticInbound, clients: dict[str, ssl.SSLContext],
                                 case: str, caller: str, target: str, method: str, path: str,
                                 headers: dict[str, str], expected: int) -> None:
    status = send(inbound, clients[caller], target, method, path, {**headers, "x-case": case})
    decision = check(WORLD, caller, target, method, path, headers)
    checked = 200 if decision.allowed else decision.status
    if method.upper() != method:
        # the HTTP/1 codec refuses the request line: no filter runs, no header is read
        assert (status, checked) == (400, 400) and "codec" in decision.reason, decision
        return
    entry = log_entry(inbound, case)
    assert (status, checked) == (expected, expected), (decision, entry)
    grpc = headers.get("content-type") == "application/grpc"
    assert int(entry["status"]) == (200 if grpc else status), entry  # gRPC: HTTP 200 + grpc-status
    if status == 403:
        # Envoy names the deciding rule exactly as check does
        assert entry["detail"] == decision.detail, (decision, entry)
    if status != 400:
        assert entry["path"].split("?")[0] == decision.path, (decision, entry)


# Paths whose normalization is easy to get wrong; Envoy's result (the :path its
# filters saw, or 400) must equal `normalize_request_path`.
NORMALIZATION = [
    "/admin/x/../..;/y", "/api/x\\..;/admin", "/api/x/..;\\admin", "/a/b/..;/../c",
    "/a/..;/b/..", "/api/..;x", "/api/.;x/y", "/api/%2e%2e;x/admin", "/api/.%2e;/admin",
    "/api\\..;\\admin", "/api/x/..;%41/admin", "/api/%2e;/x", "/api//../admin", "/api/x/.;",
    "/;/..;/admin", "/a/..;b;c/d", "/a/b?x#y", "/a/%7e%41%3b%2e%2E/b", "/a/%%41", "/a/%4",
    "/a/%G1", '/a/"x"', "/a/{x}", "/a/<x>", "/a/|x|", "/a/^x`", "/a/%00x", "/..", "/a/.",
    "/a/%2E", "/a/b/%2e%2E", "/a\\b\\..\\c", "///", "//", "/a/..//", "//..", "/a//b//", "/a/./../b/./c/.",
    "/a;b/../c",
]


def test_path_normalization_matches_envoy(
    inbound: StaticInbound, clients: dict[str, ssl.SSLContext]
) -> None:
    mismatches = []
    for i, raw in enumerate(NORMALIZATION):
        case = f"norm-{i}"
        status = send(inbound, clients["web"], "orders", "GET", raw, {"x-case": case})
        entry = log_entry(inbound, case)
        seen = None if status == 400 else entry["path"].split("?")[0]
        mine = normalize_request_path(raw).path
        if seen != mine:
            mismatches.append((raw, seen, mine))
    assert not mismatches, mismatches


def test_denial_names_rule_and_allow_names_rule_in_metadata(
    inbound: StaticInbound, clients: dict[str, ssl.SSLContext]
) -> None:
    assert send(inbound, clients["web"], "orders", "GET", "/admin/x", {"x-case": "meta-deny"}) == 403
    entry = log_entry(inbound, "meta-deny")
    assert entry["detail"] == "rbac_access_denied_matched_policy[no-admin]"
    assert entry["rbac"]["deny.enforced_effective_policy_id"] == "no-admin"
    assert send(inbound, clients["web"], "orders", "GET", "/api/ok", {"x-case": "meta-allow"}) == 200
    entry = log_entry(inbound, "meta-allow")
    assert entry["rbac"]["allow.enforced_effective_policy_id"] == "web-reads-api"
    assert check(WORLD, "web", "orders", "GET", "/api/ok").rule_id == "web-reads-api"


def test_audit_rule_passes_and_counts_as_would_deny(
    inbound: StaticInbound, clients: dict[str, ssl.SSLContext]
) -> None:
    assert inbound.envoy is not None
    stat = "http.orders.rbac.deny_audit.shadow_denied"
    per_rule = "http.orders.rbac.deny_audit.policy.audit-legacy.shadow_denied"
    before, before_rule = inbound.envoy.stat(stat), inbound.envoy.stat(per_rule)
    assert send(inbound, clients["web"], "orders", "GET", "/api/legacy", {"x-case": "audit-count"}) == 200
    entry = log_entry(inbound, "audit-count")
    assert entry["rbac"]["deny_audit.shadow_effective_policy_id"] == "audit-legacy"
    assert entry["rbac"]["deny_audit.shadow_engine_result"] == "denied"
    assert inbound.envoy.stat(stat) == before + 1
    assert inbound.envoy.stat(per_rule) == before_rule + 1
    decision = check(WORLD, "web", "orders", "GET", "/api/legacy")
    assert decision.allowed and decision.audit_rule_ids == ("audit-legacy",)
    assert not decision.would_allow


def test_audit_allow_counts_as_would_allow(
    inbound: StaticInbound, clients: dict[str, ssl.SSLContext]
) -> None:
    assert inbound.envoy is not None
    stat = "http.orders.rbac.allow_audit.shadow_allowed"
    before = inbound.envoy.stat(stat)
    assert send(inbound, clients["stranger"], "orders", "GET", "/x", {"x-case": "audit-allow"}) == 403
    entry = log_entry(inbound, "audit-allow")
    assert entry["rbac"]["allow_audit.shadow_effective_policy_id"] == "audit-stranger"
    assert inbound.envoy.stat(stat) == before + 1
    decision = check(WORLD, "stranger", "orders", "GET", "/x")
    assert not decision.allowed and decision.would_allow
    assert decision.audit_rule_ids == ("audit-stranger",)


def _tcp_call(inbound: StaticInbound, ctx: ssl.SSLContext) -> bytes:
    raw = socket.create_connection(("127.0.0.1", inbound.ports["db"]), timeout=5)
    with ctx.wrap_socket(raw) as tls:
        tls.sendall(b"ping")
        got = b""
        try:
            while chunk := tls.recv(1024):
                got += chunk
        except (ConnectionResetError, ssl.SSLError):
            pass
        return got


def test_tcp_service_network_rbac(inbound: StaticInbound, clients: dict[str, ssl.SSLContext]) -> None:
    assert check(WORLD, "web", "db").allowed
    assert _tcp_call(inbound, clients["web"]) == b"echo:ping"
    denied = check(WORLD, "orders", "db")
    assert not denied.allowed and denied.detail == "rbac_access_denied_matched_policy[none]"
    assert _tcp_call(inbound, clients["orders"]) == b""
    lines = inbound.wait_log(inbound.tcp_log, 2)
    assert any(line["detail"] == denied.detail for line in lines), lines


def test_no_client_certificate_is_refused(inbound: StaticInbound) -> None:
    ctx = ssl.create_default_context(cadata=inbound.ca.pem)
    ctx.check_hostname = False
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
        send(inbound, ctx, "orders", "GET", "/health", {})

