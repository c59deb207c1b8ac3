"""The dashboard in headless Chromium, driven over the DevTools protocol.

Real data: the two-sidecar mesh of telemetry_support sends counted traffic
(with denials); the page must load from the admin port alone (no other
origin), draw both services and the denied web -> orders edge, list the
proxies and the denials, and a screenshot is saved to tests/artifacts/.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from telemetry_support import TRAFFIC, TwoSidecars, make_store

from meshgate.fleet.envoy import free_port
from meshgate.store.db import open_store
from meshgate.telemetry.runner import TelemetryServer

pytestmark = pytest.mark.envoy
ARTIFACTS = Path(__file__).parent / "artifacts"


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("dashboard")
    db = tmp / "meshgate.db"
    rbac = make_store(db)
    engine = open_store(str(db))
    ts = TelemetryServer(engine=engine).start()
    sidecars = TwoSidecars(tmp, ts.grpc_port, rbac)
    try:
        sidecars.start()
        for path, _status, n in TRAFFIC:
            sidecars.send(path, n)
        total = sum(n for _, _, n in TRAFFIC)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            edges = ts.call(ts.hub.edges)
            if edges and edges[0]["requests_total"] == total and edges[0]["denied_total"] == 6:
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"telemetry never arrived: {ts.call(ts.hub.edges)}")
        ts.flush_denials()
        yield ts.admin_url
    finally:
        sidecars.stop()
        ts.stop()
        engine.dispose()


class Cdp:
    """A minimal DevTools protocol client over aiohttp's websocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.next_id = 0

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        msg_id = self.next_id
        await self.ws.send_json({"id": msg_id, "method": method, "params": params})
        while True:
            msg = await asyncio.wait_for(self.ws.receive(), 20)
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise AssertionError(f"devtools connection closed: {msg}")
            data = json.loads(msg.data)
            if data.get("id") == msg_id:
                if "error" in data:
                    raise AssertionError(f"{method}: {data['error']}")
                return data.get("result", {})

    async def eval(self, expr: str) -> Any:
        res = await self.send("Runtime.evaluate", expression=expr, returnByValue=True,
                              awaitPromise=True)
        if "exceptionDetails" in res:
            raise AssertionError(f"{expr}: {res['exceptionDetails']}")
        return res["result"].get("value")


@pytest.fixture(scope="module")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    binary = _chromium()
    if binary is None:
        pytest.skip("chromium is not installed and could not be installed here "
                    "(CI installs it with .ci/chromium.sh: apt-get install chromium)")
    port = free_port()
    profile = tmp_path_factory.mktemp("chromium-profile")
    proc = subprocess.Popen(
        [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
         f"--remote-debugging-port={port}", "--remote-debugging-address=127.0.0.1",
         "--window-size=1400,1100", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/version", timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"chromium did not start (exit {proc.poll()})") from None
                time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


async def _drive(devtools_port: int, url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{devtools_port}/json/list", timeout=5) as r:
        pages = [t for t in json.loads(r.read()) if t["type"] == "page"]
    async with aiohttp.ClientSession() as session, session.ws_connect(
            pages[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
        cdp = Cdp(ws)
        await cdp.send("Page.enable")
        await cdp.send("Emulation.setDeviceMetricsOverride", width=1400, height=1100,
                       deviceScaleFactor=1, mobile=False)
        await cdp.send("Page.navigate", url=url)
        deadline = time.monotonic() + 20
        while await cdp.eval("document.body && document.body.dataset.loaded") != "1":
            if time.monotonic() > deadline:
                status = await cdp.eval("document.getElementById('status')?.textContent")
                raise AssertionError(f"dashboard never loaded; status: {status!r}")
            await asyncio.sleep(0.1)
        state = await cdp.eval("""(() => ({
            services: [...document.querySelectorAll('#graph [data-service]')]
                .map(n => n.dataset.service).sort(),
            denied: [...document.querySelectorAll('#graph .edge-denied')]
                .map(e => [e.dataset.edge, e.dataset.denied]),
            traffic: [...document.querySelectorAll('#graph .edge')]
                .map(e => [e.dataset.edge, e.dataset.health]),
            deniedStroke: (() => { const p = document.querySelector('#graph .edge-denied path');
                return p ? [getComputedStyle(p).stroke, getComputedStyle(p).strokeDasharray] : null; })(),
            proxies: [...document.querySelectorAll('#proxies tbody tr')]
                .map(tr => tr.cells[0].textContent),
            denials: [...document.querySelectorAll('#denials tbody tr')]
                .map(tr => [...tr.cells].map(c => c.textContent)),
            edgesRow: [...document.querySelectorAll('#edges tbody tr')]
                .map(tr => [...tr.cells].map(c => c.textContent)),
            resources: performance.getEntriesByType('resource').map(e => e.name),
            status: document.getElementById('status').textContent,
        }))()""")
        shot = await cdp.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        state["png"] = base64.b64decode(shot["data"])
        return state


def test_dashboard_shows_services_and_the_denied_edge(admin_url: str, chromium: int) -> None:
    state = asyncio.run(_drive(chromium, admin_url + "/"))
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "dashboard.png").write_bytes(state.pop("png"))

    assert state["services"] == ["billing", "orders", "web"], state
    assert state["denied"] == [["web->orders", "6"]], state
    # 5 of 37 requests were 503: 86% success, drawn as a failing edge
    assert state["traffic"] == [["web->orders", "bad"]], state
    stroke, dash = state["deniedStroke"]
    assert stroke == "rgb(214, 69, 65)" and dash not in ("none", ""), state["deniedStroke"]
    assert state["proxies"] == ["orders-1", "web-1"], state
    rules = {row[5] for row in state["denials"]}
    assert "deny-admin" in rules and "(default deny)" in rules and "audit audit-watch" in rules, state
    (edge_row,) = state["edgesRow"]
    assert edge_row[:2] == ["web", "orders"] and edge_row[-1] == "37", edge_row
    # every asset came from the admin port itself: no CDN, no other origin
    assert state["resources"], "the page fetched nothing"
    assert all(r.startswith(admin_url + "/") for r in state["resources"]), state["resources"]
    assert state["status"].startswith("updated"), state["status"]
