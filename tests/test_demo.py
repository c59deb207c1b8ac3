"""`meshgate demo`: the front door, run for real (short mode) and judged step by step.

One run of `meshgate demo --short --keep --json` as a user would start it:
real `meshgate serve`, apps, and Envoys started by `meshgate proxy run`. After
the tour it keeps running until Ctrl-C (SIGINT to the demo only, as a
terminal sends it to the foreground process); then the JSON summary is
checked step by step, and every process the demo started must be gone.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from meshgate.fleet.demo import DemoOptions, run_demo
from meshgate.fleet.demo_fleet import Fleet
from meshgate.fleet.procs import alive

pytestmark = pytest.mark.envoy

MESHGATE = str(Path(sys.executable).parent / "meshgate")
READY = "The fleet keeps running"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    errlog = tmp_path_factory.mktemp("demo") / "demo.err"
    with open(errlog, "wb") as err:
        proc = subprocess.Popen([MESHGATE, "demo", "--short", "--keep", "--json"], stdout=subprocess.PIPE,
                                stderr=err, env={**os.environ, "COLUMNS": "200"})
    try:
        deadline = time.monotonic() + 150
        while READY not in errlog.read_text(errors="replace"):
            assert proc.poll() is None, f"demo exited with {proc.returncode}:\n{errlog.read_text()}"
            assert time.monotonic() < deadline, f"no '{READY}' after 150s:\n{errlog.read_text()}"
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    text = errlog.read_text(errors="replace")
    assert proc.returncode == 0, text
    summary = json.loads(out)
    summary["_output"] = text
    return summary


def step(demo: dict[str, Any], key: str) -> dict[str, Any]:
    [s] = [s for s in demo["steps"] if s["key"] == key]
    assert s["ok"], f"{key}: {s['summary']}\n{demo['_output']}"
    return s


def test_every_step_passed_and_the_tour_was_shown(demo: dict[str, Any]) -> None:
    keys = [s["key"] for s in demo["steps"]]
    assert keys == ["valid-token", "no-token", "forbidden-hop", "policy-check", "scale-up",
                    "scale-down", "ca-rotation", "proxy-status", "top"]
    assert demo["ok"] and demo["error"] is None, demo["_output"]
    out = demo["_output"]
    for heading in ("1. A request with a valid JWT", "9. Traffic as the control plane saw it",
                    "All 9 steps passed", "$ meshgate proxy run orders-2", "$ meshgate ca rotate"):
        assert heading in out
    assert "mgt_" not in out  # join tokens are never printed (shown as "$TOKEN")
    assert demo["dashboard"].startswith("http://127.0.0.1:") and demo["edge"].startswith("https://shop.example.com:")


def test_edge_and_policy_results(demo: dict[str, Any]) -> None:
    ok = step(demo, "valid-token")["data"]
    assert ok["status"] == 200 and [h for h, _ in ok["hops"]] == ["web", "orders", "payments"]
    assert ok["caller_seen"] == "spiffe://example.org/svc/orders"
    assert step(demo, "no-token")["data"]["status"] == 401
    denied = step(demo, "forbidden-hop")["data"]
    assert (denied["status"], denied["upstream_status"], denied["rule"]) == (403, 403, "web-never-pays")
    decisions = step(demo, "policy-check")["data"]["decisions"]
    assert (decisions["web"]["allowed"], decisions["web"]["rule"]) == (False, "web-never-pays")
    assert (decisions["orders"]["allowed"], decisions["orders"]["rule"]) == (True, "mesh-to-payments")


def test_scaling_and_rotation_results(demo: dict[str, Any]) -> None:
    up = step(demo, "scale-up")["data"]
    assert set(up["served"]) == {"orders-1", "orders-2"} and up["failed"] == 0
    down = step(demo, "scale-down")["data"]
    assert down["exit_code"] == 0 and down["failed"] == 0 and down["requests"] > 0
    rot = step(demo, "ca-rotation")["data"]
    assert rot["phases"][-1] == "idle" and "reissuing" in rot["phases"]
    assert rot["failed"] == 0 and rot["requests"] > 0, rot["failures"]


def test_status_and_top_results(demo: dict[str, Any]) -> None:
    st = step(demo, "proxy-status")["data"]
    assert {"public", "web-1", "orders-1", "payments-1"} <= set(st["proxies"])
    assert st["in_sync"] and st["nacked"] == []
    edges = step(demo, "top")["data"]["edges"]
    assert {"web->orders", "orders->payments"} <= set(edges)


def test_ctrl_c_left_no_process_and_removed_the_workdir(demo: dict[str, Any]) -> None:
    pids = demo["pids"]
    # server, gateway, 4 apps + 4 `proxy run` (orders-2 included), and the Envoy of each
    assert len(pids) >= 15, pids
    assert [p for p in pids if alive(p)] == []
    assert not Path(demo["workdir"]).exists() and not demo["kept_workdir"]


def test_a_failure_during_setup_stops_what_was_started(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception after the server and sidecars started: reported, every process stopped."""
    started: list[Fleet] = []

    def broken_gateway(self: Fleet) -> Any:
        raise RuntimeError("the gateway would not start")

    monkeypatch.setattr(Fleet, "start_gateway", broken_gateway)
    result = run_demo(DemoOptions(short=True, workdir=tmp_path / "work"), None, on_fleet=started.append)
    assert not result.ok and result.steps == []
    assert result.error == "RuntimeError: the gateway would not start"
    assert len(result.pids) >= 7  # meshgate serve, 3 apps, 3 `proxy run` (+ Envoys that got going)
    assert [p for p in result.pids if alive(p)] == []
    assert result.kept_workdir and (tmp_path / "work" / "logs").is_dir()  # for a look at what happened


def test_ctrl_c_during_setup_stops_everything_and_is_raised(tmp_path: Path) -> None:
    fleets: list[Fleet] = []

    def interrupt_once_serving() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if fleets and fleets[0].server is not None and len(fleets[0].children.items) >= 3:
                import _thread

                _thread.interrupt_main()
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=interrupt_once_serving, daemon=True)
    watcher.start()
    with pytest.raises(KeyboardInterrupt):
        run_demo(DemoOptions(short=True, workdir=tmp_path / "work"), None, on_fleet=fleets.append)
    watcher.join(5)
    pids = fleets[0].children.pids()
    assert len(pids) >= 3
    assert [p for p in pids if alive(p)] == []
