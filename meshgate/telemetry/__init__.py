"""Telemetry: stats and access logs pushed by Envoy, aggregated, served.

    hub = TelemetryHub(proxy_service=..., denial_writer=DenialWriter(engine))
    register(grpc_aio_server, hub)             # metrics + access-log receivers, next to ADS
    metrics = ControlPlaneMetrics(hub)         # the xDS server reports pushes/ACKs/NACKs here
    app = make_app(hub, engine, metrics)       # /metrics, /api/*, dashboard (aiohttp)

Envoy-side config: `envoy_config.bootstrap_stats_sink` (bootstrap) and
`envoy_config.denied_or_failed_access_log` (each HCM). Names resolve lazily so
that CLI commands importing a submodule stay fast.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ControlPlaneMetrics", "DenialWriter", "Retention", "TelemetryHub", "make_app",
           "register"]

_WHERE = {
    "TelemetryHub": "meshgate.telemetry.hub",
    "register": "meshgate.telemetry.receivers",
    "ControlPlaneMetrics": "meshgate.telemetry.metrics",
    "DenialWriter": "meshgate.telemetry.denials",
    "Retention": "meshgate.telemetry.denials",
    "make_app": "meshgate.telemetry.admin",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'meshgate.telemetry' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
