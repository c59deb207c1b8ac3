"""Telemetry inside `meshgate serve`: one object that plugs into the xDS server.

    telemetry = Telemetry(engine)                           # hub, denial writer, metrics
    server = XdsServer(engine, servicers=[telemetry.register], metrics=telemetry.metrics,
                       options=telemetry.translate_options(), ...)
    telemetry.bind(server)            # stream auth and proxy/route names from the xDS server
    await server.start(...)
    await telemetry.start()           # denial writer, CA expiry refresh
    admin = make_admin_app(server, extra=[telemetry.add_routes])
    ...
    await telemetry.stop()            # final denial flush

Denial retention comes from `Retention` (default 100,000 rows, 7 days),
overridable with MESHGATE_DENIALS_MAX_ROWS and MESHGATE_DENIALS_MAX_AGE (e.g. 2d).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from typing import Any

import grpc
from aiohttp import web
from sqlalchemy import Engine, select

from meshgate.durations import parse_duration
from meshgate.errors import ValidationError, Violation
from meshgate.store.db import reading
from meshgate.telemetry import admin, receivers
from meshgate.telemetry.denials import DenialWriter, Retention
from meshgate.telemetry.envoy_config import denied_or_failed_access_log, denied_tcp_access_log
from meshgate.telemetry.hub import TelemetryHub
from meshgate.telemetry.metrics import ControlPlaneMetrics

log = logging.getLogger("meshgate.telemetry")

ACCESS_LOG_NAME = "meshgate"
CA_REFRESH_SECONDS = 30.0


def retention_from_env(env: Mapping[str, str] | None = None) -> Retention:
    """Retention with MESHGATE_DENIALS_MAX_ROWS / MESHGATE_DENIALS_MAX_AGE applied."""
    env = os.environ if env is None else env
    bad: list[Violation] = []
    rows, age = Retention().max_rows, Retention().max_age_seconds
    raw_rows = env.get("MESHGATE_DENIALS_MAX_ROWS")
    if raw_rows:
        if raw_rows.strip().isdigit() and int(raw_rows) >= 1:
            rows = int(raw_rows)
        else:
            bad.append(Violation("MESHGATE_DENIALS_MAX_ROWS",
                                 f"{raw_rows!r} is not a whole number >= 1"))
    raw_age = env.get("MESHGATE_DENIALS_MAX_AGE")
    if raw_age:
        try:
            age = parse_duration(raw_age)
            if age <= 0:
                raise ValueError(f"{raw_age!r} must be more than 0s")
        except ValueError as exc:
            bad.append(Violation("MESHGATE_DENIALS_MAX_AGE", str(exc)))
    if bad:
        raise ValidationError(bad, "telemetry settings")
    return Retention(max_rows=rows, max_age_seconds=age)


def token_authenticator(auth: Any, known_proxy: Any = None) -> Any:
    """Adapt the xDS join-token check (`auth.authenticate(metadata, node_id)`, raising
    on failure) to the hub's `authenticate(node_id, metadata, stream)`.

    Stats streams carry the token (bootstrap `initial_metadata`). Access-log
    streams are configured in listeners shared by every proxy of a service, so
    they cannot carry a per-proxy token: without one, the node id must name a
    known, unrevoked proxy (`known_proxy(node_id)`). A token, when present,
    is always checked.
    """
    def check(node_id: str, metadata: Mapping[str, str], stream: str) -> bool:
        if stream == "access-log" and "authorization" not in metadata:
            if known_proxy is None or known_proxy(node_id):
                return True
            raise PermissionError(f"unknown or revoked proxy {node_id!r}")
        auth.authenticate(list(metadata.items()), node_id)
        return True

    return check


class Telemetry:
    def __init__(self, engine: Engine, *, retention: Retention | None = None,
                 window_seconds: float = 60.0) -> None:
        self.engine = engine
        self.writer = DenialWriter(engine, retention or retention_from_env())
        self.hub = TelemetryHub(window_seconds=window_seconds, denial_writer=self.writer)
        self.metrics = ControlPlaneMetrics(self.hub)
        self._tasks: list[asyncio.Task[None]] = []

    # ---- wiring ---------------------------------------------------------------------------

    @staticmethod
    def translate_options(base: Any = None) -> Any:
        """Translation options adding meshgate's access logs to every HCM and TCP proxy."""
        from dataclasses import replace

        from meshgate.fleet.bootstrap import XDS_CLUSTER
        from meshgate.xds.translate.generated import DEFAULT_OPTIONS

        base = base or DEFAULT_OPTIONS
        return replace(
            base,
            http_access_log=(*base.http_access_log,
                             denied_or_failed_access_log(XDS_CLUSTER, ACCESS_LOG_NAME)),
            tcp_access_log=(*base.tcp_access_log,
                            denied_tcp_access_log(XDS_CLUSTER, ACCESS_LOG_NAME)),
        )

    def bind(self, server: Any) -> None:
        """Take stream authentication and proxy/route names from the xDS server."""
        def world() -> Any:
            state = getattr(server, "state", None)
            return state.world if state is not None else None

        def known_proxy(node_id: str) -> bool:
            w = world()
            p = w.proxies.get(node_id) if w is not None else None
            return p is not None and not p.revoked

        def proxy_service(node_id: str) -> str | None:
            w = world()
            p = w.proxies.get(node_id) if w is not None else None
            if p is None:
                return None
            return p.service if p.kind == "sidecar" and p.service else p.name

        def route_service(route: str) -> str | None:
            w = world()
            if w is None:
                return None
            return next((r.service for r in w.routes if r.id == route), None)

        self.hub.auth_check = token_authenticator(server.auth, known_proxy)
        self.hub.proxy_service = proxy_service
        self.hub.route_service = route_service

    def register(self, server: grpc.aio.Server) -> None:
        receivers.register(server, self.hub)

    def add_routes(self, app: web.Application) -> None:
        admin.add_routes(app, self.hub, self.engine, self.metrics)

    # ---- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self.writer.run(), name="telemetry-denials"),
                       loop.create_task(self._ca_loop(), name="telemetry-ca")]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - stopping anyway
                pass
        self._tasks = []

    async def _ca_loop(self) -> None:
        while True:
            try:
                for fp, not_after in await asyncio.to_thread(self._ca_expiry):
                    self.metrics.set_ca_expiry(fp, not_after)
            except Exception:  # noqa: BLE001 - retried at the next refresh
                log.exception("reading CA expiry failed")
            await asyncio.sleep(CA_REFRESH_SECONDS)

    def _ca_expiry(self) -> list[tuple[str, float]]:
        from meshgate.store.schema import ca_certs

        with reading(self.engine) as conn:
            return [(r.fingerprint, r.not_after) for r in conn.execute(
                select(ca_certs.c.fingerprint, ca_certs.c.not_after)
                .where(ca_certs.c.status != "retired"))]
