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


def test_free_ports_avoid_the_ephemeral_range_and_repeats() -> None:
    """Listener ports are never what the kernel gives outgoing connections, and one
    process never hands out the same port twice in a row of picks."""
    from pathlib import Path

    from meshgate.fleet.envoy import LISTENER_PORTS, free_port

    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [free_port() for _ in range(500)]
    assert len(set(ports)) == len(ports)
    assert all(LISTENER_PORTS.start <= p < min(LISTENER_PORTS.stop, low) for p in ports)
