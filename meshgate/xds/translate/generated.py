"""What translation produces: named protobuf messages that know where they came from."""

from __future__ import annotations

from collections.abc import Callable, Hashable
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
    """Per-deployment additions to every proxy's config (telemetry plugs in here).

    `per_proxy`, when set, gives each proxy its own options (telemetry's access
    logs carry that proxy's key): `proxy_plan` translates with `for_proxy(name)`.
    It must be pure (the same name always gives the same options). `variant`
    tells per-proxy options apart where translation memoizes across proxies.
    """

    http_access_log: tuple[accesslog_pb2.AccessLog, ...] = field(default=())
    tcp_access_log: tuple[accesslog_pb2.AccessLog, ...] = field(default=())
    per_proxy: Callable[[str], Options] | None = field(default=None, compare=False)
    variant: str = ""

    def for_proxy(self, name: str) -> Options:
        return self if self.per_proxy is None else self.per_proxy(name)

    def memo_key(self) -> Hashable | None:
        """Tells apart options that may translate differently (for WorldIndex.memo);
        None for one proxy's own options: what they give is not shared, keep none of it."""
        return None if self.variant else id(self)


DEFAULT_OPTIONS = Options()
