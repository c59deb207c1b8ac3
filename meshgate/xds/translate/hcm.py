"""HTTP connection managers, hardened the same way everywhere (meshgate.policy.hardening)."""

from __future__ import annotations

from collections.abc import Sequence

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.listener.v3 import listener_components_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)

from meshgate.policy.hardening import apply_path_hardening
from meshgate.xds.translate.common import ads_source, pack
from meshgate.xds.translate.limits import apply_request_limits

HCM_FILTER = "envoy.filters.network.http_connection_manager"
ROUTER_FILTER = "envoy.filters.http.router"


def router_filter() -> hcm.HttpFilter:
    return hcm.HttpFilter(name=ROUTER_FILTER, typed_config=pack(router_pb2.Router()))


def http_manager(
    stat_prefix: str,
    *,
    route_config: route_pb2.RouteConfiguration | None = None,
    rds_name: str | None = None,
    http_filters: Sequence[hcm.HttpFilter] = (),
    access_log: Sequence[accesslog_pb2.AccessLog] = (),
    forward_client_identity: bool = False,
    local_reply: hcm.LocalReplyConfig | None = None,
) -> listener_components_pb2.Filter:
    """An HCM network filter; `http_filters` run before the router, in order."""
    manager = hcm.HttpConnectionManager(
        stat_prefix=stat_prefix,
        codec_type=hcm.HttpConnectionManager.AUTO,
        http_filters=[*http_filters, router_filter()],
        access_log=list(access_log),
    )
    if local_reply is not None:
        manager.local_reply_config.CopyFrom(local_reply)
    if route_config is not None:
        manager.route_config.CopyFrom(route_config)
    else:
        manager.rds.CopyFrom(hcm.Rds(config_source=ads_source(), route_config_name=rds_name or ""))
    if forward_client_identity:
        # The app sees the caller's SPIFFE id in x-forwarded-client-cert; a caller cannot forge it.
        manager.forward_client_cert_details = hcm.HttpConnectionManager.SANITIZE_SET
        manager.set_current_client_cert_details.uri = True
    apply_path_hardening(manager)
    apply_request_limits(manager)  # header size and time, stream idle (limits.py)
    return listener_components_pb2.Filter(name=HCM_FILTER, typed_config=pack(manager))
