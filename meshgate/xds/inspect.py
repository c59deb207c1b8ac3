"""What the server would send a proxy, as JSON: `meshgate proxy config`.

The same translation, cache and versions as the server, so the versions shown
are the ones `proxy status` reports. Secrets are redacted: private keys
exist only inside the running server.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from google.protobuf import json_format

from meshgate.errors import NotFound
from meshgate.model import World
from meshgate.xds import types
from meshgate.xds.cache import ResourceCache
from meshgate.xds.resources import Resource
from meshgate.xds.secrets import RedactedSecrets
from meshgate.xds.translate import translate_proxy
from meshgate.xds.translate.generated import DEFAULT_OPTIONS, Options


def proxy_resources(world: World, name: str, options: Options = DEFAULT_OPTIONS) -> list[Resource]:
    if name not in world.proxies:
        raise NotFound(f'proxy "{name}" not found')
    cache = ResourceCache()
    out = [cache.intern(g) for g in translate_proxy(world, name, options=options)]
    secrets = RedactedSecrets().secrets_for(world.proxies[name], world, time.time())
    for sname, secret in sorted(secrets.items()):
        out.append(cache.intern_bytes(types.SECRET, sname, secret.SerializeToString(deterministic=True)))
    return out


def resource_json(r: Resource) -> dict[str, Any]:
    msg = types.MESSAGE[r.type_url].FromString(r.body)
    return {
        "name": r.name,
        "version": r.version,
        "sources": list(r.sources),
        "resource": json_format.MessageToDict(msg, preserving_proto_field_name=True),
    }


def proxy_config(world: World, name: str, only: Iterable[str] | None = None) -> dict[str, Any]:
    """{"proxy", "revision", "cds": [...], "eds": [...], ...} in push order."""
    wanted = set(only) if only else set(types.BY_SHORT)
    resources = proxy_resources(world, name)
    out: dict[str, Any] = {"proxy": name, "revision": world.revision}
    for t in types.PUSH_ORDER:
        short = types.SHORT[t]
        if short in wanted:
            out[short] = [resource_json(r) for r in sorted(resources, key=lambda r: r.name) if r.type_url == t]
    return out
