"""Applying revisions to the previous World instead of reloading it.

Every write records full rows in its revision (store/rows.py), so the
changes since the last World can be applied to it: one instance added at
10,000 services costs a few row reads instead of a 0.5 s reload. The result
is a new immutable World (and an index carried forward), equal to what
`load_world` would return; tests compare the two.

Only rows of services, instances, proxies, policies and the mesh are
patched. Anything else (CA rows, edge routes and certificates, JWT providers,
settings) or a row that is not complete makes `patch` return None and the
caller reloads the whole World.

Patching needs every revision after the World's, in order. The server
patches only where writers are serialized (store.txn.writers_serialized:
SQLite's BEGIN IMMEDIATE, PostgreSQL's advisory WRITE_LOCK): revision ids
are drawn under the lock, so they become visible in increasing order, and a
missing id below a visible one is a transaction that rolled back after
drawing it (normal on PostgreSQL, whose sequences are not transactional): a
hole that never fills, skipped (`ordered=True`). Without that guarantee a gap
may be a transaction not visible yet, and `patch` returns None.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
from collections.abc import Iterable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from sqlalchemy import Connection, select

from meshgate.model import Instance, World
from meshgate.store import schema
from meshgate.store.proxies import Credential
from meshgate.store.world import (
    instance_from_row,
    mesh_from_row,
    policy_from_row,
    proxy_from_row,
    service_from_row,
)
from meshgate.xds.translate.index import WorldIndex

PATCHED = {"services", "instances", "proxies", "policies", "mesh"}
_COLUMNS = {t: {c.name for c in schema.metadata.tables[t].columns} for t in PATCHED}


@dataclass(frozen=True)
class WorldChange:
    """What a patch touched, so the server re-plans only what depends on it."""

    full: bool = False  # mesh or policies changed: everything may depend on it
    services: frozenset[str] = frozenset()  # service rows added, changed or removed
    instance_services: frozenset[str] = frozenset()  # services whose instances changed
    proxies: frozenset[str] = frozenset()  # proxy rows added, changed or removed


def changes_since(conn: Connection, revision: int) -> list[tuple[int, list[dict[str, Any]]]]:
    r = schema.revisions
    rows = conn.execute(select(r.c.id, r.c.changes).where(r.c.id > revision).order_by(r.c.id))
    return [(int(row.id), json.loads(row.changes)) for row in rows]


def _row(change: dict[str, Any]) -> SimpleNamespace | None:
    after = change.get("after")
    if after is None:
        return None
    if not _COLUMNS[change["kind"]] <= set(after):
        raise ValueError("incomplete row")
    return SimpleNamespace(**after)


def patch(world: World, index: WorldIndex, creds: dict[str, Credential],
          revisions: Iterable[tuple[int, list[dict[str, Any]]]], *,
          ordered: bool = False) -> tuple[World, WorldIndex, dict[str, Credential], WorldChange] | None:
    """The World after `revisions` (every revision after world.revision, ascending), or None
    when only a full reload can say. `ordered`: revision ids become visible in increasing
    order (see the module doc), so a gap in them is a rolled-back transaction, not one
    still to come."""
    revisions = list(revisions)
    if not revisions:
        return world, index, creds, WorldChange()
    last = world.revision
    for rev_id, _ in revisions:
        if rev_id <= last or (rev_id != last + 1 and not ordered):
            return None  # a gap: maybe an id taken by a transaction we cannot see yet
        last = rev_id
    services = world.services
    proxies = world.proxies
    policies = world.policies
    mesh = world.mesh
    instances = list(world.instances)
    ids = [i.id for i in instances]
    changed_services: set[str] = set()
    changed_proxies: set[str] = set()
    inst_services: set[str] = set()
    inst_gone: set[int] = set()
    inst_new: dict[int, Instance] = {}
    full = False
    new_creds = creds
    try:
        for _, changes in revisions:
            for ch in changes:
                kind = ch.get("kind")
                if kind not in PATCHED:
                    return None
                row = _row(ch)
                before = ch.get("before") or {}
                if kind == "mesh":
                    if row is None:
                        return None
                    mesh, full = mesh_from_row(row), True
                elif kind == "policies":
                    full = True
                    pid = (row or SimpleNamespace(**before)).id
                    kept = [p for p in policies if p.id != pid]
                    if row is not None:
                        kept.append(policy_from_row(row))
                    policies = tuple(sorted(kept, key=lambda p: p.seq))
                elif kind == "services":
                    name = (row or SimpleNamespace(**before)).name
                    services = dict(services)
                    if row is None:
                        services.pop(name, None)
                    else:
                        services[name] = service_from_row(row)
                        services = dict(sorted(services.items()))
                    changed_services.add(name)
                elif kind == "proxies":
                    name = (row or SimpleNamespace(**before)).name
                    proxies = dict(proxies)
                    if new_creds is creds:
                        new_creds = dict(creds)
                    for h in [h for h, c in new_creds.items() if c.proxy == name]:
                        del new_creds[h]
                    if row is None:
                        proxies.pop(name, None)
                    else:
                        proxies[name] = proxy_from_row(row)
                        proxies = dict(sorted(proxies.items()))
                        new_creds[row.token_hash] = Credential(row.name, row.kind, bool(row.revoked), row.token_hash)
                    changed_proxies.add(name)
                elif kind == "instances":
                    iid = int((row or SimpleNamespace(**before)).id)
                    pos = bisect.bisect_left(ids, iid)
                    if pos < len(ids) and ids[pos] == iid:
                        inst_services.add(instances[pos].service)
                        del instances[pos], ids[pos]
                    inst_gone.add(iid)
                    inst_new.pop(iid, None)
                    if row is not None:
                        inst = instance_from_row(row)
                        pos = bisect.bisect_left(ids, iid)
                        instances.insert(pos, inst)
                        ids.insert(pos, iid)
                        inst_services.add(inst.service)
                        inst_new[iid] = inst
    except (ValueError, KeyError, TypeError, AttributeError):
        return None  # a row we cannot read: reload instead
    new_world = dataclasses.replace(
        world, revision=revisions[-1][0], mesh=mesh, services=services, proxies=proxies,
        policies=policies, instances=tuple(instances),
    )
    carried = _carry_index(index, new_world, inst_services, inst_gone, inst_new, full, changed_services)
    return new_world, carried, new_creds, WorldChange(
        full=full, services=frozenset(changed_services), instance_services=frozenset(inst_services),
        proxies=frozenset(changed_proxies),
    )


def _carry_index(old: WorldIndex, world: World, touched: set[str], gone: set[int],
                 new: dict[int, Instance], full: bool, changed_services: set[str]) -> WorldIndex:
    """A WorldIndex for `world` reusing the old one's groups where nothing changed
    (rebuilding them would cost O(all instances) per change)."""
    seeds: dict[str, Any] = {}
    if "instances_by_service" in old.__dict__:
        groups = dict(old.instances_by_service)
        for s in touched:
            kept = [i for i in groups.get(s, ()) if i.id not in gone]
            kept += [i for i in new.values() if i.service == s]
            if kept:
                groups[s] = tuple(sorted(kept, key=lambda i: i.id))
            else:
                groups.pop(s, None)
        seeds["instances_by_service"] = groups
    if "instance_by_proxy" in old.__dict__:
        by_proxy = {p: i for p, i in old.instance_by_proxy.items() if i.id not in gone}
        by_proxy.update({i.proxy: i for i in new.values() if i.proxy})
        seeds["instance_by_proxy"] = by_proxy
    if world.policies is old.world.policies:
        for key in ("_policies_by_target", "_policies_by_source"):
            if key in old.__dict__:
                seeds[key] = old.__dict__[key]
        if not full and not changed_services and "_reachable" in old.__dict__:
            seeds["_reachable"] = dict(old.__dict__["_reachable"])
    return WorldIndex(world, **seeds)
