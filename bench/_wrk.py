"""wrk (Debian package `wrk`) driven from Python: fixed-rate or closed-loop runs, figures
from a Lua `done` hook (µs), every host name resolved to 127.0.0.1.

    t = Target("mesh-2", 2, "http://127.0.0.1:15001/open", ("Host: backend",), procs=("a", "b"))
    scripts = write_scripts(workdir, rate=1000, connections=10)
    figures = wrk(t, 4, 10, scripts.fixed)    # requests, rps, errors, p50, p90, p99, p999, mean, max
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

# every host name resolves to 127.0.0.1 (wrk still sends it as TLS SNI); no DNS
RESOLVE_SCRIPT = """
wrk.resolve = function(host, service)
  wrk.addrs = wrk.lookup("127.0.0.1", service)
end
"""

RATE_SCRIPT = """
local mean_ms = %MEAN%
math.randomseed(os.time())
delay = function()
  return math.floor(mean_ms * 2 * math.random())
end
"""

REPORT_SCRIPT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("MGSTATS %d %d %d %d %.1f %.1f %.1f %.1f %.1f %.1f\\n",
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.mean, latency.max))
end
"""


@dataclass
class Scripts:
    fixed: Path  # about `rate` requests/s over all connections (random delays)
    closed: Path  # as fast as the connections go


def write_scripts(workdir: Path, rate: int, connections: int) -> Scripts:
    fixed = workdir / "fixed.lua"
    fixed.write_text(RESOLVE_SCRIPT + RATE_SCRIPT.replace("%MEAN%", f"{connections * 1000 / rate:.3f}") + REPORT_SCRIPT)
    closed = workdir / "closed.lua"
    closed.write_text(RESOLVE_SCRIPT + REPORT_SCRIPT)
    return Scripts(fixed, closed)


@dataclass
class Target:
    name: str
    hops: int
    url: str
    headers: tuple[str, ...] = ()
    what: str = ""
    procs: tuple[str, ...] = ()  # the proxies on the path (their CPU is counted)
    plain_hops: int = 0  # of `hops`, traversals of a plain Envoy (the rest are meshgate's)


def status(p: Target) -> int:
    host, port = p.url.split("/")[2].rsplit(":", 1)
    cmd = ["curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2",
           "--resolve", f"{host}:{port}:127.0.0.1"]
    for h in p.headers:
        cmd += ["-H", h]
    try:
        out = subprocess.run(cmd + [p.url], capture_output=True, text=True, timeout=5).stdout
        return int(out or 0)
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return 0


def wrk(p: Target, seconds: float, connections: int, script: Path) -> dict[str, float]:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", str(script)]
    for h in p.headers:
        cmd += ["-H", h]
    out = subprocess.run(cmd + [p.url], capture_output=True, text=True, timeout=seconds + 60).stdout
    m = re.search(r"MGSTATS (.*)", out)
    if m is None:
        raise RuntimeError(f"wrk gave no figures for {p.name}: {out}")
    n, dur_us, sock_err, bad_status, p50, p90, p99, p999, mean, mx = (float(x) for x in m.group(1).split())
    return {"requests": n, "rps": n / (dur_us / 1e6), "errors": sock_err + bad_status,
            "p50": p50, "p90": p90, "p99": p99, "p999": p999, "mean": mean, "max": mx}
