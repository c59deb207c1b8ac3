"""The server's small HTTP admin: liveness and which proxies are connected.

    GET /healthz       200 "ok" while serving
    GET /xds/proxies   JSON: connected streams (proxy, mode, since) and last apply CPU time

Other features add routes to the same application (`extra` callbacks);
the telemetry dashboard and /metrics plug in there.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web

from meshgate.validation import split_host_port


def make_admin_app(server: Any, extra: Sequence[Callable[[web.Application], None]] = ()) -> web.Application:
    app = web.Application()

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def proxies(_: web.Request) -> web.Response:
        body = {"replica": server.replica, "streams": server.connected(),
                "last_apply_cpu_ms": round(server.last_apply_cpu_ms, 2),
                "last_load_cpu_ms": round(server.last_load_cpu_ms, 2)}
        return web.Response(text=json.dumps(body), content_type="application/json")

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/xds/proxies", proxies)
    for add in extra:
        add(app)
    return app


async def start_admin(app: web.Application, address: str) -> web.AppRunner:
    hp = split_host_port(address)
    if hp is None:
        raise ValueError(f"--admin: not HOST:PORT: {address!r}")
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, hp[0], hp[1]).start()
    return runner
