"""Idle control plane: `meshgate serve` CPU and memory with 0 and with 1,000 proxies connected.

    .venv/bin/python bench/idle_cpu.py [--clients 1000] [--seconds 20] [--quick]

A store with C sidecars (C/5 services x 5, as bench/xds_scale.py builds it,
whose simulated delta clients are reused: one asyncio process, ACKing every
response like Envoy) and one `meshgate serve` subprocess (plaintext loopback).
Nothing changes during the measurement. The server's CPU time (user + system,
from /proc/<pid>/stat) is read over `--seconds` of idleness twice: with no
proxy connected, then with all C connected and synced (after the ledger has
written their rows). Its RSS is read at both points: the difference divided
by C is the memory per connected proxy (its stream, ledger rows, certificate,
per-proxy snapshot of shared resources).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import ServeProcess, cpu_seconds, machine, machine_line, publish, rss_mb  # noqa: E402
from bench.xds_scale import Client, make_store  # noqa: E402


def idle_window(pid: int, seconds: float) -> float:
    """CPU seconds `pid` used per second of wall time over `seconds`."""
    c0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return (cpu_seconds(pid) - c0) / (time.monotonic() - t0)


async def connected_idle(port: int, tokens: dict[str, str], pid: int, seconds: float,
                         admin: Any, settle: float) -> dict[str, Any]:
    import grpc

    clients = [Client(n, t) for n, t in tokens.items()]
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for _ in range(max(1, len(clients) // 100))]
    stop = asyncio.Event()
    tasks = [asyncio.ensure_future(c.run(channels[i % len(channels)], stop)) for i, c in enumerate(clients)]
    try:
        t0 = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(c.synced.wait() for c in clients)), 300)
        sync_s = time.perf_counter() - t0
        await asyncio.sleep(settle)  # last ACKs in, ledger rows written
        cpu = await asyncio.to_thread(idle_window, pid, seconds)
        streams = json.loads(await asyncio.to_thread(admin, "/xds/proxies"))["streams"]
        return {"connected": len(streams), "sync_s": sync_s, "cpu": cpu, "rss_mb": rss_mb(pid)}
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        for ch in channels:
            await ch.close()


def run(clients: int, seconds: float, settle: float = 3.0) -> dict[str, Any]:
    """`settle`: seconds to wait after start-up and after the clients synced, before measuring."""
    m = machine()
    per = 5 if clients >= 10 else 1
    with tempfile.TemporaryDirectory(prefix="meshgate-idle-") as d:
        work = Path(d)
        db = work / "idle.db"
        tokens = make_store(db, max(1, clients // per), per)
        with ServeProcess(db, work, plaintext=True) as serve:
            time.sleep(settle)  # past start-up work
            rss0 = rss_mb(serve.pid)
            cpu0 = idle_window(serve.pid, seconds)
            busy = asyncio.run(connected_idle(serve.port, tokens, serve.pid, seconds, serve.admin, settle))
    n = busy["connected"]
    return {"machine": m, "seconds": seconds, "clients": n, "sync_s": busy["sync_s"],
            "cpu_idle_0": cpu0, "cpu_idle_n": busy["cpu"], "rss_0_mb": rss0, "rss_n_mb": busy["rss_mb"],
            "cpu_per_proxy_us_per_s": (busy["cpu"] - cpu0) / n * 1e6 if n else float("nan"),
            "rss_per_proxy_kb": (busy["rss_mb"] - rss0) * 1024 / n if n else float("nan")}


def report(res: dict[str, Any]) -> str:
    n = res["clients"]
    return "\n".join([
        f"Measured {time.strftime('%Y-%m-%d')} on {machine_line(res['machine'])}.",
        f"`meshgate serve` idle for {res['seconds']:g} s per measurement; {n:,} simulated delta clients "
        f"synced in {res['sync_s']:.2f} s.",
        "",
        "| proxies connected | server CPU (share of one core) | server RSS |",
        "| ---: | ---: | ---: |",
        f"| 0 | {res['cpu_idle_0'] * 100:.1f}% | {res['rss_0_mb']:.0f} MB |",
        f"| {n:,} | {res['cpu_idle_n'] * 100:.1f}% | {res['rss_n_mb']:.0f} MB |",
        "",
        f"Per connected proxy: {res['cpu_per_proxy_us_per_s']:.1f} µs of server CPU per second idle, "
        f"{res['rss_per_proxy_kb']:.0f} KB of server memory.",
    ])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=20.0, help="length of each idle measurement")
    ap.add_argument("--quick", action="store_true", help="smoke size: 10 clients, 2 s windows")
    ap.add_argument("--json", type=Path, help="also write every figure here")
    args, _ = ap.parse_known_args(argv)  # `python -m bench -- ...` passes every benchmark the same args
    if args.quick:
        args.clients, args.seconds = 10, 2.0
    res = run(args.clients, args.seconds)
    publish(res, report(res), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
