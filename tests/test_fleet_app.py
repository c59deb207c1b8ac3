"""The demo/test app: echo, status codes, and calls through an outbound hop."""

from __future__ import annotations

import http.client
import json

from meshgate.fleet.app import App


def _get(port: int, path: str, host: str = "x") -> tuple[int, dict]:  # type: ignore[type-arg]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers={"host": host})
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


def test_echo_and_status() -> None:
    with App("orders") as app:
        status, body = _get(app.port, "/a/b?c=1")
        assert status == 200
        assert body["service"] == "orders" and body["path"] == "/a/b?c=1"
        status, body = _get(app.port, "/status/503")
        assert status == 503 and body["service"] == "orders"


def test_call_goes_to_outbound_with_host_of_target() -> None:
    # The "outbound" here is another app standing in for the sidecar listener.
    with App("sidecar-stand-in") as hop, App("web", outbound=("127.0.0.1", hop.port)) as web:
        status, body = _get(web.port, "/call/orders/items")
        assert status == 200
        assert body["called"] == "orders"
        assert body["upstream"]["headers"]["host"] == "orders"
        assert body["upstream"]["path"] == "/items"
