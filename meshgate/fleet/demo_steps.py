"""The demo's tour: one small function per step, each returning a StepResult.

A step prints the commands a user would type (`show.command`), does the thing
for real against the running fleet, and judges the outcome itself: `ok` is
what the step claims (e.g. "401 without a token"), checked, not assumed.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from meshgate.fleet.client import Reply, Traffic
from meshgate.fleet.demo_fleet import CHAIN_PATH, FORBIDDEN_PATH, TRUST_DOMAIN, Fleet, wait_until
from meshgate.fleet.demo_show import Show, StepResult
from meshgate.fleet.errors import FleetError


@dataclass(frozen=True)
class Pace:
    """How much traffic each step sends (`--short` for the test suite)."""

    requests: int = 20
    settle: float = 1.0  # extra traffic after a change, seconds

    @staticmethod
    def short() -> Pace:
        return Pace(requests=8, settle=0.5)


Step = Callable[[Fleet, Show, Pace], StepResult]


def _hops(reply: Reply) -> list[tuple[str, int | str]]:
    """(service, status) along the call chain in an app's JSON answer."""
    out: list[tuple[str, int | str]] = []
    body: Any = reply.json()
    status: int | str = reply.status
    while isinstance(body, dict) and "service" in body:
        out.append((body["service"], status))
        status = body.get("status", status)
        body = body.get("upstream")
    return out


def _caller_seen(reply: Reply, service: str) -> str:
    """The SPIFFE id `service` saw in x-forwarded-client-cert (set by its sidecar)."""
    body: Any = reply.json()
    while isinstance(body, dict):
        if body.get("service") == service and "headers" in body:
            xfcc = body["headers"].get("x-forwarded-client-cert", "")
            for part in xfcc.split(";"):
                if part.startswith("URI="):
                    return part[4:]
            return ""
        body = body.get("upstream")
    return ""


def valid_token(fleet: Fleet, show: Show, pace: Pace) -> StepResult:
    show.command(fleet.curl(CHAIN_PATH))
    r = fleet.edge_get(CHAIN_PATH, token=fleet.token)
    hops = _hops(r)
    seen = _caller_seen(r, "payments")
    want = f"spiffe://{TRUST_DOMAIN}/svc/orders"
    ok = r.status == 200 and [h for h, _ in hops] == ["web", "orders", "payments"] \
        and all(s == 200 for _, s in hops) and seen == want
    path = " → ".join(["edge", *[h for h, _ in hops]])
    summary = (f"{r.status}: {path}, mutual TLS on every hop (payments saw its caller as {seen})"
               if ok else f"{r.status}: {r.text() or r.error}")
    return StepResult("valid-token", "", ok, summary, data={"status": r.status, "hops": hops, "caller_seen": seen})


def no_token(fleet: Fleet, show: Show, pace: Pace) -> StepResult:
    show.command(fleet.curl(CHAIN_PATH, token=False))
    r = fleet.edge_get(CHAIN_PATH)
    ok = r.status == 401
    return StepResult("no-token", "", ok, f"{r.status} from the edge gateway: {r.text() or r.error}",
                      data={"status": r.status})


def forbidden_hop(fleet: Fleet, show: Show, pace: Pace) -> StepResult:
    show.command(fleet.curl(FORBIDDEN_PATH))
    r = fleet.edge_get(FORBIDDEN_PATH, token=fleet.token)
    hops = _hops(r)
    body = r.json() or {}
    inner = body.get("status") if isinstance(body, dict) else None
    # the rule that decided, from payments' sidecar access log (Envoy's response code details)
    args = ("events", "--denied", "--caller", "web", "--callee", "payments")

    def denial() -> dict[str, Any]:
        rows = fleet.cli(*args, "--output", "json").json
        return rows[0] if rows else {}

    event: dict[str, Any] = {}
    try:
        event = wait_until(denial, 15, "the denial event")
    except FleetError:
        pass
    show.command(fleet.shown(*args))
    show.block(fleet.cli(*args, "--limit", "3").output)
    rule = event.get("rule_id")
    ok = r.status == 403 and inner == 403 and rule == "web-never-pays"
    summary = (f"403 from payments' sidecar: web may not call payments, decided by rule {rule}"
               if ok else f"{r.status} (upstream {inner}), rule {rule!r}: {r.text()}")
    return StepResult("forbidden-hop", "", ok, summary,
                      data={"status": r.status, "upstream_status": inner, "rule": rule, "hops": hops})


def policy_check(fleet: Fleet, show: Show, pace: Pace) -> StepResult:
    decisions = {}
    for caller in ("web", "orders"):
        args = ("policy", "check", "--from", caller, "--to", "payments", "--path", "/charge")
        show.command(fleet.shown(*args))
        show.block(fleet.cli(*args).output)
        decisions[caller] = fleet.cli(*args, "--output", "json").json
    web, orders = decisions["web"], decisions["orders"]
    ok = web["allowed"] is False and web["rule"] == "web-never-pays" \
        and orders["allowed"] is True and orders["rule"] == "mesh-to-payments"
    summary = (f"web → payments: denied by {web['rule']} (deny wins over {orders['rule']}); "
               f"orders → payments: allowed by {orders['rule']}")
    return StepResult("policy-check", "", ok, summary, data={"decisions": decisions})


def _served_by(fleet: Fleet, n: int) -> tuple[Counter[str], list[str]]:
    """Send `n` requests edge -> web -> orders; which orders instance answered each."""
    seen: Counter[str] = Counter()
    failures: list[str] = []
    for _ in range(n):
        r = fleet.edge_get("/call/orders/whoami", token=fleet.token)
        body = r.json() or {}
        up = body.get("upstream") if isinstance(body, dict) else None
        if r.status == 200 and isinstance(up, dict):
            seen[up.get("instance", "?")] += 1
        else:
            failures.append(f"{r.status} {r.text(80) or r.error}")
    return seen, failures


def scale_up(fleet: Fleet, show: Show, pace: Pace) -> StepResult:
    t0 = time.monotonic()
    inst = fleet.start_instance("orders", "orders-2")
    show.command(fleet.shown("proxy", "add", "orders-2", "--service", "orders",
                             "--outbound-port", str(inst.outbound_port)))
    show.command(inst.command(fleet.server_address))
    wait_until(lambda: "orders-2" in fleet.registered(), 30, "orders-2 to register itself")
    registered = time.monotonic() - t0
    # its first health checks may run before its inbound listener exists: traffic follows soon after
    wait_until(lambda: "orders-2" in _served_by(fleet, 4)[0], 30, "orders-2 to receive traffic", 0.2)
    serving = time.monotonic() - t0
    seen, failures = _served_by(fleet, pace.requests)
    ok = set(seen) == {"orders-1", "orders-2"} and not failures
    spread = ", ".join(f"{k} ×{v}" for k, v in sorted(seen.items()))
    return StepResult("scale-up", "", ok,
                      f"orders-2 registered itself {registered:.1f}s after start, took traffic after "
                      f"{serving:.1f}s (health-checked first); {pace.requests} requests: {spread}"
                      + (f"; failed: {failures[:3]}" if failures else ""),
                      data={"registered_after": registered, "serving_after": serving, "served": dict(seen),
                            "failed": len(failures)})


def _chain_ok(fleet: Fleet, path: str) -> tuple[bool, str]:
    r = fleet.edge_get(path, token=fleet.token)
    return r.status == 200, f"{r.status} {r.text(100) or r.error}"


def scale_down(fleet: Fleet, show: Show, pace: Pace) -> StepResult:
    show.note("Ctrl-C (SIGTERM) on orders-2's `meshgate proxy run`: Envoy stops, its stream ends")
    with Traffic(lambda: _chain_ok(fleet, "/call/orders/whoami"), pause=0.02) as traffic:
        t0 = time.monotonic()
        code = fleet.stop_instance("orders-2")
        wait_until(lambda: "orders-2" not in fleet.registered(),
                   fleet.grace_seconds + 20, "orders-2's instance to be removed", 0.2)
        removed = time.monotonic() - t0
        time.sleep(pace.settle)
    show.command(fleet.shown("instance", "list", "--service", "orders"))
    show.block(fleet.cli("instance", "list", "--service", "orders").output)
    ok = code == 0 and traffic.failed == 0 and traffic.ok > 0
    summary = (f"removed {removed:.1f}s after its sidecar stopped (grace {fleet.grace_seconds}s); "
               f"{traffic.total} requests meanwhile, {traffic.failed} failed")
    return StepResult("scale-down", "", ok, summary,
                      data={"exit_code": code, "removed_after": removed, "requests": traffic.total,
                            "failed": traffic.failed, "failures": traffic.failures})


def ca_rotation(fleet: Fleet, show: Show, pace: Pace) -> StepResult:
    phases: list[str] = []
    with Traffic(lambda: _chain_ok(fleet, CHAIN_PATH), pause=0.0) as traffic:
        time.sleep(pace.settle)
        show.command(fleet.shown("ca", "rotate"))
        show.block(fleet.cli("ca", "rotate").output)
        t0 = time.monotonic()

        def idle() -> bool:
            phase = fleet.cli("ca", "rotate", "--status", "--output", "json").json["phase"]
            if not phases or phases[-1] != phase:
                phases.append(phase)
            return phase == "idle"

        wait_until(idle, 90, "the rotation to finish", 0.2)
        took = time.monotonic() - t0
        time.sleep(pace.settle)  # traffic keeps flowing under the new root
    show.command(fleet.shown("ca", "rotate", "--status"))
    ok = phases[-1:] == ["idle"] and traffic.failed == 0 and traffic.ok > 0
    summary = (f"{' → '.join(phases)} in {took:.1f}s (meshgate serve advanced each phase once every "
               f"proxy had ACKed); {traffic.total} requests through edge → web → orders → payments "
               f"meanwhile, {traffic.failed} failed")
    return StepResult("ca-rotation", "", ok, summary,
                      data={"phases": phases, "seconds": took, "requests": traffic.total,
                            "failed": traffic.failed, "failures": traffic.failures})


def proxy_status(fleet: Fleet, show: Show, pace: Pace) -> StepResult:
    show.command(fleet.shown("proxy", "status"))
    show.block(fleet.cli("proxy", "status").output)
    rows = fleet.cli("proxy", "status", "--output", "json").json
    live = [r for r in rows if r["connected"]]
    proxies = sorted({r["proxy"] for r in live})
    in_sync = all(r["state"] == "in sync" for r in live)
    nacked = sorted({r["proxy"] for r in live if r.get("nack_open")})
    want = {"public", "web-1", "orders-1", "payments-1"}
    ok = want <= set(proxies) and in_sync and not nacked
    summary = (f"{len(proxies)} proxies connected, each xDS type ACKed at the version sent (in sync), "
               f"{len(nacked)} NACKed")
    return StepResult("proxy-status", "", ok, summary, data={"proxies": proxies, "in_sync": in_sync, "nacked": nacked})


def top(fleet: Fleet, show: Show, pace: Pace) -> StepResult:
    args = ("top", "--once", "--admin", fleet.admin_address)
    show.command(fleet.shown(*args))

    def edges() -> dict[tuple[str, str], dict[str, Any]]:
        rows = fleet.cli(*args, "--output", "json").json
        got = {(e["caller"], e["callee"]): e for e in rows}
        return got if {("web", "orders"), ("orders", "payments")} <= set(got) else {}

    try:
        seen = wait_until(edges, 15, "traffic figures (Envoy pushes stats every 5s)", 0.5)
    except FleetError:
        seen = {}
    show.block(fleet.cli(*args).output)
    ok = bool(seen) and all(seen[k]["requests_total"] > 0 for k in seen)
    denied = sum(e.get("denied_total", 0) for e in seen.values())
    summary = (f"{len(seen)} caller → callee edges with request rates, success and latency; "
               f"{denied} denied calls counted" if ok else "no traffic figures from meshgate serve")
    return StepResult("top", "", ok, summary,
                      data={"edges": [f"{a}->{b}" for a, b in sorted(seen)], "denied": denied})


TOUR: tuple[tuple[str, str, Step], ...] = (
    ("valid-token", "A request with a valid JWT through the edge gateway", valid_token),
    ("no-token", "The same request without a token", no_token),
    ("forbidden-hop", "A forbidden hop: web calls payments directly", forbidden_hop),
    ("policy-check", "Ask meshgate why", policy_check),
    ("scale-up", "Scale orders up: a second instance registers itself", scale_up),
    ("scale-down", "Scale orders down: stop it, it leaves after the grace period", scale_down),
    ("ca-rotation", "Rotate the root CA under continuous traffic", ca_rotation),
    ("proxy-status", "What every proxy runs: ACKed versions, NACKs", proxy_status),
    ("top", "Traffic as the control plane saw it", top),
)
