"""xDS scale: translation at 10,000 services, and 1,000 delta clients on one server.

    .venv/bin/python bench/xds_scale.py [--services 10000] [--instances 5] [--clients 1000] [--no-write]

1. Translate + serialize (in process, no gRPC): a World of S services x I
   instances, default deny, each service allowed to call the next three, one
   sidecar per service. Every sidecar's snapshot is built (the server builds
   them only for connected proxies; this is the upper bound). Then one
   instance is added and the change applied: thread CPU time, and how many
   resources were re-serialized and snapshots changed.
2. A fleet of C simulated delta clients (one asyncio process, ACKing every
   response like Envoy, subscribing EDS for the clusters it gets) against a
   real `meshgate serve` subprocess (plaintext loopback, real CA issuing every
   sidecar a certificate). C/5 services with 5 sidecars each; everyone may
   call `common`; each service is called by the next two. Timed from the CLI
   write's commit to each client's ACK: an instance added to `common` (every
   client) and to one service (its callers). Includes the server's store
   poll interval (150 ms). Server RSS from /proc.

Figures are printed and written to docs/benchmarks.md, sections "Translation" and
"Convergence (simulated)" (translation also at 1,000 services: --small-services).
Tests run a smoke-size version (tests/test_xds_bench_smoke.py), no timing asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from meshgate.model import Instance, Mesh, Policy, Proxy, Service, World  # noqa: E402
from meshgate.xds.state import ConfigState  # noqa: E402
from meshgate.xds.translate.tls import identity_secret, trust_bundle_secret  # noqa: E402
from meshgate.xds.worldpatch import patch  # noqa: E402

SECTION = "## Translation"
SECTION_FLEET = "## Convergence (simulated)"
_START_LOAD: tuple[float, float, float] | None = None


class PlaceholderSecrets:
    """Secrets without a CA (translation figures exclude certificate issuance)."""

    def secrets_for(self, proxy: Proxy, world: World, now: float) -> dict[str, Any]:
        return {"identity": identity_secret("cert", "key"), "trust-bundle": trust_bundle_secret("roots")}

    def next_refresh(self, now: float) -> float:
        return float("inf")

    def forget(self, proxy_name: str) -> None:
        return None


def scale_world(services: int, instances: int, callers: int = 3) -> World:
    names = [f"s{i:05d}" for i in range(services)]
    svc = {n: Service(n, port=8000 + i % 1000) for i, n in enumerate(names)}
    inst = []
    iid = 0
    for i, n in enumerate(names):
        for k in range(instances):
            iid += 1
            inst.append(Instance(iid, n, f"10.{i // 250}.{i % 250}.{k + 1}", 15006, 8080,
                                 proxy=f"{n}-p" if k == 0 else None))
    policies = tuple(
        Policy(f"to-{n}", "allow", tuple(names[(i - d) % services] for d in range(1, callers + 1)), n, seq=i)
        for i, n in enumerate(names)
    )
    proxies = {f"{n}-p": Proxy(f"{n}-p", "sidecar", service=n) for n in names}
    return World(revision=1, mesh=Mesh("example.org", default_action="deny"), services=svc,
                 instances=tuple(inst), proxies=proxies, policies=policies)


def translate_bench(services: int, instances: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    world = scale_world(services, instances)
    build_world_s = time.perf_counter() - t0
    # the options `meshgate serve` translates with: telemetry's access logs in every HCM and
    # TCP proxy, each proxy's keyed with its own telemetry key (so its listeners are its own)
    from meshgate.telemetry.service import Telemetry
    from meshgate.xds.runner import tune_gc

    tune_gc()  # as `meshgate serve` does
    options = Telemetry.translate_options(secret=os.urandom(32))
    state = ConfigState(world, secrets=PlaceholderSecrets(), options=options)
    c0, t0 = time.thread_time(), time.perf_counter()
    for name in world.proxies:
        state.track(name)
    full_s, full_cpu = time.perf_counter() - t0, time.thread_time() - c0
    resources = {id(r) for e in state.entries.values() for t in e.snapshot.resources.values() for r in t.values()}
    # what the server does for `meshgate instance add s00042 ...`: apply the revision's
    # row to the previous World (worldpatch), then re-plan what it affects
    row = {"id": 10**9, "service": f"s{min(42, services - 1):05d}", "address": "10.99.99.99", "inbound_port": 15006,
           "app_port": 8080, "weight": 1, "healthy": True, "proxy": None, "source": "cli",
           "created_at": 0.0, "disconnected_at": None}
    revision = [(world.revision + 1, [{"kind": "instances", "key": str(row["id"]), "op": "add",
                                       "before": None, "after": row}])]
    builds = state.cache.builds
    c0, t0 = time.thread_time(), time.perf_counter()
    patched = patch(world, state.index, {}, revision)
    assert patched is not None
    world2, index2, _, change = patched
    changed = state.set_world(world2, index=index2, change=change)
    one_s, one_cpu = time.perf_counter() - t0, time.thread_time() - c0
    assert len(world2.instances) == len(world.instances) + 1
    return {
        "services": services, "instances": services * instances, "proxies": len(world.proxies),
        "world_build_s": build_world_s, "full_s": full_s, "full_cpu_s": full_cpu,
        "distinct_resources": len(resources),
        "one_change_ms": one_s * 1000, "one_change_cpu_ms": one_cpu * 1000,
        "one_change_rebuilt_services": state.cache.builds - builds, "one_change_proxies": len(changed),
    }


# -- the fleet -----------------------------------------------------------------


def make_store(db: Path, services: int, per_service: int) -> dict[str, str]:
    """A store with `services` services x `per_service` sidecars (linked instances); tokens by proxy."""
    from meshgate.ca import create_keybox, initialize_ca
    from meshgate.store.db import open_store
    from meshgate.store.instances import add_instance
    from meshgate.store.mesh import create_mesh
    from meshgate.store.policies import add_policy
    from meshgate.store.proxies import add_proxy
    from meshgate.store.services import add_service
    from meshgate.store.txn import write

    engine = open_store(str(db), must_exist=False)
    with write(engine, "bench init") as w:
        create_mesh(w, "example.org", default_action="deny")
        initialize_ca(w, create_keybox(str(engine.url)), "example.org", time.time())
    names = [f"s{i:04d}" for i in range(services)]
    tokens: dict[str, str] = {}
    with write(engine, "bench fleet") as w:
        add_service(w, "common", port=7000)
        add_instance(w, "common", "127.0.0.1", 1, 7000)
        for n in names:
            add_service(w, n, port=8000)
        for i, n in enumerate(names):
            for k in range(per_service):
                p = f"{n}-{k}"
                tokens[p] = add_proxy(w, p, kind="sidecar", service=n)[1]
                add_instance(w, n, f"127.{i // 250}.{i % 250}.{k + 2}", 15006, 8080, proxy=p)
        add_policy(w, Policy("anyone-common", "allow", ("*",), "common"))
        for i, n in enumerate(names):
            callers = tuple(names[(i + d) % services] for d in (1, 2) if names[(i + d) % services] != n)
            if callers:
                add_policy(w, Policy(f"to-{n}", "allow", callers, n))
    engine.dispose()
    return tokens


class Client:
    def __init__(self, name: str, token: str) -> None:
        self.name = name
        self.token = token
        self.eds_seen: dict[str, str] = {}  # cluster -> version
        self.acks: list[tuple[float, set[str]]] = []  # (time of ACK, EDS names in it)
        self.synced = asyncio.Event()

    async def run(self, channel: Any, stop: asyncio.Event) -> None:
        from envoy.config.core.v3 import base_pb2
        from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

        from meshgate.xds import types

        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).DeltaAggregatedResources(
            metadata=[("authorization", f"Bearer {self.token}")])
        req = discovery_pb2.DeltaDiscoveryRequest
        await call.write(req(type_url=types.CLUSTER, node=base_pb2.Node(id=self.name, cluster="bench")))
        await call.write(req(type_url=types.SECRET, resource_names_subscribe=["identity", "trust-bundle"]))
        await call.write(req(type_url=types.LISTENER))
        rds = False
        reader = asyncio.ensure_future(stop.wait())
        while True:
            read = asyncio.ensure_future(call.read())
            done, _ = await asyncio.wait({read, reader}, return_when=asyncio.FIRST_COMPLETED)
            if reader in done:
                read.cancel()
                call.cancel()
                return
            resp = read.result()
            if resp is None or resp is __import__("grpc").aio.EOF:
                return
            names = {r.name for r in resp.resources}
            await call.write(req(type_url=resp.type_url, response_nonce=resp.nonce))
            now = time.perf_counter()
            if resp.type_url == types.CLUSTER:
                new = sorted(n for n in names if n.startswith("svc/") and n not in self.eds_seen)
                for n in new:
                    self.eds_seen[n] = ""
                if new:
                    await call.write(req(type_url=types.ENDPOINT, resource_names_subscribe=new))
            elif resp.type_url == types.LISTENER and not rds:
                rds = True
                await call.write(req(type_url=types.ROUTE, resource_names_subscribe=["outbound"]))
            elif resp.type_url == types.ROUTE:
                self.synced.set()
            elif resp.type_url == types.ENDPOINT:
                self.acks.append((now, names))


def add_instance_now(db: Path, service: str, address: str) -> float:
    """What `meshgate instance add` does; returns the moment its transaction committed."""
    from meshgate.store.db import open_store
    from meshgate.store.instances import add_instance
    from meshgate.store.txn import write

    engine = open_store(str(db))
    try:
        with write(engine, f"instance add {service} {address}:15006", "bench") as w:
            add_instance(w, service, address, 15006, 8080)
        return time.perf_counter()
    finally:
        engine.dispose()


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def fleet_run(port: int, tokens: dict[str, str], db: Path, callers_of: str,
                    probe: Any = None, server_pid: int | None = None) -> dict[str, Any]:
    import grpc

    clients = [Client(n, t) for n, t in tokens.items()]
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for _ in range(max(1, len(clients) // 100))]
    stop = asyncio.Event()
    t0 = time.perf_counter()
    tasks = [asyncio.ensure_future(c.run(channels[i % len(channels)], stop)) for i, c in enumerate(clients)]
    await asyncio.wait_for(asyncio.gather(*(c.synced.wait() for c in clients)), 300)
    initial_s = time.perf_counter() - t0
    await asyncio.sleep(1.0)  # let ACKs settle and the ledger flush

    server_cpu: list[float] = []

    async def change(address: str, service: str, expect: list[Client]) -> list[float]:
        for c in clients:
            c.acks.clear()
        idle = 0.0
        if server_pid:  # the server's background CPU (polls, ledger, keepalives) per second
            i0 = cpu_seconds(server_pid)
            await asyncio.sleep(1.0)
            idle = cpu_seconds(server_pid) - i0
        cpu0, w0 = (cpu_seconds(server_pid) if server_pid else 0.0), time.perf_counter()
        t_commit = await asyncio.to_thread(add_instance_now, db, service, address)
        deadline = t_commit + 60
        cluster = f"svc/{service}"
        while time.perf_counter() < deadline:
            if all(any(cluster in names for _, names in c.acks) for c in expect):
                break
            await asyncio.sleep(0.02)
        lat = [min(t for t, names in c.acks if cluster in names) - t_commit for c in expect
               if any(cluster in names for _, names in c.acks)]
        await asyncio.sleep(0.3)  # the ACKs reach the server
        if server_pid:
            server_cpu.append(max(0.0, cpu_seconds(server_pid) - cpu0 - idle * (time.perf_counter() - w0)))
        others = sum(1 for c in clients if c not in expect and c.acks)
        assert others == 0, f"{others} clients outside the change got EDS pushes"
        return lat

    everyone = await change("127.200.0.1", "common", clients)
    svc = callers_of
    callers = [c for c in clients if svc in {n[4:] for n in c.eds_seen}]
    some = await change("127.200.0.2", svc, callers)
    probed = await asyncio.to_thread(probe) if probe is not None else {}
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    for ch in channels:
        await ch.close()
    return {"initial_sync_s": initial_s, "everyone": everyone, "callers": some, "callers_n": len(callers),
            "server_cpu_s": server_cpu, **probed}


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def fleet_bench(clients: int) -> dict[str, Any]:
    from meshgate.fleet.envoy import free_port

    per = 5 if clients >= 10 else 1
    services = max(1, clients // per)
    with tempfile.TemporaryDirectory() as d:
        db = Path(d) / "fleet.db"
        t0 = time.perf_counter()
        tokens = make_store(db, services, per)
        setup_s = time.perf_counter() - t0
        port, admin = free_port(), free_port()
        log = open(Path(d) / "serve.log", "wb")  # noqa: SIM115
        server = subprocess.Popen(
            [str(Path(sys.executable).parent / "meshgate"), "--db", str(db), "serve", "--listen",
             f"127.0.0.1:{port}", "--insecure-plaintext-loopback", "--admin", f"127.0.0.1:{admin}",
             "--log-level", "warning"], stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 30
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{admin}/healthz", timeout=1)  # noqa: S310
                    break
                except OSError as exc:
                    if time.time() > deadline or server.poll() is not None:
                        raise RuntimeError("meshgate serve did not start: "
                                           + (Path(d) / "serve.log").read_text()) from exc
                    time.sleep(0.1)
            rss_idle = rss_mb(server.pid)

            def probe() -> dict[str, Any]:
                info = json.loads(urllib.request.urlopen(  # noqa: S310
                    f"http://127.0.0.1:{admin}/xds/proxies", timeout=5).read())
                return {"rss_mb": rss_mb(server.pid), "streams": len(info["streams"]),
                        "last_apply_cpu_ms": info["last_apply_cpu_ms"], "last_load_cpu_ms": info["last_load_cpu_ms"]}

            out = asyncio.run(fleet_run(port, tokens, db, callers_of=f"s{min(7, services - 1):04d}", probe=probe,
                                        server_pid=server.pid))
            out.update(rss_idle_mb=rss_idle, clients=len(tokens), setup_s=setup_s)
            return out
        finally:
            server.terminate()
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()
            log.close()


# -- report ----------------------------------------------------------------------


def machine() -> str:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    load = ", ".join(f"{x:.1f}" for x in _START_LOAD or os.getloadavg())
    return (f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, {platform.system()} "
            f"{platform.release()}, load average at start {load}")


def _translate_rows(t: dict[str, Any]) -> list[str]:
    return [
        f"| full translate + serialize, {t['services']:,} services x {t['instances'] // t['services']} "
        f"instances, {t['proxies']:,} sidecars ({t['distinct_resources']:,} distinct resources), "
        f"best of {t.get('runs', 1)} | {t['full_s']:.2f} s ({t['full_cpu_s']:.2f} s CPU) | <= 5 s |",
        f"| {t['services']:,} services: one instance added, server CPU to apply | {t['one_change_cpu_ms']:.1f} ms "
        f"({t['one_change_rebuilt_services']} service re-serialized, {t['one_change_proxies']} snapshots changed) "
        "| <= 20 ms |",
    ]


def report(t: dict[str, Any], f: dict[str, Any] | None, small: dict[str, Any] | None = None) -> str:
    """Two sections of docs/benchmarks.md: translation (`small` is an extra, smaller size) and
    convergence with simulated clients."""
    lines = [
        SECTION, "",
        f"Measured {time.strftime('%Y-%m-%d')} on {machine()}, shared with other work. "
        "`make bench` (or `.venv/bin/python bench/xds_scale.py`) reproduces it. Translated with the "
        "options `meshgate serve` uses: telemetry access logs in every listener, each proxy's carrying "
        "its own telemetry key (so no two sidecars share a listener).", "",
        "| figure | value | target |", "| --- | --- | --- |",
        *(_translate_rows(small) if small is not None else []),
        *_translate_rows(t),
    ]
    if f is not None:
        per_proxy_kb = (f["rss_mb"] - f["rss_idle_mb"]) * 1024 / f["streams"] if f["streams"] else float("nan")
        lines += [
            "", SECTION_FLEET, "",
            "Measured with `bench/xds_scale.py` on the same machine and run as the translation figures.", "",
            "| figure | value | target |", "| --- | --- | --- |",
            f"| {f['clients']:,} delta clients: initial sync (connect to all ACKed) | {f['initial_sync_s']:.1f} s | |",
            f"| change affecting everyone ({len(f['everyone'])} clients), commit -> ACK p50 / p99 "
            f"| {pct(f['everyone'], 50) * 1000:.0f} / {pct(f['everyone'], 99) * 1000:.0f} ms | p99 <= 1 s |",
            f"| change affecting one service's callers ({f['callers_n']} clients), p50 / p99 "
            f"| {pct(f['callers'], 50) * 1000:.0f} / {pct(f['callers'], 99) * 1000:.0f} ms | |",
            f"| server CPU for the last change: read + apply the revision / re-plan (its own report) "
            f"| {f['last_load_cpu_ms']:.1f} / {f['last_apply_cpu_ms']:.1f} ms | <= 20 ms |",
            f"| server RSS with {f['streams']:,} streams (idle before); per connected proxy | {f['rss_mb']:.0f} MB "
            f"({f['rss_idle_mb']:.0f} MB); {per_proxy_kb:.0f} KB | <= 500 MB |",
            "", "Commit -> ACK includes the server's store poll interval (150 ms) and the "
            "clients' own CPU (all in one Python process on the same cores).",
        ]
    return "\n".join(lines) + "\n"


def write_section(text: str, path: Path = ROOT / "docs" / "benchmarks.md") -> None:
    """Replace each `## ` section of `text` in the document (or append it), keeping the others."""
    doc = path.read_text() if path.exists() else "# Benchmarks\n\nFigures from `make bench`, per benchmark.\n"
    for chunk in ("\n" + text).split("\n## ")[1:]:
        section = "## " + chunk.rstrip("\n") + "\n"
        heading = section.split("\n", 1)[0]
        if heading + "\n" in doc:
            head, rest = doc.split(heading + "\n", 1)
            nxt = rest.find("\n## ")
            tail = rest[nxt + 1:] if nxt >= 0 else ""
            doc = head + section + ("\n" + tail if tail else "")
        else:
            doc = doc.rstrip("\n") + "\n\n" + section
    path.write_text(doc)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--services", type=int, default=10000)
    ap.add_argument("--small-services", type=int, default=1000, help="also translate at this size (0 skips)")
    ap.add_argument("--instances", type=int, default=5)
    ap.add_argument("--clients", type=int, default=1000, help="0 skips the fleet part")
    ap.add_argument("--repeat", type=int, default=3, help="translate runs; the fastest is reported")
    ap.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    ap.add_argument("--quick", action="store_true", help="smoke size (300/100 services, 20 clients), no write")
    args, _ = ap.parse_known_args(argv)  # `python -m bench -- ...` passes every benchmark the same args
    if args.quick:
        args.services, args.small_services, args.clients, args.repeat, args.no_write = 300, 100, 20, 1, True
    global _START_LOAD
    _START_LOAD = os.getloadavg()

    def best(services: int) -> dict[str, Any]:
        runs = [translate_bench(services, args.instances) for _ in range(max(1, args.repeat))]
        return {**min(runs, key=lambda r: r["full_s"]), "runs": len(runs)}

    small = best(args.small_services) if args.small_services else None
    t = best(args.services)
    f = fleet_bench(args.clients) if args.clients else None
    text = report(t, f, small)
    print(text)
    if not args.no_write:
        write_section(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
