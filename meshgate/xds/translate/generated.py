"""What translation produces: named protobuf messages that know where they came from."""

from __future__ import annotations

from dataclasses import dataclass, field

from envoy.config.accesslog.v3 import accesslog_pb2
from google.protobuf.message import Message


@dataclass(frozen=True)
class Generated:
    """One xDS resource before serialization.

    `sources` names the user objects that produced it ("service:orders",
    "instance:10.0.0.7:15006", "policy:allow-web"), so a NACK can be traced
    back to them. `refs` are the (type URL, name) resources it needs from the
    same snapshot (a cluster's endpoints, a listener's route configuration).
    """

    type_url: str
    name: str
    message: Message
    sources: tuple[str, ...] = ()
    refs: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Options:
    """Per-deployment additions to every proxy's config (telemetry plugs in here)."""

    http_access_log: tuple[accesslog_pb2.AccessLog, ...] = field(default=())
    tcp_access_log: tuple[accesslog_pb2.AccessLog, ...] = field(default=())


DEFAULT_OPTIONS = Options()
