"""Telemetry overhead: requests/s through one sidecar Envoy with telemetry on vs off.

    .venv/bin/python bench/telemetry_overhead.py [--seconds 2] [--rounds 15] [--connections 32]

Two sidecars with the same inbound listener (RBAC, router to a local app),
one with meshgate's telemetry (metrics-service stats sink at a 1 s flush,
and the denied-or-failed gRPC access log) and one without, run side by side
in one process tree. wrk (Debian package `wrk`) drives them in short
alternating rounds (off/on, then on/off ...): each round gives one on/off
ratio from two runs seconds apart, so that load from other work on the
machine, which changes over minutes, hits both sides of a ratio alike. The
median of the per-round ratios is reported. Two workloads: only successful requests (the
access-log filter runs, nothing is sent), and 5% denied requests (each
denial is sent to the control plane over gRPC and parsed there).

The app behind the sidecars is a third Envoy answering with a direct
response, so Python is not the bottleneck. Target: telemetry-on within 5%.

Throughput on a shared machine is noisy, so each run also records the
sidecar's own CPU time per request (from /proc/<pid>/stat): the cost of
telemetry inside Envoy, independent of what else the machine is doing. The
control plane's CPU per request (this process: the gRPC receivers) is shown
too; in production it runs on another machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from google.protobuf import json_format

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._common import wrk_missing  # noqa: E402
from meshgate.fleet.envoy import EnvoyProcess, free_port  # noqa: E402
from meshgate.telemetry.envoy_config import (  # noqa: E402
    bootstrap_stats_sink,
    denied_or_failed_access_log,
)
from meshgate.telemetry.runner import TelemetryServer  # noqa: E402

CP = "meshgate"
DENY_EVERY = 20  # 5% of requests in the "denied" workload

WRK_SCRIPT = """
counter = 0
request = function()
  counter = counter + 1
  if counter % %d == 0 then
    return wrk.format("GET", "/admin/secret")
  end
  return wrk.format("GET", "/ok")
end
""".replace("%d", str(DENY_EVERY))


def _addr(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def _cluster(name: str, port: int, http2: bool = False) -> dict[str, Any]:
    c: dict[str, Any] = {"name": name, "type": "STATIC", "connect_timeout": "1s",
                         "load_assignment": {"cluster_name": name, "endpoints": [
                             {"lb_endpoints": [{"endpoint": {"address": _addr(port)}}]}]}}
    if http2:
        c["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}}}
    return c


def _hcm(prefix: str, route: dict[str, Any], filters: list[dict[str, Any]],
         access_log: list[dict[str, Any]]) -> dict[str, Any]:
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": prefix,
        "route_config": {"name": prefix, "virtual_hosts": [{"name": "all", "domains": ["*"],
                                                            "routes": [route]}]},
        "http_filters": filters + [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
        "access_log": access_log,
    }}


def app_bootstrap(port: int) -> dict[str, Any]:
    route = {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {
        "inline_string": "ok\n"}}}
    return {"node": {"id": "app", "cluster": "app"}, "admin": {"address": _addr(free_port())},
            "static_resources": {"listeners": [{"name": "app", "address": _addr(port),
                                                "filter_chains": [{"filters": [
                                                    _hcm("app", route, [], [])]}]}]}}


def sidecar_bootstrap(name: str, port: int, app_port: int, cp_port: int,
                      telemetry: bool) -> dict[str, Any]:
    rbac = {"name": "envoy.filters.http.rbac", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
        "rules": {"action": "DENY", "policies": {"deny-admin": {
            "permissions": [{"url_path": {"path": {"prefix": "/admin"}}}],
            "principals": [{"any": True}]}}}}}
    logs = [json.loads(json_format.MessageToJson(denied_or_failed_access_log(CP, name)))] \
        if telemetry else []
    route = {"name": "all", "match": {"prefix": "/"}, "route": {"cluster": "local_app"}}
    b: dict[str, Any] = {
        "node": {"id": name, "cluster": "orders"}, "admin": {"address": _addr(free_port())},
        "static_resources": {
            "listeners": [{"name": "inbound", "address": _addr(port), "filter_chains": [
                {"filters": [_hcm("inbound", route, [rbac], logs)]}]}],
            "clusters": [_cluster("local_app", app_port), _cluster(CP, cp_port, http2=True)],
        },
    }
    if telemetry:
        b.update(bootstrap_stats_sink(CP, flush_interval_ms=1000))
    return b


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (fields 14 and 15 of /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def wrk(port: int, seconds: int, connections: int, script: Path | None) -> tuple[float, int, int]:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if script is not None:
        cmd += ["-s", str(script)]
    out = subprocess.run(cmd + [f"http://127.0.0.1:{port}/ok"], capture_output=True, text=True,
                         timeout=seconds + 30, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return rps, total, int(non2xx.group(1)) if non2xx else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=2, help="length of one wrk run")
    ap.add_argument("--rounds", type=int, default=15, help="alternating rounds per workload")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--quick", action="store_true", help="smoke size: 1 round of 1 s")
    args, _ = ap.parse_known_args()  # `python -m bench -- ...` passes every benchmark the same args
    if args.quick:
        args.rounds, args.seconds = 1, 1
    if wrk_missing():
        return 2
    work = Path(tempfile.mkdtemp(prefix="meshgate-bench-"))
    script = work / "mixed.lua"
    script.write_text(WRK_SCRIPT)
    ts = TelemetryServer(admin_port=None).start()
    app_port, on_port, off_port = free_port(), free_port(), free_port()
    procs = [
        EnvoyProcess(app_bootstrap(app_port), work, "app"),
        EnvoyProcess(sidecar_bootstrap("sidecar-on", on_port, app_port, ts.grpc_port, True),
                     work, "sidecar-on"),
        EnvoyProcess(sidecar_bootstrap("sidecar-off", off_port, app_port, ts.grpc_port, False),
                     work, "sidecar-off"),
    ]
    results: dict[str, dict[str, list[float]]] = {}
    cpu: dict[str, dict[str, list[float]]] = {}  # sidecar CPU µs per request
    cp_cpu: dict[str, list[float]] = {}  # control-plane CPU µs per request (telemetry on)
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.wait_live()
        wrk(on_port, 1, args.connections, None)  # warm up both
        wrk(off_port, 1, args.connections, None)
        pids = {"on": procs[1].pid, "off": procs[2].pid}
        for workload, wscript in (("all 200", None), ("5% denied", script)):
            runs: dict[str, list[float]] = {"off": [], "on": []}
            cpus: dict[str, list[float]] = {"off": [], "on": []}
            cp_cpu[workload] = []
            for r in range(args.rounds):
                order = (("off", off_port), ("on", on_port)) if r % 2 == 0 else \
                        (("on", on_port), ("off", off_port))
                for label, port in order:
                    c0, s0 = cpu_seconds(pids[label]), own_cpu()
                    rps, total, non2xx = wrk(port, args.seconds, args.connections, wscript)
                    c1, s1 = cpu_seconds(pids[label]), own_cpu()
                    runs[label].append(rps)
                    cpus[label].append((c1 - c0) / total * 1e6)
                    if label == "on":
                        cp_cpu[workload].append((s1 - s0) / total * 1e6)
                    print(f"{workload:10s} round {r + 1} telemetry {label:3s}: {rps:9.0f} req/s"
                          f"  sidecar {cpus[label][-1]:5.1f} µs CPU/req  (non-2xx {non2xx})",
                          flush=True)
            results[workload] = runs
            cpu[workload] = cpus
        time.sleep(1.5)
        pushes = ts.call(lambda: ts.hub.metric_pushes)
        logs = ts.call(lambda: ts.hub.log_entries)
        denied = ts.call(lambda: sum(ts.hub.denial_rules.values()))
    finally:
        for p in reversed(procs):
            p.stop()
        ts.stop()
    ncpu = os.cpu_count()
    print()
    print(f"Envoy 1.40, --concurrency 1 per Envoy, wrk -t1 -c{args.connections}, "
          f"{args.rounds} x {args.seconds}s alternating rounds, {ncpu} CPUs (shared)")
    print(f"control plane received {pushes} stats pushes, {logs} access-log entries "
          f"({denied} denials)")
    print()
    print("| workload | req/s off | req/s on | on / off (paired) | sidecar CPU/req off | on "
          "| on / off (paired) | control plane CPU/req |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    worst = float("inf")
    for workload, runs in results.items():
        off, on = statistics.median(runs["off"]), statistics.median(runs["on"])
        c_off, c_on = statistics.median(cpu[workload]["off"]), statistics.median(cpu[workload]["on"])
        ratio = statistics.median(a / b for a, b in zip(runs["on"], runs["off"], strict=True))
        c_ratio = statistics.median(a / b for a, b in zip(cpu[workload]["on"], cpu[workload]["off"],
                                                          strict=True))
        worst = min(worst, ratio)
        print(f"| {workload} | {off:,.0f} | {on:,.0f} | {ratio:.3f} | {c_off:.1f} µs | "
              f"{c_on:.1f} µs | {c_ratio:.3f} | {statistics.median(cp_cpu[workload]):.1f} µs |")
    print()
    verdict = "within" if worst >= 0.95 else "NOT within"
    print(f"worst throughput ratio {worst:.3f}: {verdict} the 5% target "
          "(median of per-round on/off ratios)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
