"""What applying a file would do, writing nothing.

    p = make_plan(engine, docs, prune=False)
    p.changes      # objects added / changed / removed (document fields)
    p.proxies      # per proxy: which xDS resources would be added, changed, removed
    p.access       # access-matrix cells whose answer changes

The planned World is the real one: the file is applied through the same
repository functions inside a transaction that is then rolled back, and the
World is loaded inside it. Every proxy is translated with the current and the
planned World and the resource versions (hashes of the serialized bytes, as
the xDS server computes them) are compared. Secrets are not predicted: they
come from the CA and edge certificates, not from config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine

from meshgate.config.apply import Change, dry_run, run
from meshgate.config.source import Document
from meshgate.model import World
from meshgate.store.world import load_world_conn
from meshgate.xds import types

_RANK = {"none": 0, "some": 1, "all": 2}


@dataclass
class ProxyDiff:
    proxy: str
    kind: str
    status: str  # changed | new | removed
    added: list[str] = field(default_factory=list)  # "cds svc/orders"
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"proxy": self.proxy, "kind": self.kind, "status": self.status, "added": self.added,
                "changed": self.changed, "removed": self.removed, "error": self.error}


@dataclass
class Plan:
    changes: list[Change]
    proxies: list[ProxyDiff]
    access: list[dict[str, Any]]
    before: World
    after: World

    def as_dict(self) -> dict[str, Any]:
        return {
            "changes": [c.as_dict() for c in self.changes],
            "proxies": [p.as_dict() for p in self.proxies],
            "access": self.access,
        }


def resource_versions(world: World, proxy: str, index: Any = None,
                      options: Any = None) -> dict[tuple[str, str], str]:
    """(short type, name) -> version of every resource translation gives `proxy`, with
    the options `meshgate serve` uses. By default listeners with access logs carry the
    placeholder telemetry key (envoy_check.server_options); for the exact versions the
    server sends, pass `Telemetry.translate_options(secret=<the store's secret>)`."""
    from meshgate.config.envoy_check import server_options
    from meshgate.xds.resources import Resource
    from meshgate.xds.translate import translate_proxy

    options = options if options is not None else server_options()
    return {
        (types.short(g.type_url), g.name): Resource.from_generated(g).version
        for g in translate_proxy(world, proxy, index=index, options=options)
    }


def proxy_diffs(before: World, after: World) -> list[ProxyDiff]:
    """Every proxy whose resources differ between the two Worlds (new and removed ones too)."""
    from meshgate.config.envoy_check import server_options
    from meshgate.errors import MeshgateError
    from meshgate.xds.translate import WorldIndex

    options = server_options()
    index_before, index_after = WorldIndex(before), WorldIndex(after)
    out: list[ProxyDiff] = []
    for name in sorted(set(before.proxies) | set(after.proxies)):
        proxy = after.proxies.get(name) or before.proxies[name]
        status = "new" if name not in before.proxies else "removed" if name not in after.proxies else "changed"
        d = ProxyDiff(name, proxy.kind, status)
        try:
            old = resource_versions(before, name, index_before, options) if name in before.proxies else {}
            new = resource_versions(after, name, index_after, options) if name in after.proxies else {}
        except MeshgateError as exc:
            d.error = str(exc)
            out.append(d)
            continue
        label = {k: f"{k[0]} {k[1]}" for k in (*old, *new)}
        d.added = sorted(label[k] for k in new if k not in old)
        d.removed = sorted(label[k] for k in old if k not in new)
        d.changed = sorted(label[k] for k in new if k in old and old[k] != new[k])
        if d.added or d.removed or d.changed or status != "changed":
            out.append(d)
    return out


def access_changes(before: World, after: World) -> list[dict[str, Any]]:
    """Cells of the access matrix whose answer changes: newly allowed (more access)
    or newly denied (less). Pairs of a removed service are left out (the removal
    shows in the object changes); pairs of a new service appear when it lets anyone in."""
    from meshgate.policy.matrix import access_matrix

    old = {(c.caller, c.target): c for c in access_matrix(before)}
    out: list[dict[str, Any]] = []
    for c in access_matrix(after):
        prev = old.get((c.caller, c.target))
        was = prev.access if prev is not None else "none"
        if was == c.access:
            continue
        change = "newly allowed" if _RANK[c.access] > _RANK[was] else "newly denied"
        out.append({"from": c.caller, "to": c.target, "before": prev.access if prev else None,
                    "after": c.access, "change": change, "rules": list(c.rules)})
    return out


def make_plan(engine: Engine, docs: list[Document], *, prune: bool) -> Plan:
    with dry_run(engine) as w:
        before = load_world_conn(w.conn)
        outcome = run(w, docs, prune=prune)
        after = load_world_conn(w.conn)
    return Plan(outcome.changes, proxy_diffs(before, after), access_changes(before, after), before, after)
