"""Where a meshgate hop's extra work goes: meshgate's sidecar config with one feature removed at a time.

    .venv/bin/python bench/dataplane_breakdown.py [--rounds 6] [--seconds 2] [--quick]

The caller's and the callee's sidecar (front-1 -> backend-1) are translated by
meshgate itself, with the options `meshgate serve` uses (telemetry access logs
included), and made static the way `meshgate config validate` does
(meshgate.config.envoy_check.static_bootstrap), with real SPIFFE certificates
from a mesh CA in place of the SDS secrets. From that config, each variant
removes one feature from both Envoys of the pair:

  access log        the denied-or-failed gRPC access log (its filter runs on every request)
  RBAC              the two RBAC filters (deny, allow) and their per-route rules
  health filter     the inbound health-check filter (answers /.meshgate/health)
  active checks     active health checks and outlier detection on the clusters
  XFCC              x-forwarded-client-cert set from the peer certificate
  path hardening    normalize_path, merge_slashes, escaped-slash rejection
  retry policy      the outbound route's retry policy and response header removal

then all of them together, next to two plain Envoys with mutual TLS between
them (bench/_envoys.tls_pair). wrk drives each pair at constant concurrency in
rotated rounds; the first figure is the pair's CPU time per request (from
/proc), per hop: the work each feature costs, less exposed to the machine's
other load than latency. Then each pair gets about 1,000 req/s for latency
(added over wrk -> upstream in the same round, per hop).
The control-plane connection is not part of these static configs (no ADS, no
stats sink); `meshgate serve`'s own pair is measured in dataplane_overhead.py.
"""

from __future__ import annotations

import argparse
import copy
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import WRK_MISSING, cpu_seconds, machine, machine_line, pct, publish, wrk_missing  # noqa: E402
from bench._envoys import tls_pair, upstream_bootstrap  # noqa: E402
from bench._wrk import Target, status, write_scripts, wrk  # noqa: E402
from meshgate.fleet.envoy import EnvoyProcess, free_port  # noqa: E402

HCM = "HttpConnectionManager"


def _walk(node: Any, fn: Callable[[dict[str, Any]], None]) -> None:
    if isinstance(node, dict):
        fn(node)
        for v in list(node.values()):
            _walk(v, fn)
    elif isinstance(node, list):
        for v in node:
            _walk(v, fn)


def _hcm_pop(*keys: str) -> Callable[[dict[str, Any]], None]:
    def fn(boot: dict[str, Any]) -> None:
        def visit(d: dict[str, Any]) -> None:
            if str(d.get("@type", "")).endswith(HCM):
                for k in keys:
                    d.pop(k, None)
        _walk(boot, visit)
    return fn


def _drop_filters(prefix: str) -> Callable[[dict[str, Any]], None]:
    def fn(boot: dict[str, Any]) -> None:
        def visit(d: dict[str, Any]) -> None:
            if isinstance(d.get("http_filters"), list):
                d["http_filters"] = [f for f in d["http_filters"] if not f.get("name", "").startswith(prefix)]
            per = d.get("typed_per_filter_config")
            if isinstance(per, dict):
                for k in [k for k in per if k.startswith(prefix)]:
                    del per[k]
        _walk(boot, visit)
    return fn


def _no_active_checks(boot: dict[str, Any]) -> None:
    for c in boot["static_resources"]["clusters"]:
        c.pop("health_checks", None)
        c.pop("outlier_detection", None)


def _no_retry(boot: dict[str, Any]) -> None:
    def visit(d: dict[str, Any]) -> None:
        if isinstance(d.get("route"), dict):
            d["route"].pop("retry_policy", None)
        d.pop("response_headers_to_remove", None)
    _walk(boot, visit)


ABLATIONS: dict[str, Callable[[dict[str, Any]], None]] = {
    "access log": _hcm_pop("access_log"),
    "RBAC": _drop_filters("meshgate.rbac"),
    "health filter": _drop_filters("envoy.filters.http.health_check"),
    "active checks": _no_active_checks,
    "XFCC": _hcm_pop("forward_client_cert_details", "set_current_client_cert_details"),
    "path hardening": _hcm_pop("normalize_path", "merge_slashes", "path_with_escaped_slashes_action"),
    "retry policy": _no_retry,
}


class MeshPair:
    """front-1 and backend-1 as meshgate translates them, static, with real mesh certificates."""

    def __init__(self) -> None:
        from meshgate.ca import authority

        self.now = time.time()
        self.root, self.root_key = authority.create_root("bench.local", self.now)

    def _secrets(self, service: str) -> list[dict[str, Any]]:
        from meshgate.ca import authority

        key = authority.new_key()
        cert = authority.issue_leaf(self.root, self.root_key, key.public_key(),
                                    spiffe_id=f"spiffe://bench.local/svc/{service}", now=self.now, ttl_seconds=86400)
        return [{"name": "identity", "tls_certificate": {
                    "certificate_chain": {"inline_string": authority.cert_pem(cert)},
                    "private_key": {"inline_string": authority.key_pem(key)}}},
                {"name": "trust-bundle", "validation_context": {
                    "trusted_ca": {"inline_string": authority.cert_pem(self.root)}}}]

    def bootstraps(self, front_out: int, back_in: int, upstream: int) -> tuple[dict[str, Any], dict[str, Any]]:
        from meshgate.config.envoy_check import server_options, static_bootstrap
        from meshgate.fleet.bootstrap import XDS_CLUSTER
        from meshgate.model import Instance, Mesh, Policy, Proxy, Service, World
        from meshgate.xds.translate import translate_proxy

        proxies = {"front-1": Proxy("front-1", "sidecar", service="front", outbound_port=front_out),
                   "backend-1": Proxy("backend-1", "sidecar", service="backend", outbound_port=free_port())}
        world = World(
            revision=1, mesh=Mesh("bench.local", default_action="deny"),
            services={"front": Service("front", port=8080), "backend": Service("backend", port=8080)},
            instances=(Instance(1, "front", "127.0.0.1", free_port(), free_port(), proxy="front-1"),
                       Instance(2, "backend", "127.0.0.1", back_in, upstream, proxy="backend-1")),
            proxies=proxies, policies=(Policy("allow-front-to-backend", "allow", ("front",), "backend"),))
        out = []
        for name, service in (("front-1", "front"), ("backend-1", "backend")):
            boot = static_bootstrap(proxies[name], translate_proxy(world, name, options=server_options()))
            boot["admin"]["address"]["socket_address"]["port_value"] = free_port()
            boot["static_resources"]["secrets"] = self._secrets(service)
            dead = free_port()  # the access log's control plane: nothing listens (all 200: nothing is sent)
            for c in boot["static_resources"]["clusters"]:
                if c["name"] == XDS_CLUSTER:
                    c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"][
                        "socket_address"]["port_value"] = dead
            out.append(boot)
        return out[0], out[1]


def variants() -> list[tuple[str, list[str]]]:
    """(name, ablations applied): the full config, one removed at a time, all removed."""
    return [("meshgate", []), *((f"- {a}", [a]) for a in ABLATIONS), ("- all of these", list(ABLATIONS))]


def run(rounds: int, seconds: float, connections: int, only: list[str] | None = None,
        idle_seconds: float = 10.0, latency_seconds: int = 3, latency_connections: int = 10) -> dict[str, Any]:
    """`latency_seconds` of fixed-rate traffic (1,000 req/s) per variant per round (0: none)."""
    if shutil.which("wrk") is None:
        raise SystemExit(WRK_MISSING)
    m = machine()
    work = Path(tempfile.mkdtemp(prefix="meshgate-breakdown-"))
    scripts = write_scripts(work, rate=1000, connections=latency_connections)
    procs: dict[str, EnvoyProcess] = {}
    targets: list[Target] = []
    cpu: dict[str, list[float]] = {}
    rps: dict[str, list[float]] = {}
    lat: dict[str, list[dict[str, float]]] = {}
    try:
        up = free_port()
        procs["upstream"] = EnvoyProcess(upstream_bootstrap(up), work, "upstream").start()
        mesh = MeshPair()
        chosen = [v for v in variants() if only is None or v[0] in only]
        for k, (name, removed) in enumerate(chosen):
            a_port, b_port = free_port(), free_port()
            a, b = mesh.bootstraps(a_port, b_port, up)
            for ablation in removed:
                ABLATIONS[ablation](a)
                ABLATIONS[ablation](b)
            procs[f"v{k}a"] = EnvoyProcess(copy.deepcopy(a), work, f"v{k}a").start()
            procs[f"v{k}b"] = EnvoyProcess(copy.deepcopy(b), work, f"v{k}b").start()
            targets.append(Target(name, 2, f"http://127.0.0.1:{a_port}/x", ("Host: backend",), procs=(f"v{k}a", f"v{k}b")))
        ta, tb = free_port(), free_port()
        pa, pb = tls_pair("tls", ta, tb, up)
        procs["tls-a"], procs["tls-b"] = EnvoyProcess(pa, work, "tls-a").start(), EnvoyProcess(pb, work, "tls-b").start()
        targets.append(Target("plain Envoys, mTLS", 2, f"http://127.0.0.1:{ta}/x", procs=("tls-a", "tls-b")))
        for p in procs.values():
            p.wait_live()
        _wait_ok(targets)
        # background work with no traffic (active checks, timers): CPU per second per hop
        before = {t.name: sum(cpu_seconds(procs[n].pid) for n in t.procs) for t in targets}
        time.sleep(idle_seconds)
        idle = {t.name: (sum(cpu_seconds(procs[n].pid) for n in t.procs) - before[t.name]) / idle_seconds / t.hops
                for t in targets}
        direct = Target("direct", 0, f"http://127.0.0.1:{up}/x")
        for t in targets:
            wrk(t, 1, connections, scripts.closed)  # warm up
        for r in range(rounds):
            for t in targets[r % len(targets):] + targets[: r % len(targets)]:
                pids = [procs[n].pid for n in t.procs]
                c0 = sum(cpu_seconds(pid) for pid in pids)
                res = wrk(t, seconds, connections, scripts.closed)
                used = sum(cpu_seconds(pid) for pid in pids) - c0
                c1 = sum(cpu_seconds(pid) for pid in pids)
                fixed = wrk(t, latency_seconds, latency_connections, scripts.fixed) if latency_seconds else None
                if fixed is not None:
                    fixed["cpu_us"] = (sum(cpu_seconds(pid) for pid in pids) - c1) / max(1.0, fixed["requests"]) / t.hops * 1e6
                if res["errors"] or (fixed and fixed["errors"]):
                    raise RuntimeError(f"{t.name}: requests failed")
                cpu.setdefault(t.name, []).append(used / res["requests"] / t.hops * 1e6)
                rps.setdefault(t.name, []).append(res["rps"])
                if fixed is not None:
                    lat.setdefault(t.name, []).append(fixed)
                print(f"round {r + 1}/{rounds} {t.name:22s} {res['rps']:7.0f} req/s  {cpu[t.name][-1]:5.1f} µs CPU/req/hop"
                      + (f"  at {fixed['rps']:.0f} req/s p50 {fixed['p50']:.0f} p99 {fixed['p99']:.0f} µs"
                         f" {fixed['cpu_us']:.1f} µs CPU/req/hop" if fixed else ""),
                      flush=True)
            if latency_seconds:
                lat.setdefault("direct", []).append(wrk(direct, latency_seconds, latency_connections, scripts.fixed))
    finally:
        for p in procs.values():
            p.stop()
        shutil.rmtree(work, ignore_errors=True)
    return {"machine": m, "rounds": rounds, "seconds": seconds, "connections": connections,
            "latency_seconds": latency_seconds, "latency_connections": latency_connections,
            "order": [t.name for t in targets], "cpu": cpu, "rps": rps, "latency": lat,
            "rows": summarize([t.name for t in targets], cpu, rps, lat, idle)}


def summarize(order: list[str], cpu: dict[str, list[float]], rps: dict[str, list[float]],
              lat: dict[str, list[dict[str, float]]], idle: dict[str, float]) -> dict[str, dict[str, Any]]:
    """Medians over rounds; "saved" is the median of per-round differences with the full config
    (the runs of one round are seconds apart, so slow changes in machine load cancel)."""
    med = statistics.median
    rows: dict[str, dict[str, Any]] = {}
    for name in order:
        saved = [f - x for f, x in zip(cpu["meshgate"], cpu[name], strict=True)] if "meshgate" in cpu else []
        row: dict[str, Any] = {"cpu_us": med(cpu[name]), "rps": med(rps[name]), "idle_cpu_ms_per_s": idle[name] * 1000,
                               "saved_us": med(saved) if saved else float("nan"),
                               "saved_iqr": (pct(saved, 25), pct(saved, 75)) if saved else (float("nan"),) * 2}
        if lat:
            row["low_rate_cpu_us"] = med(x["cpu_us"] for x in lat[name]) if name in lat else float("nan")
            for q in ("p50", "p90", "p99"):
                row[f"added_{q}_per_hop"] = med((x[q] - d[q]) / 2 for x, d in zip(lat[name], lat["direct"], strict=True))
        rows[name] = row
    return rows


def _wait_ok(targets: list[Target], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    pending = list(targets)
    while pending and time.monotonic() < deadline:
        pending = [t for t in pending if status(t) != 200]
        if pending:
            time.sleep(0.2)
    if pending:
        raise RuntimeError("not answering 200: " + ", ".join(f"{t.name} ({status(t)})" for t in pending))


def report(res: dict[str, Any]) -> str:
    rows = res["rows"]
    has_lat = bool(res["latency"])
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {machine_line(res['machine'])}.",
        f"CPU: wrk -t1 -c{res['connections']}, {res['rounds']} rounds x {res['seconds']:g} s per variant, order rotated; "
        "both Envoys' CPU per request, per hop; medians, \"saved\" paired by round [interquartile range]."
        + (f" Latency: about 1,000 req/s (wrk -c{res['latency_connections']}), {res['latency_seconds']} s per variant "
           "per round, added over wrk -> upstream in the same round, per hop (µs)." if has_lat else ""),
        "",
        "| variant (both sidecars) | CPU / request / hop | saved vs meshgate [IQR] | max req/s "
        + ("| CPU / request / hop at 1,000 req/s | added p50 / hop | p90 / hop | p99 / hop " if has_lat else "")
        + "| idle CPU / hop |",
        "| --- | ---: | ---: | ---: " + ("| ---: | ---: | ---: | ---: " if has_lat else "") + "| ---: |",
    ]
    for name in res["order"]:
        r = rows[name]
        lo, hi = r["saved_iqr"]
        saved = "" if name == "meshgate" else f"{r['saved_us']:+.1f} µs [{lo:+.1f}, {hi:+.1f}]"
        latc = (f"| {r['low_rate_cpu_us']:.1f} µs | {r['added_p50_per_hop']:.0f} | {r['added_p90_per_hop']:.0f} "
                f"| {r['added_p99_per_hop']:.0f} "
                if has_lat else "")
        lines.append(f"| {name} | {r['cpu_us']:.1f} µs | {saved} | {r['rps']:,.0f} {latc}"
                     f"| {r['idle_cpu_ms_per_s']:.1f} ms/s |")
    full, base = rows.get("meshgate"), rows.get("plain Envoys, mTLS")
    if full and base:
        lines += ["", f"meshgate's sidecar pair: {full['cpu_us']:.1f} µs of CPU per request per hop; two plain Envoys "
                  f"with mTLS: {base['cpu_us']:.1f} µs ({full['cpu_us'] / base['cpu_us']:.2f}x)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=2)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--quick", action="store_true", help="smoke size: 1 round of 1 s")
    ap.add_argument("--json", type=Path, help="also write every figure here")
    args, _ = ap.parse_known_args(argv)  # `python -m bench -- ...` passes every benchmark the same args
    idle, latency = 10.0, 3
    if args.quick:
        args.rounds, args.seconds, idle, latency = 1, 1, 2.0, 1
    if wrk_missing():
        return 2
    res = run(args.rounds, args.seconds, args.connections, idle_seconds=idle, latency_seconds=latency)
    publish(res, report(res), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
