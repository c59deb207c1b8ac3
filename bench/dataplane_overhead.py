"""Data-plane overhead: latency added by meshgate's proxies vs plain Envoy, side by side.

    .venv/bin/python bench/dataplane_overhead.py [--rate 1000] [--seconds 4] [--rounds 16] [--quick]

One load generator (wrk, Debian package `wrk`) and one upstream (an Envoy
answering every request with a direct response: fast, so the upstream is never
the bottleneck) for every path:

  direct       wrk -> upstream
  plain-1      wrk -> plain Envoy (static config, HTTP, no TLS) -> upstream
  plain-2      wrk -> plain Envoy -> plain Envoy -> upstream
  plain-2-tls  the same with mutual TLS between the two (static certificates, P-256, TLS 1.2-1.3
               as meshgate sets it): separates the cost of mTLS from the rest of meshgate's config
  mesh-2       wrk -> sidecar `front` (outbound) -mTLS-> sidecar `backend` (inbound, RBAC) -> upstream
               (a mesh call: the caller's sidecar and the callee's, as Istio's "two proxies")
  edge-2       wrk -TLS-> edge gateway (route auth none) -mTLS-> sidecar `backend` (inbound, RBAC) -> upstream
  edge-2-jwt   the same with the edge route requiring a JWT (ES256, sent by wrk as a header)
  edge-chain   wrk -TLS-> edge -mTLS-> sidecar `front` (inbound, RBAC) -> front's app (a plain Envoy
               calling backend) -> sidecar `front` (outbound) -mTLS-> sidecar `backend` (inbound,
               RBAC) -> upstream: the issue's edge -> sidecar -> sidecar in one piece, four meshgate
               hops and one plain one (the app), which is subtracted as plain-1's added latency

The meshgate paths run real `meshgate serve` configuration (made with the CLI,
pushed over ADS with TLS, workload certificates from the mesh CA, default-deny
policies, telemetry on as `proxy bootstrap` sets it). A hop below is one proxy
traversal.

Fixed request rate: wrk has no rate option, so a Lua script makes each of
`--connections` connections wait a random delay (mean connections/rate)
before each request: about `--rate` requests/s in Poisson-like arrivals, far
below saturation, latency from wrk's own histogram (µs). The paths run in
rounds, the order rotated each round, so that load from other work on this
shared machine hits all paths alike; figures are medians over rounds of each
round's percentile, and the added latency of a path is taken against `direct`
in the same round. Every ratio carries a 90% bootstrap interval over rounds
(resampled in pairs), and the verdict on the 10% target reads the interval:
met, not met (an interval entirely above 1.10) or not resolved. A second
pass measures throughput at constant concurrency
(no delay) for each path. Every Envoy runs with --concurrency 1.

Latency percentiles on a shared 2-core machine are dominated by scheduling
delays (another process holding the core a proxy needs), which hit plain and
meshgate Envoys alike. Each run therefore also records the CPU time (from
/proc/<pid>/stat) of the proxies on the path, per request: the work a hop
does, independent of what else runs on the machine.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (  # noqa: E402
    WRK_MISSING,
    ServeProcess,
    bootstrap_ci,
    cli,
    cpu_seconds,
    machine,
    machine_line,
    pct,
    publish,
    token_of,
    wrk_missing,
)
from bench._envoys import plain_bootstrap, tls_pair, upstream_bootstrap  # noqa: E402
from bench._wrk import Target, status, write_scripts, wrk  # noqa: E402
from meshgate.fleet.envoy import EnvoyProcess, free_port  # noqa: E402

TARGET_RATIO = 1.10  # added p99 per meshgate hop within 10% of a plain Envoy hop (issue 11)
MESH_PATHS = ("mesh-2", "edge-2")  # the target compares paths of the same length as plain-2
MIN_VERDICT_ROUNDS = 5  # fewer rounds give no verdict on the target (--quick has one)
ISSUER = "https://idp.bench.local/"
AUDIENCE = "bench"
EDGE_HOST = "api.bench.local"  # never looked up: wrk and curl are pointed at 127.0.0.1

def _signer() -> tuple[Any, dict[str, Any]]:
    from cryptography.hazmat.primitives.asymmetric import ec
    from jwt.algorithms import ECAlgorithm

    key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(ECAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": "bench", "alg": "ES256", "use": "sig"})
    return key, jwk


class Setup:
    """Every process of every path, started and stopped together (by PID, in stop())."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.envoys: list[EnvoyProcess] = []
        self.by_name: dict[str, EnvoyProcess] = {}
        self.serve: ServeProcess | None = None
        self.paths: list[Target] = []

    def envoy(self, bootstrap: dict[str, Any] | Path, name: str, admin_port: int | None = None) -> EnvoyProcess:
        p = EnvoyProcess(bootstrap, self.work, name, admin_port=admin_port)
        self.envoys.append(p.start())
        self.by_name[name] = p
        return p

    def start(self) -> Setup:
        import jwt

        up = free_port()
        self.envoy(upstream_bootstrap(up), "upstream")
        p1, p2a, p2b = free_port(), free_port(), free_port()
        self.envoy(plain_bootstrap("plain-1", p1, up), "plain-1")
        self.envoy(plain_bootstrap("plain-2a", p2a, p2b), "plain-2a")
        self.envoy(plain_bootstrap("plain-2b", p2b, up), "plain-2b")
        t2a, t2b = free_port(), free_port()
        tls_a, tls_b = tls_pair("tls", t2a, t2b, up)
        self.envoy(tls_a, "tls-a")
        self.envoy(tls_b, "tls-b")

        db = self.work / "mesh.db"
        key, jwk = _signer()
        (self.work / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
        token = jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "sub": "bench", "exp": int(time.time()) + 7200},
                           key, algorithm="ES256", headers={"kid": "bench"})
        edge_port, front_out, back_in = free_port(), free_port(), free_port()
        cli(db, "init", "--trust-domain", "bench.local")
        cli(db, "service", "add", "front", "--port", "8080")
        cli(db, "service", "add", "backend", "--port", "8080")
        tokens = {
            "front-1": token_of(cli(db, "proxy", "add", "front-1", "--service", "front",
                                    "--outbound-port", str(front_out))),
            "backend-1": token_of(cli(db, "proxy", "add", "backend-1", "--service", "backend",
                                      "--outbound-port", str(free_port()))),
            "public": token_of(cli(db, "edge", "add", "public", "--listen", f"127.0.0.1:{edge_port}")),
        }
        cli(db, "edge", "cert", "issue", "--gateway", "public", "--host", EDGE_HOST)
        cli(db, "jwt", "add", "idp", "--issuer", ISSUER, "--audience", AUDIENCE,
            "--jwks-file", str(self.work / "jwks.json"))
        cli(db, "edge", "route", "add", "public", "--host", EDGE_HOST, "--prefix", "/open", "--to", "backend",
            "--auth", "none", "--id", "open")
        cli(db, "edge", "route", "add", "public", "--host", EDGE_HOST, "--prefix", "/jwt", "--to", "backend",
            "--auth", "jwt:idp", "--id", "jwt")
        cli(db, "edge", "route", "add", "public", "--host", EDGE_HOST, "--prefix", "/chain", "--to", "front",
            "--auth", "none", "--id", "chain")
        cli(db, "policy", "allow", "--from", "edge:public", "--to", "backend")
        cli(db, "policy", "allow", "--from", "edge:public", "--to", "front")
        cli(db, "policy", "allow", "--from", "front", "--to", "backend")
        # front's app: a plain Envoy that calls backend through front's sidecar (Host: backend),
        # as the app behind the edge does in a mesh; it is the chain's one plain hop
        front_in, front_app = free_port(), free_port()
        self.envoy(plain_bootstrap("front-app", front_app, front_out, host="backend"), "front-app")
        _instance(db, "front", front_in, front_app, "front-1")
        _instance(db, "backend", back_in, up, "backend-1")
        self.serve = ServeProcess(db, self.work).start()
        for name, tok in tokens.items():
            admin = free_port()
            out = self.work / f"{name}.json"
            cli(db, "proxy", "bootstrap", name, "--token", tok, "--server", self.serve.address,
                "--admin-port", str(admin), "--out", str(out))
            self.envoy(out, name, admin_port=admin)
        for p in self.envoys:
            p.wait_live()
        edge = f"https://{EDGE_HOST}:{edge_port}"  # wrk's script resolves every host to 127.0.0.1
        self.paths = [
            Target("direct", 0, f"http://127.0.0.1:{up}/open", what="wrk -> upstream"),
            Target("plain-1", 1, f"http://127.0.0.1:{p1}/open", what="one plain Envoy", procs=("plain-1",)),
            Target("plain-2", 2, f"http://127.0.0.1:{p2a}/open", what="two plain Envoys",
                  procs=("plain-2a", "plain-2b")),
            Target("plain-2-tls", 2, f"http://127.0.0.1:{t2a}/open", what="two plain Envoys, mTLS between",
                  procs=("tls-a", "tls-b")),
            Target("mesh-2", 2, f"http://127.0.0.1:{front_out}/open", ("Host: backend",),
                  what="sidecar -mTLS-> sidecar, RBAC", procs=("front-1", "backend-1")),
            Target("edge-2", 2, f"{edge}/open", (f"Host: {EDGE_HOST}",),
                  what="TLS -> edge, auth none -mTLS-> sidecar, RBAC", procs=("public", "backend-1")),
            Target("edge-2-jwt", 2, f"{edge}/jwt", (f"Host: {EDGE_HOST}", f"Authorization: Bearer {token}"),
                  what="the same, JWT ES256 at the edge", procs=("public", "backend-1")),
            Target("edge-chain", 5, f"{edge}/chain", (f"Host: {EDGE_HOST}",),
                  what="TLS -> edge -mTLS-> sidecar front (inbound, RBAC) -> front's app (a plain Envoy) "
                       "-> sidecar front (outbound) -mTLS-> sidecar backend (inbound, RBAC)",
                  procs=("public", "front-1", "front-app", "backend-1"), plain_hops=1),
        ]
        self._wait_routable()
        return self

    def _wait_routable(self, timeout: float = 60.0) -> None:
        """Each path answers 200 (config pushed, certificates issued, policies in place)."""
        deadline = time.monotonic() + timeout
        pending = list(self.paths)
        while pending and time.monotonic() < deadline:
            pending = [p for p in pending if status(p) != 200]
            if pending:
                time.sleep(0.2)
        if pending:
            notes = [f"{p.name}: status {status(p)}" for p in pending]
            notes += [f"--- {e.name} ---\n{e.tail(8)}" for e in self.envoys]
            raise RuntimeError("paths not routable:\n" + "\n".join(notes)
                               + "\n--- serve ---\n" + (self.serve.tail() if self.serve else ""))

    def stop(self) -> None:
        for p in reversed(self.envoys):
            p.stop()
        if self.serve is not None:
            self.serve.stop()


def _instance(db: Path, service: str, inbound: int, app: int, proxy: str) -> None:
    """An instance linked to its sidecar (the store API: `instance add` registers instances without one)."""
    from meshgate.store.db import open_store
    from meshgate.store.instances import add_instance
    from meshgate.store.txn import write

    engine = open_store(str(db))
    try:
        with write(engine, f"instance of {service} behind {proxy}", "bench") as w:
            add_instance(w, service, "127.0.0.1", inbound, app, proxy=proxy)
    finally:
        engine.dispose()


def measured(setup: Setup, p: Target, seconds: float, connections: int, script: Path) -> dict[str, float]:
    """One wrk run, with the CPU time the path's proxies spent on it, per request (µs)."""
    pids = [setup.by_name[n].pid for n in p.procs]
    c0 = sum(cpu_seconds(pid) for pid in pids)
    res = wrk(p, seconds, connections, script)
    res["cpu_us"] = (sum(cpu_seconds(pid) for pid in pids) - c0) / max(1.0, res["requests"]) * 1e6
    return res


def run(rate: int, seconds: float, rounds: int, connections: int, load_connections: int,
        load_seconds: float, warmup: bool = True) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        raise SystemExit(WRK_MISSING)
    work = Path(tempfile.mkdtemp(prefix="meshgate-dataplane-"))
    scripts = write_scripts(work, rate, connections)
    fixed, closed = scripts.fixed, scripts.closed
    m = machine()
    setup = Setup(work)
    latency: dict[str, list[dict[str, float]]] = {}
    load: dict[str, list[dict[str, float]]] = {}
    try:
        setup.start()
        paths = setup.paths
        for p in paths if warmup else []:  # warm up: connections, TLS sessions, connection pools
            wrk(p, 1, connections, closed)
        for r in range(rounds):
            order = paths[r % len(paths):] + paths[: r % len(paths)]
            for p in order:
                res = measured(setup, p, seconds, connections, fixed)
                latency.setdefault(p.name, []).append(res)
                print(f"round {r + 1}/{rounds} {p.name:11s} {res['rps']:7.0f} req/s  p50 {res['p50']:6.0f}  "
                      f"p90 {res['p90']:6.0f}  p99 {res['p99']:6.0f} µs  proxies {res['cpu_us']:5.1f} µs CPU/req  "
                      f"errors {res['errors']:.0f}", flush=True)
            for p in order:
                res = measured(setup, p, load_seconds, load_connections, closed)
                load.setdefault(p.name, []).append(res)
                print(f"round {r + 1}/{rounds} {p.name:11s} max {res['rps']:7.0f} req/s at -c{load_connections}  "
                      f"proxies {res['cpu_us']:5.1f} µs CPU/req", flush=True)
    finally:
        setup.stop()
        shutil.rmtree(work, ignore_errors=True)
    return {"machine": m, "rate": rate, "seconds": seconds, "rounds": rounds, "connections": connections,
            "load_connections": load_connections, "load_seconds": load_seconds,
            "paths": [{"name": p.name, "hops": p.hops, "plain_hops": p.plain_hops, "what": p.what} for p in paths],
            "latency": latency, "load": load, **summarize(paths, latency, load)}


def summarize(paths: list[Target], latency: dict[str, list[dict[str, float]]],
              load: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    """Medians over rounds; a path's added latency is taken against `direct` in the same round,
    per hop; each path's per-hop figures are compared with plain-2's (same number of processes)
    and with plain-2-tls's (the same plus mutual TLS), each ratio with a 90% bootstrap interval
    over rounds (resampled in pairs: a round's runs are seconds apart)."""
    med = statistics.median
    rounds = len(latency["direct"])
    by_name = {p.name: p for p in paths}

    def hop_values(name: str, q: str, idx: list[int], runs: dict[str, list[dict[str, float]]]) -> list[float]:
        """Per meshgate (or plain) hop, round by round: added over `direct`, less the plain hops
        a path contains (each counted as plain-1's added latency in the same round)."""
        p = by_name[name]
        own = p.hops - p.plain_hops
        return [(runs[name][i][q] - runs["direct"][i][q]
                 - p.plain_hops * (runs["plain-1"][i][q] - runs["direct"][i][q])) / own for i in idx]

    def added(name: str, q: str, idx: list[int]) -> float:
        return med(hop_values(name, q, idx, latency))

    def ratio(x: float, y: float) -> float:
        return x / y if y > 0 else float("nan")

    def cpu_per_hop(name: str, runs: dict[str, list[dict[str, float]]]) -> float:
        p = by_name[name]
        return (med(r["cpu_us"] for r in runs[name])
                - p.plain_hops * med(r["cpu_us"] for r in runs["plain-1"])) / (p.hops - p.plain_hops)

    everyone = list(range(rounds))
    rows: dict[str, dict[str, Any]] = {}
    for p in paths:
        runs, lruns = latency[p.name], load[p.name]
        row: dict[str, Any] = {
            "hops": p.hops, "plain_hops": p.plain_hops, "rps": med(r["rps"] for r in runs),
            "errors": sum(r["errors"] for r in runs),
            **{q: med(r[q] for r in runs) for q in ("p50", "p90", "p99", "p999")},
            "max_rps": med(r["rps"] for r in lruns), "load_p99": med(r["p99"] for r in lruns),
            "load_errors": sum(r["errors"] for r in lruns),
        }
        if p.hops:
            for q in ("p50", "p90", "p99"):
                per_hop = hop_values(p.name, q, everyone, latency)
                row[f"added_{q}_per_hop"] = med(per_hop)
                row[f"added_{q}_per_hop_iqr"] = (pct(per_hop, 25), pct(per_hop, 75))
            row["cpu_us_per_hop"] = cpu_per_hop(p.name, latency)
            row["load_cpu_us_per_hop"] = cpu_per_hop(p.name, load)
        rows[p.name] = row
    for row in rows.values():
        row["max_rps_vs_direct"] = ratio(row["max_rps"], rows["direct"]["max_rps"])
        row["max_rps_vs_plain2"] = ratio(row["max_rps"], rows["plain-2"]["max_rps"])
    for p in paths:
        row = rows[p.name]
        if not p.hops:
            continue
        for base, tag in (("plain-2", ""), ("plain-2-tls", "_tls")):
            b = rows[base]
            for q in ("p50", "p90", "p99"):
                row[f"ratio{tag}_{q}"] = ratio(row[f"added_{q}_per_hop"], b[f"added_{q}_per_hop"])
                row[f"ratio{tag}_{q}_ci"] = bootstrap_ci(rounds, lambda idx, n=p.name, q=q, base=base: ratio(
                    added(n, q, idx), added(base, q, idx)))
            row[f"ratio{tag}_cpu"] = ratio(row["cpu_us_per_hop"], b["cpu_us_per_hop"])
            row[f"ratio{tag}_load_cpu"] = ratio(row["load_cpu_us_per_hop"], b["load_cpu_us_per_hop"])
    mesh = {n: rows[n]["ratio_p99_ci"] for n in MESH_PATHS}
    if rounds < MIN_VERDICT_ROUNDS:  # a bootstrap over one or two rounds is a point, not an interval
        verdict = "not resolved"
    else:
        verdict = ("met" if all(hi <= TARGET_RATIO for _, hi in mesh.values())
                   else "not met" if any(lo > TARGET_RATIO for lo, _ in mesh.values()) else "not resolved")
    return {"rows": rows, "worst_meshgate_ratio_p99": max(rows[n]["ratio_p99"] for n in MESH_PATHS),
            "target_met": verdict == "met", "verdict": verdict,
            # two configurations that do the same per hop: how far apart noise alone puts them
            "noise_ratio_p99": rows["plain-1"]["ratio_p99"], "noise_ratio_p99_ci": rows["plain-1"]["ratio_p99_ci"]}


def report(res: dict[str, Any]) -> str:
    rows = res["rows"]
    names = [p["name"] for p in res["paths"]]

    def r2(x: float) -> str:
        return f"{x:.2f}" if math.isfinite(x) else "n/a"

    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {machine_line(res['machine'])}.",
        f"Fixed rate about {res['rate']} req/s (wrk -t1 -c{res['connections']}, random delay), "
        f"{res['rounds']} rounds x {res['seconds']:g} s per path, order rotated each round; medians over rounds; "
        "latency in µs.",
        "",
        "| path | hops | req/s | p50 | p90 | p99 | p99.9 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for p in res["paths"]:
        r = rows[p["name"]]
        hops = f"{r['hops']} ({r['plain_hops']} plain)" if r["plain_hops"] else f"{r['hops']}"
        lines.append(f"| {p['name']} ({p['what']}) | {hops} | {r['rps']:,.0f} | {r['p50']:.0f} | {r['p90']:.0f} "
                     f"| {r['p99']:.0f} | {r['p999']:.0f} |")
    def ci(r: dict[str, Any], key: str) -> str:
        lo, hi = r[key + "_ci"]
        return f"{r2(r[key])} [{r2(lo)}, {r2(hi)}]"

    lines += ["", "Per hop (one proxy traversal; edge-chain: per meshgate hop, its plain hop counted as plain-1's "
              "in the same round), against `direct` in the same round, compared with plain-2's per hop "
              "(same number of proxy processes) and with plain-2-tls's (the same with mutual TLS); ratios with their "
              "90% bootstrap interval over rounds, added p99 with its interquartile range over rounds:", "",
              "| path | added p50 / hop | vs plain-2 | added p99 / hop [IQR] | vs plain-2 | vs plain-2-tls "
              "| proxy CPU / request / hop | vs plain-2 | vs plain-2-tls |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for n in names:
        r = rows[n]
        if not r["hops"]:
            continue
        lo, hi = r["added_p99_per_hop_iqr"]
        lines.append(f"| {n} | {r['added_p50_per_hop']:.0f} | {ci(r, 'ratio_p50')} | {r['added_p99_per_hop']:.0f} "
                     f"[{lo:.0f}, {hi:.0f}] | {ci(r, 'ratio_p99')} | {ci(r, 'ratio_tls_p99')} "
                     f"| {r['cpu_us_per_hop']:.1f} µs | {r2(r['ratio_cpu'])} | {r2(r['ratio_tls_cpu'])} |")
    lines += ["", f"Throughput at constant concurrency (wrk -t1 -c{res['load_connections']}, "
              f"{res['load_seconds']:g} s per path per round, medians):", "",
              "| path | req/s | vs direct | vs plain-2 | proxy CPU / request / hop | vs plain-2 | p99 (µs) |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for n in names:
        r = rows[n]
        cpu = f"{r['load_cpu_us_per_hop']:.1f} µs" if r["hops"] else ""
        rc = r2(r["ratio_load_cpu"]) if r["hops"] else ""
        lines.append(f"| {n} | {r['max_rps']:,.0f} | {r2(r['max_rps_vs_direct'])} | {r2(r['max_rps_vs_plain2'])} "
                     f"| {cpu} | {rc} | {r['load_p99']:.0f} |")
    errs = sum(r["errors"] + r["load_errors"] for r in rows.values())
    lo, hi = res["noise_ratio_p99_ci"]
    worst = max(MESH_PATHS, key=lambda n: rows[n]["ratio_p99"])
    wlo, whi = rows[worst]["ratio_p99_ci"]
    lines += ["", f"Target: added p99 per meshgate hop within {TARGET_RATIO - 1:.0%} of a plain Envoy hop "
              f"(mesh-2 and edge-2 vs plain-2): worst {worst} {r2(rows[worst]['ratio_p99'])} "
              f"[{r2(wlo)}, {r2(whi)}]: {res['verdict']} (met: every interval at or below {TARGET_RATIO:.2f}; "
              f"not met: one entirely above; not resolved otherwise, or with fewer than {MIN_VERDICT_ROUNDS} "
              f"rounds). "
              f"Noise yardstick: plain-1's p99 per hop vs plain-2's (the same work per hop) is "
              f"{r2(res['noise_ratio_p99'])} [{r2(lo)}, {r2(hi)}]. Errors (socket or non-2xx) over all runs: {errs:.0f}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=int, default=1000, help="requests/s of the fixed-rate runs")
    ap.add_argument("--seconds", type=float, default=4, help="length of one fixed-rate run")
    ap.add_argument("--rounds", type=int, default=16, help="rounds (16 resolve about 10%% at p99 on a quiet machine)")
    ap.add_argument("--connections", type=int, default=10, help="connections of the fixed-rate runs")
    ap.add_argument("--load-connections", type=int, default=16, help="connections of the throughput runs")
    ap.add_argument("--load-seconds", type=float, default=2)
    ap.add_argument("--quick", action="store_true", help="smoke size: 1 round of 1 s")
    ap.add_argument("--json", type=Path, help="also write every figure here")
    args, _ = ap.parse_known_args(argv)  # `python -m bench -- ...` passes every benchmark the same args
    if args.quick:
        args.rounds, args.seconds, args.load_seconds = 1, 1, 1
    if wrk_missing():
        return 2
    res = run(args.rate, args.seconds, args.rounds, args.connections, args.load_connections, args.load_seconds)
    publish(res, report(res), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
