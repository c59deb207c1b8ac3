"""The admin HTTP port: Prometheus `/metrics`, a JSON API, and the dashboard.

    GET /                 dashboard (one HTML page; JS and CSS from /static, no CDN)
    GET /metrics          Prometheus text format (the server's own registry)
    GET /api/edges        one row per caller -> callee edge (`meshgate top` reads this)
    GET /api/services     per service, with the store's services and gateways as nodes
    GET /api/proxies      per proxy: ADS status per type (ACK/NACK), certificate expiry;
                          and the mesh CA certificates' expiry
    GET /api/denials      recent denied attempts (?since=SECONDS&limit=N), newest first
    GET /api/failures     recent failed requests (memory only)

It runs on the asyncio loop of the gRPC server; store reads run in a worker
thread. It binds 127.0.0.1 unless told otherwise (`start_admin`).
"""

from __future__ import annotations

import asyncio
import json
import time
from importlib import resources
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import Engine, select

from meshgate.store.db import reading
from meshgate.telemetry import denials as denial_store
from meshgate.telemetry.hub import TelemetryHub
from meshgate.telemetry.metrics import ControlPlaneMetrics

STATIC_FILES = {"dashboard.js": "application/javascript", "dashboard.css": "text/css"}
_SECURITY_HEADERS = {
    # Everything the page uses comes from this server: no CDN, no inline script.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "style-src 'self'; script-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
MAX_LIMIT = 5000

HUB: web.AppKey[TelemetryHub] = web.AppKey("hub", TelemetryHub)
ENGINE: web.AppKey[Any] = web.AppKey("engine", object)
METRICS: web.AppKey[ControlPlaneMetrics] = web.AppKey("metrics", ControlPlaneMetrics)


def _static(name: str) -> bytes:
    return resources.files("meshgate.telemetry").joinpath("static", name).read_bytes()


def _json(data: Any) -> web.Response:
    return web.Response(text=json.dumps(data, default=str), content_type="application/json")


def _int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(float(raw))
    except ValueError:
        raise web.HTTPBadRequest(text=f"{name}: not a number: {raw!r}") from None
    if not lo <= value <= hi:
        raise web.HTTPBadRequest(text=f"{name}: must be between {lo} and {hi}")
    return value


async def dashboard(request: web.Request) -> web.Response:
    return web.Response(body=_static("dashboard.html"), content_type="text/html",
                        charset="utf-8")


async def static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in STATIC_FILES:
        raise web.HTTPNotFound()
    return web.Response(body=_static(name), content_type=STATIC_FILES[name], charset="utf-8")


async def metrics_text(request: web.Request) -> web.Response:
    body = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def edges(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    return _json({"window_seconds": hub.window, "at": time.time(), "edges": hub.edges()})


def _store_nodes(engine: Engine) -> list[dict[str, Any]]:
    from meshgate.store.schema import proxies, services

    with reading(engine) as conn:
        out = [{"service": r.name, "kind": "service", "protocol": r.protocol}
               for r in conn.execute(select(services.c.name, services.c.protocol))]
        out += [{"service": r.name, "kind": "gateway", "protocol": "http"}
                for r in conn.execute(select(proxies.c.name).where(proxies.c.kind == "edge"))]
    return out


async def services_view(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    rows = {r["service"]: dict(r, kind="service") for r in hub.services()}
    engine = request.app[ENGINE]
    if engine is not None:
        for node in await asyncio.to_thread(_store_nodes, engine):
            row = rows.setdefault(node["service"], {"service": node["service"], "requests": 0})
            row.update(kind=node["kind"], protocol=node["protocol"])
    return _json({"window_seconds": hub.window, "services": sorted(
        rows.values(), key=lambda r: r["service"])})


def _store_proxies(engine: Engine) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Proxies with their per-type xDS state, and the CA certificates in use."""
    from meshgate.store.schema import ca_certs, proxies, proxy_status

    with reading(engine) as conn:
        cas = [{"fingerprint": r.fingerprint, "status": r.status, "not_after": r.not_after}
               for r in conn.execute(select(ca_certs.c.fingerprint, ca_certs.c.status,
                                            ca_certs.c.not_after)
                                     .where(ca_certs.c.status != "retired"))]
        rows = {r.name: {"proxy": r.name, "kind": r.kind, "service": r.service,
                         "revoked": bool(r.revoked), "connected": False, "types": {}}
                for r in conn.execute(select(proxies.c.name, proxies.c.kind, proxies.c.service,
                                             proxies.c.revoked))}
        for st in conn.execute(select(proxy_status)):
            m = st._mapping
            row = rows.setdefault(m["proxy"], {"proxy": m["proxy"], "kind": None,
                                               "service": None, "revoked": False,
                                               "connected": False, "types": {}})
            row["connected"] = row["connected"] or bool(m["connected"])
            nacked = m["nack_version"] is not None and (
                m["acked_at"] is None or (m["nack_at"] or 0) > m["acked_at"])
            if nacked:
                state = "NACK"
            elif m["acked_version"] is not None and m["acked_version"] == m["sent_version"]:
                state = "ACK"
            else:
                state = "pending" if m["sent_version"] else "none"
            row["types"][m["type"]] = {
                "state": state, "sent_version": m["sent_version"],
                "acked_version": m["acked_version"], "acked_at": m["acked_at"],
                "nack_detail": m["nack_detail"] if nacked else None,
                "last_seen": m["last_seen"],
            }
    return list(rows.values()), cas


async def proxies_view(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    metrics = request.app[METRICS]
    engine = request.app[ENGINE]
    stored, cas = (await asyncio.to_thread(_store_proxies, engine)) if engine is not None \
        else ([], [])
    rows = {r["proxy"]: r for r in stored}
    for t in hub.proxy_rows():
        row = rows.setdefault(t["proxy"], {"proxy": t["proxy"], "kind": None,
                                           "service": t["service"], "revoked": False,
                                           "connected": False, "types": {}})
        row["service"] = row["service"] or t["service"]
        row["stats_connected"] = t["stats_connected"]
        row["last_push_at"] = t["last_push_at"]
        row["envoy_cert_expiry"] = t["cert_expiry"]
    for name, row in rows.items():
        row["cert_expiry"] = metrics.cert_not_after.get(name) or row.get("envoy_cert_expiry")
    return _json({"at": time.time(), "proxies": sorted(rows.values(), key=lambda r: r["proxy"]),
                  "ca": cas})


async def denials_view(request: web.Request) -> web.Response:
    limit = _int_param(request, "limit", 100, 1, MAX_LIMIT)
    since_s = _int_param(request, "since", 0, 0, 10 * 365 * 86400)
    since = time.time() - since_s if since_s else None
    engine = request.app[ENGINE]
    if engine is None:
        rows = [d for d in request.app[HUB].denials(limit) if since is None or d["at"] >= since]
    else:
        rows = await asyncio.to_thread(denial_store.read, engine, since=since, limit=limit)
    return _json({"denials": rows})


async def failures_view(request: web.Request) -> web.Response:
    limit = _int_param(request, "limit", 100, 1, MAX_LIMIT)
    return _json({"failures": request.app[HUB].failures(limit)})


@web.middleware
async def _headers(request: web.Request, handler: Any) -> web.StreamResponse:
    resp: web.StreamResponse = await handler(request)
    for k, v in _SECURITY_HEADERS.items():
        resp.headers.setdefault(k, v)
    return resp


def make_app(hub: TelemetryHub, engine: Engine | None = None,
             metrics: ControlPlaneMetrics | None = None) -> web.Application:
    """The admin application; `engine` adds the store's view (proxies, denials)."""
    app = web.Application()
    add_routes(app, hub, engine, metrics)
    return app


def add_routes(app: web.Application, hub: TelemetryHub, engine: Engine | None = None,
               metrics: ControlPlaneMetrics | None = None) -> None:
    """Mount the dashboard, /metrics and /api/* on an existing application
    (`meshgate serve`'s admin app); call before the app starts."""
    if metrics is None:
        metrics = ControlPlaneMetrics(hub)
    else:
        metrics.attach_hub(hub)
    app.middlewares.append(_headers)
    app[HUB] = hub
    app[ENGINE] = engine
    app[METRICS] = metrics
    app.router.add_get("/", dashboard)
    app.router.add_get("/static/{name}", static)
    app.router.add_get("/metrics", metrics_text)
    app.router.add_get("/api/edges", edges)
    app.router.add_get("/api/services", services_view)
    app.router.add_get("/api/proxies", proxies_view)
    app.router.add_get("/api/denials", denials_view)
    app.router.add_get("/api/failures", failures_view)


async def start_admin(app: web.Application, host: str = "127.0.0.1",
                      port: int = 18001) -> web.AppRunner:
    """Serve `app` on host:port on the running loop; `await runner.cleanup()` stops it."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    return runner
