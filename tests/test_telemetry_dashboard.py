"""The dashboard in headless Chromium, driven over the DevTools protocol.

Real data: `meshgate serve` with two Envoys bootstrapped by `meshgate proxy
bootstrap` and counted traffic with denials (telemetry_support.serve_stack).
The page must load from the admin port alone (no other origin), draw the
services and the denied web -> orders edge, show each proxy's xDS state
(ACK per type), certificate expiry and the mesh CA's, list the denials with
their rule ids; a screenshot is saved to tests/artifacts/dashboard.png.
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
from telemetry_support import SERVE_TRAFFIC, serve_stack

from meshgate.fleet.envoy import free_port
from tests.mesh_kit import wait_for

pytestmark = pytest.mark.envoy
ARTIFACTS = Path(__file__).parent / "artifacts"
TOTAL = sum(n for _, _, n in SERVE_TRAFFIC) + 1  # and serve_stack's warm-up request


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The whole product (meshgate serve + two bootstrapped Envoys) with counted traffic."""
    with serve_stack(tmp_path_factory.mktemp("dashboard")) as stack:
        wait_for("telemetry in the admin API", lambda: [
            e for e in stack.get("/api/edges")["edges"]
            if e["callee"] == "orders" and e["requests_total"] == TOTAL and e["denied_total"] == 6])
        wait_for("denials in the store", lambda: len(stack.get("/api/denials")["denials"]) == 8)
        yield f"http://{stack.admin}"


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
            proxyRows: Object.fromEntries([...document.querySelectorAll('#proxies tbody tr')]
                .map(tr => [tr.cells[0].textContent, [...tr.cells].map(c => c.textContent)])),
            caExpiry: document.querySelector('#summary-mesh b')?.textContent,
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
    # 3 of 24 requests were 503: 87.5% success, drawn as a failing edge
    assert state["traffic"] == [["web->orders", "bad"]], state
    stroke, dash = state["deniedStroke"]
    assert stroke == "rgb(214, 69, 65)" and dash not in ("none", ""), state["deniedStroke"]
    assert state["proxies"] == ["orders-1", "web-1"], state
    for name, cells in state["proxyRows"].items():
        assert cells[3] == "connected", (name, cells)
        assert "cds ACK" in cells[4] and "lds ACK" in cells[4] and "NACK" not in cells[4], cells
        assert cells[6].startswith("in "), cells  # certificate expiry, in the future
    assert state["caExpiry"].startswith("in "), state["caExpiry"]
    rules = {row[5] for row in state["denials"]}
    assert {"no-admin", "(default deny)", "audit watch"} <= rules, state["denials"]
    (edge_row,) = state["edgesRow"]
    assert edge_row[:2] == ["web", "orders"] and edge_row[-1] == str(TOTAL), edge_row
    # every asset came from the admin port itself: no CDN, no other origin
    assert state["resources"], "the page fetched nothing"
    assert all(r.startswith(admin_url + "/") for r in state["resources"]), state["resources"]
    assert state["status"].startswith("updated"), state["status"]
