"""`meshgate demo`: a secured mesh of real Envoys on this machine, and a tour of it.

    result = run_demo(DemoOptions(short=True))        # quiet; or pass a rich Console
    result.ok, [s.key for s in result.steps if not s.ok], result.pids

From nothing, in a temporary directory: the store and its CA, `meshgate
serve`, an edge gateway and three services (web -> orders -> payments), each
a tiny app with its sidecar started by `meshgate proxy run`, with policies and
a JWT provider (its key made here). Then the tour (demo_steps.TOUR). Every
process it started is stopped by PID at the end, on errors and on Ctrl-C too.
"""

from __future__ import annotations

import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from meshgate.fleet.client import Traffic
from meshgate.fleet.demo_fleet import CHAIN_PATH, GATEWAY, Fleet, describe, wait_until
from meshgate.fleet.demo_show import Show, StepResult
from meshgate.fleet.demo_steps import TOUR, Pace

SIDECARS = (("web", "web-1"), ("orders", "orders-1"), ("payments", "payments-1"))


@dataclass(frozen=True)
class DemoOptions:
    short: bool = False  # less traffic per step (the test suite)
    keep: bool = False  # leave the fleet running until Ctrl-C
    workdir: Path | None = None  # default: a new temporary directory, removed at the end
    grace_seconds: int = 2  # the mesh's instance grace (scale down)


@dataclass
class DemoResult:
    ok: bool
    steps: list[StepResult] = field(default_factory=list)
    seconds: float = 0.0
    workdir: str = ""
    kept_workdir: bool = False
    pids: list[int] = field(default_factory=list)
    dashboard: str = ""
    edge: str = ""
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def setup(fleet: Fleet, show: Show) -> None:
    """The fleet, from nothing; FleetError (with the failing process's log) if it does not come up."""
    with show.stage("Building the mesh with the CLI: CA, 3 services, 4 policies, a JWT provider, an edge gateway"):
        commands = fleet.build_mesh()
    for c in commands:
        show.note(c)
    with show.stage(f"Starting meshgate serve: xDS over TLS on {fleet.server_address}, "
                    f"admin and dashboard on {fleet.admin_address}"):
        fleet.start_server()
        fleet.wait_server()
    names = ", ".join(p for _, p in SIDECARS)
    with show.stage(f"Starting the apps, their sidecars ({names}) and the edge gateway: real Envoys"):
        for service, proxy in SIDECARS:
            fleet.start_instance(service, proxy)
        fleet.start_gateway()

        def registered() -> bool:
            fleet.check_children()
            return {p for _, p in SIDECARS} <= set(fleet.registered())

        wait_until(registered, 60, "the sidecars to register their instances", 0.2)
    orders = fleet.instances["orders-1"]
    show.note(f"{orders.app_command()}   # the app, and its sidecar:")
    show.note(fleet.shown("proxy", "add", "orders-1", "--service", "orders",
                          "--outbound-port", str(orders.outbound_port)))
    show.note(orders.command(fleet.server_address) + "   # likewise web-1, payments-1")
    show.note(fleet.shown("proxy", "run", GATEWAY, "--token", "mgt_", "--server", fleet.server_address)
              + "   # the edge gateway")
    with show.stage("Waiting for every proxy to get its config and certificates over xDS"):

        def chain() -> bool:
            fleet.check_children()
            return fleet.edge_get(CHAIN_PATH, token=fleet.token).status == 200

        wait_until(chain, 60, "a first request through edge -> web -> orders -> payments", 0.2)


def tour(fleet: Fleet, show: Show, pace: Pace) -> list[StepResult]:
    results = []
    for n, (key, title, step) in enumerate(TOUR, 1):
        show.heading(n, title)
        t0 = time.monotonic()
        try:
            res = step(fleet, show, pace)
        except Exception as exc:  # noqa: BLE001 - a failed step is reported, the tour goes on
            res = StepResult(key, title, False, describe(exc))
        res.key, res.title, res.seconds = key, title, round(time.monotonic() - t0, 2)
        show.result(res.ok, res.summary)
        results.append(res)
    return results


def _keep_running(fleet: Fleet, show: Show) -> None:
    show.banner("The fleet keeps running (Ctrl-C stops every process it started).")
    show.note(f"dashboard:    http://{fleet.admin_address}/")
    show.note(f"edge gateway: https://shop.example.com:{fleet.edge_port}  (127.0.0.1; trust mesh-root.pem)")
    show.note(f"cd {fleet.workdir} && export MESHGATE_DB=$PWD/meshgate.db MESHGATE_ADMIN={fleet.admin_address}")
    show.note(f"then: meshgate top · meshgate proxy status · {fleet.curl(CHAIN_PATH)}")
    show.note("a request every half second keeps the figures moving")
    with Traffic(lambda: (fleet.edge_get(CHAIN_PATH, token=fleet.token).status == 200, ""), pause=0.5):
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:  # the way out of --keep: stop everything, report as usual
            show.note("Ctrl-C: stopping")


@contextmanager
def _uninterrupted() -> Iterator[None]:
    """SIGINT/SIGTERM ignored meanwhile (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def run_demo(opts: DemoOptions = DemoOptions(), console: Console | None = None,
             on_fleet: Callable[[Fleet], None] | None = None) -> DemoResult:
    """Set up, tour, (with `keep`: wait for Ctrl-C,) stop; the result. KeyboardInterrupt
    during set-up or the tour (Ctrl-C, or SIGTERM turned into it by the CLI) stops the
    fleet and is re-raised; any other failure is in the result."""
    show = Show(console)
    t0 = time.monotonic()
    temporary = opts.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="meshgate-demo-")) if temporary else Path(opts.workdir or ".")
    workdir.mkdir(parents=True, exist_ok=True)
    fleet = Fleet(workdir, grace_seconds=opts.grace_seconds)
    result = DemoResult(ok=False, workdir=str(workdir))
    if on_fleet is not None:
        on_fleet(fleet)
    show.banner("meshgate demo: a secured service mesh of real Envoys on this machine",
                f"everything in {workdir}; every process is stopped at the end")
    try:
        setup(fleet, show)
        result.dashboard = f"http://{fleet.admin_address}/"
        result.edge = f"https://shop.example.com:{fleet.edge_port}"
        result.steps = tour(fleet, show, Pace.short() if opts.short else Pace())
        result.ok = all(s.ok for s in result.steps)
        failed = [s for s in result.steps if not s.ok]
        show.banner(f"All {len(result.steps)} steps passed in {time.monotonic() - t0:.0f}s."
                    if not failed else f"{len(failed)} of {len(result.steps)} steps failed: "
                    + ", ".join(s.key for s in failed))
        if opts.keep:
            _keep_running(fleet, show)
    except KeyboardInterrupt:
        result.error = "interrupted"
        raise
    except Exception as exc:  # noqa: BLE001 - reported, then everything is stopped
        result.error = describe(exc)
        show.result(False, f"the demo could not go on: {result.error}")
    finally:
        with _uninterrupted():  # a second Ctrl-C must not leave processes behind
            fleet.close()
        result.pids = fleet.children.pids()  # after: a `proxy run` may have started Envoy meanwhile
        result.seconds = round(time.monotonic() - t0, 1)
        keep_dir = not temporary or not result.ok
        result.kept_workdir = keep_dir
        if keep_dir:
            show.note(f"stopped {len(result.pids)} processes; logs and database kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
            show.note(f"stopped {len(result.pids)} processes; removed {workdir}")
    return result


__all__ = ["DemoOptions", "DemoResult", "GATEWAY", "run_demo"]
