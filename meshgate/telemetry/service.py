"""Telemetry inside `meshgate serve`: one object that plugs into the xDS server.

    telemetry = Telemetry(engine)                           # hub, denial writer, metrics
    server = XdsServer(engine, servicers=[telemetry.register], metrics=telemetry.metrics,
                       options=telemetry.server_options(), ...)
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
from collections.abc import Callable, Mapping
from typing import Any

import grpc
from aiohttp import web
from sqlalchemy import Engine, select

from meshgate.durations import parse_duration
from meshgate.errors import ValidationError, Violation
from meshgate.store.db import reading
from meshgate.store.telemetry_key import load_key_secret
from meshgate.telemetry import admin, receivers
from meshgate.telemetry.denials import DenialWriter, Retention
from meshgate.telemetry.envoy_config import (
    denied_or_failed_access_log,
    denied_tcp_access_log,
    with_initial_metadata,
)
from meshgate.telemetry.hub import TelemetryHub
from meshgate.telemetry.keys import KEY_HEADER, key_matches, telemetry_key
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


def token_authenticator(auth: Any, known_proxy: Callable[[str], bool], key_secret: bytes) -> Any:
    """The hub's `authenticate(node_id, metadata, stream)` for `meshgate serve`.

    Stats streams carry the join token (bootstrap `initial_metadata`): the xDS
    check (`auth.authenticate(metadata, node_id)`, raising on failure) applies.
    Access-log streams are configured in listeners: they carry the proxy's
    telemetry key (KEY_HEADER, HMAC of its name under `key_secret`), which must be
    the key of the node id the stream claims, and that proxy must be known and
    not revoked (`known_proxy(node_id)`).
    """
    def check(node_id: str, metadata: Mapping[str, str], stream: str) -> bool:
        if stream != "access-log":
            auth.authenticate(list(metadata.items()), node_id)
            return True
        presented = metadata.get(KEY_HEADER)
        if not presented:
            raise PermissionError(f"no {KEY_HEADER} for proxy {node_id!r}")
        if not key_matches(key_secret, node_id, presented):
            raise PermissionError(f"{KEY_HEADER} is not the key of proxy {node_id!r}")
        if not known_proxy(node_id):
            raise PermissionError(f"unknown or revoked proxy {node_id!r}")
        return True

    return check


def keyed_options(base: Any, key_secret: bytes) -> Any:
    """`base` plus, for each proxy, meshgate's access logs carrying that proxy's key."""
    from dataclasses import replace

    from meshgate.fleet.bootstrap import XDS_CLUSTER

    http_log = denied_or_failed_access_log(XDS_CLUSTER, ACCESS_LOG_NAME)
    tcp_log = denied_tcp_access_log(XDS_CLUSTER, ACCESS_LOG_NAME)

    # Not cached: 10,000 proxies' options would hold ~55 MB of access-log messages,
    # and building one costs ~10 us (a re-plan of that proxy costs far more).
    def for_proxy(name: str) -> Any:
        key = telemetry_key(key_secret, name)
        md = ((KEY_HEADER, key),)
        return replace(
            base,
            per_proxy=None,
            variant=key,
            http_access_log=(*base.http_access_log, with_initial_metadata(http_log, md)),
            tcp_access_log=(*base.tcp_access_log, with_initial_metadata(tcp_log, md)),
        )

    return replace(base, per_proxy=for_proxy)


class Telemetry:
    def __init__(self, engine: Engine, *, retention: Retention | None = None,
                 window_seconds: float = 60.0, key_secret: bytes | None = None) -> None:
        self.engine = engine
        # the secret behind every proxy's telemetry key, shared by the replicas through the store
        self.key_secret = key_secret if key_secret is not None else load_key_secret(engine)
        self.writer = DenialWriter(engine, retention or retention_from_env())
        self.hub = TelemetryHub(window_seconds=window_seconds, denial_writer=self.writer)
        self.metrics = ControlPlaneMetrics(self.hub)
        self._tasks: list[asyncio.Task[None]] = []

    # ---- wiring ---------------------------------------------------------------------------

    @staticmethod
    def translate_options(base: Any = None, *, secret: bytes | None = None,
                          same_key: str | None = None) -> Any:
        """Translation options adding meshgate's access logs to every HCM and TCP proxy.

        With `secret`, each proxy's logs carry its own telemetry key (what `meshgate
        serve` sends). With `same_key`, every proxy's carry that one value: the same
        shape, for checks that do not need the real keys (Envoy validation groups
        proxies with equal config). With neither, no key: the server refuses such
        streams (for tests of the log filters alone)."""
        from dataclasses import replace

        from meshgate.fleet.bootstrap import XDS_CLUSTER
        from meshgate.xds.translate.generated import DEFAULT_OPTIONS

        base = base or DEFAULT_OPTIONS
        if secret is not None:
            return keyed_options(base, secret)
        md = ((KEY_HEADER, same_key),) if same_key else ()
        return replace(
            base,
            http_access_log=(*base.http_access_log,
                             denied_or_failed_access_log(XDS_CLUSTER, ACCESS_LOG_NAME, initial_metadata=md)),
            tcp_access_log=(*base.tcp_access_log,
                            denied_tcp_access_log(XDS_CLUSTER, ACCESS_LOG_NAME, initial_metadata=md)),
        )

    def server_options(self, base: Any = None) -> Any:
        """The options `meshgate serve` translates with: access logs keyed with the store's secret."""
        return self.translate_options(base, secret=self.key_secret)

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

        self.hub.auth_check = token_authenticator(server.auth, known_proxy, self.key_secret)
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
