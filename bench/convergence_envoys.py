"""Convergence with real Envoys: a CLI change -> every Envoy has ACKed it, p50/p99 over changes.

    .venv/bin/python bench/convergence_envoys.py [--envoys 50] [--changes 10] [--quick]

N real Envoy 1.40 sidecars (--concurrency 1, bootstraps from `meshgate proxy
bootstrap`: delta ADS over TLS, join tokens, workload certificates from the
mesh CA, stats sink on) connect to one `meshgate serve` (a subprocess, as
users run it). N/5 services with 5 sidecars each, default deny, everyone
allowed to call `common`. Then a series of changes, each made by running the
real CLI as a subprocess, alternating:

  instance   `meshgate instance add common ...`: a new endpoint for every sidecar (EDS)
  policy     `meshgate policy allow --from '*' --to extra --id extra` (or `policy remove extra`,
             alternately): every sidecar gains (loses) the cluster, endpoints and route of `extra`

Timed from the change's commit (its revision's timestamp) to the moment the
server received each Envoy's ACK of the last response the change caused. The
ACK times come from the server's ACK ledger (table proxy_status: per proxy and
type, sent_at and acked_at, stamped when the message arrives; the server
writes the rows to the store every 0.5 s, which delays reading them, not the
stamps). Envoy sends an ACK only after applying the response, so this is
"applied by every Envoy", read without adding load: polling 50 Envoys' admin
endpoints every few milliseconds would itself steal CPU from the 2 cores
being measured and quantize the result to the poll interval. Each change is
then checked from the Envoys' side (their own stats: endpoint count of
`common`, presence of the `extra` cluster), untimed.

The figures include the server's store poll interval (150 ms): a change is
noticed by polling SQLite's data_version.
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (  # noqa: E402
    MESHGATE,
    ServeProcess,
    anon_mb,
    cli,
    machine,
    machine_line,
    pct,
    publish,
    rss_mb,
)
from meshgate.fleet.envoy import EnvoyProcess, free_port  # noqa: E402

PER_SERVICE = 5
SETTLE_S = 1.2  # no new push for this long (> the ledger's 0.5 s flush) ends a change


class Ports:
    """Distinct free ports (free_port can hand the same port out twice once it is closed)."""

    def __init__(self) -> None:
        self.used: set[int] = set()

    def __call__(self) -> int:
        for _ in range(100):
            p = free_port()
            if p not in self.used:
                self.used.add(p)
                return p
        raise RuntimeError("no free port")


def make_mesh(db: Path, envoys: int, ports: Ports) -> dict[str, tuple[str, int]]:
    """The store (through the store API, in two transactions: faster than 150 CLI calls);
    returns proxy -> (token, outbound port)."""
    from meshgate.ca import create_keybox, initialize_ca
    from meshgate.model import Policy
    from meshgate.store.db import open_store
    from meshgate.store.instances import add_instance
    from meshgate.store.mesh import create_mesh
    from meshgate.store.policies import add_policy
    from meshgate.store.proxies import add_proxy
    from meshgate.store.services import add_service
    from meshgate.store.txn import write

    engine = open_store(str(db), must_exist=False)
    try:
        with write(engine, "bench init", "bench") as w:
            create_mesh(w, "bench.local", default_action="deny")
            initialize_ca(w, create_keybox(str(engine.url)), "bench.local", time.time())
        services = max(1, (envoys + PER_SERVICE - 1) // PER_SERVICE)
        out: dict[str, tuple[str, int]] = {}
        with write(engine, "bench fleet", "bench") as w:
            add_service(w, "common", port=7000)
            add_service(w, "extra", port=7001)
            add_instance(w, "common", "127.0.0.1", ports(), ports())
            add_instance(w, "extra", "127.0.0.1", ports(), ports())
            for s in range(services):
                add_service(w, f"s{s:02d}", port=8000)
            for i in range(envoys):
                svc, name, outbound = f"s{i // PER_SERVICE:02d}", f"s{i // PER_SERVICE:02d}-{i % PER_SERVICE}", ports()
                out[name] = (add_proxy(w, name, kind="sidecar", service=svc, outbound_port=outbound)[1], outbound)
                add_instance(w, svc, "127.0.0.1", ports(), ports(), proxy=name)
            add_policy(w, Policy("anyone-common", "allow", ("*",), "common"))
        return out
    finally:
        engine.dispose()


def ledger(db: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """proxy -> type -> its proxy_status row (read-only SQLite connection)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        conn.row_factory = sqlite3.Row
        rows = conn.execute("SELECT proxy, type, connected, sent_version, sent_at, acked_version, acked_at, "
                            "nack_version FROM proxy_status").fetchall()
    finally:
        conn.close()
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(r["proxy"], {})[r["type"]] = dict(r)
    return out


def last_revision_at(db: Path) -> float:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return float(conn.execute("SELECT at FROM revisions ORDER BY id DESC LIMIT 1").fetchone()[0])
    finally:
        conn.close()


def settled(rows: dict[str, dict[str, Any]]) -> bool:
    """Every type's last response ACKed (a NACK counts as settled: it is reported)."""
    return bool(rows) and all(r["sent_version"] is None or r["acked_version"] == r["sent_version"]
                              or r["nack_version"] == r["sent_version"] for r in rows.values())


def wait_converged(db: Path, proxies: list[str], since: float, timeout: float) -> dict[str, float]:
    """proxy -> time of its last ACK of a response sent after `since`, once every proxy got
    one, every type is ACKed, and nothing new was sent for SETTLE_S. Bounded by `timeout`."""
    deadline = time.monotonic() + timeout
    stable_since: float | None = None
    last: dict[str, float] | None = None
    while time.monotonic() < deadline:
        book = ledger(db)
        done: dict[str, float] = {}
        for p in proxies:
            rows = book.get(p, {})
            sent = [r for r in rows.values() if (r["sent_at"] or 0) >= since]
            if not sent or not settled(rows):
                break
            done[p] = max(r["acked_at"] or 0 for r in sent)
        if len(done) == len(proxies):
            if done != last:
                last, stable_since = done, time.monotonic()
            elif stable_since is not None and time.monotonic() - stable_since >= SETTLE_S:
                return done
        else:
            last, stable_since = None, None
        time.sleep(0.1)
    missing = [p for p in proxies if p not in (last or {})]
    raise RuntimeError(f"not converged after {timeout} s: {len(missing)} proxies pending, e.g. {missing[:5]}")


def run_cli(db: Path, *args: str) -> float:
    """The real CLI as its own process (what a user types); its wall time."""
    t0 = time.time()
    r = subprocess.run([MESHGATE, "--db", str(db), *args], capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"meshgate {' '.join(args)}: exit {r.returncode}: {r.stdout}{r.stderr}")
    return time.time() - t0


def envoy_view(envoys: list[EnvoyProcess]) -> dict[str, int]:
    """What the Envoys themselves show: endpoints of `common`, and how many have `extra`."""
    common, extra = [], 0
    for e in envoys:
        stats = e.stats("cluster\\.svc/(common|extra)\\.membership_total")
        common.append(stats.get("cluster.svc/common.membership_total", -1))
        extra += "cluster.svc/extra.membership_total" in stats
    return {"common_min": min(common), "common_max": max(common), "with_extra": extra}


def run(envoys: int, changes: int, timeout: float = 120.0) -> dict[str, Any]:
    m = machine()
    work = Path(tempfile.mkdtemp(prefix="meshgate-convergence-"))
    db = work / "mesh.db"
    ports = Ports()
    procs: list[EnvoyProcess] = []
    serve = ServeProcess(db, work)
    results: list[dict[str, Any]] = []
    try:
        proxies = make_mesh(db, envoys, ports)
        serve.start()
        t0 = time.time()
        for name, (token, _) in proxies.items():
            admin = ports()
            out = work / f"{name}.json"
            cli(db, "proxy", "bootstrap", name, "--token", token, "--server", serve.address,
                "--admin-port", str(admin), "--out", str(out))
            procs.append(EnvoyProcess(out, work, name, admin_port=admin).start())
        for p in procs:
            p.wait_live(60)
        names = list(proxies)
        initial = wait_converged(db, names, t0, timeout)
        initial_s = max(initial.values()) - t0
        rss_envoy = statistics.median(anon_mb(p.pid) for p in procs)
        common_endpoints = envoy_view(procs)["common_max"]
        policy_on = False
        for k in range(changes):
            if k % 2 == 0:
                kind = "instance"
                wall = run_cli(db, "instance", "add", "common", "--address", "127.0.0.1",
                               "--inbound-port", str(ports()), "--app-port", str(ports()))
                common_endpoints += 1
            else:
                kind = "policy"
                args = ("policy", "remove", "extra") if policy_on else \
                    ("policy", "allow", "--from", "*", "--to", "extra", "--id", "extra")
                wall = run_cli(db, *args)
                policy_on = not policy_on
            at = last_revision_at(db)
            acks = wait_converged(db, names, at, timeout)
            lat = sorted(t - at for t in acks.values())
            view = envoy_view(procs)
            ok = view["common_min"] == view["common_max"] == common_endpoints and \
                view["with_extra"] == (len(procs) if policy_on else 0)
            results.append({"kind": kind, "all_acked_s": lat[-1], "per_envoy_s": lat, "cli_wall_s": wall,
                            "envoys_show_it": ok, "view": view})
            print(f"change {k + 1}/{changes} {kind:8s}: all {len(lat)} ACKed {lat[-1] * 1000:6.0f} ms after commit "
                  f"(median Envoy {statistics.median(lat) * 1000:.0f} ms; CLI process {wall:.2f} s); "
                  f"Envoys show it: {ok}", flush=True)
        rss_server = rss_mb(serve.pid)
    finally:
        for p in procs:
            p.stop()
        serve.stop()
        shutil.rmtree(work, ignore_errors=True)
    return {"machine": m, "envoys": len(proxies), "changes": results, "initial_sync_s": initial_s,
            "envoy_rss_mb": rss_envoy, "server_rss_mb": rss_server, **summarize(results)}


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in ("all", "instance", "policy"):
        sel = [r for r in results if kind == "all" or r["kind"] == kind]
        alls = [r["all_acked_s"] for r in sel]
        each = [x for r in sel for x in r["per_envoy_s"]]
        out[kind] = {"n": len(sel), "all_p50": pct(alls, 50), "all_p99": pct(alls, 99),
                     "envoy_p50": pct(each, 50), "envoy_p99": pct(each, 99),
                     "cli_wall_p50": pct([r["cli_wall_s"] for r in sel], 50)}
    out["all_verified"] = all(r["envoys_show_it"] for r in results)
    return out


def report(res: dict[str, Any]) -> str:
    ms = 1000.0
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {machine_line(res['machine'])}.",
        f"{res['envoys']} real Envoy sidecars on one `meshgate serve`; initial sync (first Envoy started "
        f"to all ACKed) {res['initial_sync_s']:.1f} s; Envoy private memory {res['envoy_rss_mb']:.0f} MB each (median RssAnon; the binary's pages are shared), "
        f"server RSS {res['server_rss_mb']:.0f} MB.",
        "",
        "| change | changes | commit -> every Envoy ACKed, p50 / p99 | commit -> each Envoy ACKed (pooled), p50 / p99 "
        "| CLI process wall time (p50) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for kind, label in (("instance", "`instance add common` (EDS)"),
                        ("policy", "`policy allow/remove '*' -> extra` (CDS, EDS, RDS)"),
                        ("all", "all changes")):
        s = res[kind]
        if not s["n"]:
            continue
        lines.append(f"| {label} | {s['n']} | {s['all_p50'] * ms:.0f} / {s['all_p99'] * ms:.0f} ms "
                     f"| {s['envoy_p50'] * ms:.0f} / {s['envoy_p99'] * ms:.0f} ms | {s['cli_wall_p50']:.2f} s |")
    lines += ["", f"Every change checked in every Envoy's own stats afterwards: "
              f"{'yes' if res['all_verified'] else 'NO (see the per-change lines)'}. "
              "p99 over this few changes is their maximum."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--envoys", type=int, default=50)
    ap.add_argument("--changes", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="smoke size: 3 Envoys, 2 changes")
    ap.add_argument("--json", type=Path, help="also write every figure here")
    args, _ = ap.parse_known_args(argv)  # `python -m bench -- ...` passes every benchmark the same args
    if args.quick:
        args.envoys, args.changes = 3, 2
    res = run(args.envoys, args.changes)
    publish(res, report(res), args.json)
    return 0 if res["all_verified"] else 1


if __name__ == "__main__":
    sys.exit(main())
