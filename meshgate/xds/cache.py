"""The resource cache: content-addressed, shared by every proxy.

- `intern` serializes a generated resource and returns THE Resource for that
  content: equal bytes are one object, whichever proxy asked.
- `service_resources` builds a service's `svc/<name>` cluster and endpoints
  (one DNS cluster when an instance has a host name) only when its inputs (mesh, service, instances) changed since last time, so
  a change to one service re-serializes that service alone.

The cache knows nothing of gRPC or streams.
"""

from __future__ import annotations

import weakref
from typing import Any

from meshgate.xds.resources import Resource, content_version
from meshgate.xds.translate import service_parts
from meshgate.xds.translate.generated import Generated
from meshgate.xds.translate.index import WorldIndex


class ResourceCache:
    def __init__(self) -> None:
        # keyed by content AND provenance: two sidecars' `local-app` can be the same
        # bytes yet come from different instances
        self._interned: weakref.WeakValueDictionary[tuple[str, str, str, tuple[str, ...]], Resource] = (
            weakref.WeakValueDictionary()
        )
        self._services: dict[str, tuple[Any, tuple[Resource, ...]]] = {}
        self.builds = 0  # service parts built (not reused): for tests and the benchmark

    def intern(self, g: Generated) -> Resource:
        body = g.message.SerializeToString(deterministic=True)
        return self.intern_bytes(g.type_url, g.name, body, g.sources, g.refs)

    def intern_bytes(
        self,
        type_url: str,
        name: str,
        body: bytes,
        sources: tuple[str, ...] = (),
        refs: tuple[tuple[str, str], ...] = (),
    ) -> Resource:
        key = (type_url, name, content_version(body), sources)
        got = self._interned.get(key)
        if got is not None and got.body == body:
            return got
        res = Resource.from_bytes(type_url, name, body, sources, refs)
        self._interned[key] = res
        return res

    def service_resources(self, index: WorldIndex, service: str) -> tuple[Resource, ...]:
        world = index.world
        key = (world.mesh, world.services[service], index.instances_of(service))
        hit = self._services.get(service)
        if hit is not None and hit[0] == key:
            return hit[1]
        parts = tuple(self.intern(g) for g in service_parts(index, service))
        self._services[service] = (key, parts)
        self.builds += 1
        return parts

    def forget_services(self, keep: set[str] | dict[str, Any]) -> None:
        """Drop cached parts of services that no longer exist."""
        for name in [n for n in self._services if n not in keep]:
            del self._services[name]

    def __len__(self) -> int:
        return len(self._interned)
