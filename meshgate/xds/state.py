"""What every connected proxy should have right now, kept current as the World changes.

    state = ConfigState(world, secrets=provider)
    snap = state.track("orders-1")            # a proxy connected: build its snapshot
    changed = state.set_world(new_world)      # proxies whose snapshot changed
    changed = state.refresh_secrets(now)      # identities past half-life, new roots

Only tracked (connected) proxies get snapshots. A World change is diffed
against the previous one so that only affected proxies are re-planned:
- global inputs (mesh, policies, the set of services, edge routes, JWT
  providers, trust roots) re-plan every proxy (shared parts still come from
  the cache when their inputs did not move);
- a service's row changing re-plans its own sidecars and its callers;
- only instances changing refreshes the shared endpoints of that service in
  its callers' snapshots, and re-plans its own sidecars (their `local-app`).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from meshgate.model import Proxy, World
from meshgate.xds import types
from meshgate.xds.cache import ResourceCache
from meshgate.xds.errors import TranslateError
from meshgate.xds.logs import event
from meshgate.xds.resources import Resource
from meshgate.xds.secrets import SecretProvider
from meshgate.xds.snapshot import EMPTY, Snapshot
from meshgate.xds.translate import proxy_plan
from meshgate.xds.translate.generated import DEFAULT_OPTIONS, Options
from meshgate.xds.translate.index import WorldIndex
from meshgate.xds.worldpatch import WorldChange

log = logging.getLogger("meshgate.xds.state")


@dataclass
class Entry:
    proxy: Proxy
    own: tuple[Resource, ...] = ()
    upstreams: tuple[str, ...] = ()
    secrets: tuple[Resource, ...] = ()
    snapshot: Snapshot = EMPTY
    error: str | None = None


def _global_inputs(w: World) -> tuple[object, ...]:
    """What every proxy may depend on. Services count by name only (the set of
    services decides who may call what); their rows are diffed one by one."""
    return (w.mesh, w.policies, w.services.keys(), w.routes, w.jwt_providers, w.edge_certs, w.trust_roots_pem)


def _diff(old: World, old_index: WorldIndex, new: World, new_index: WorldIndex) -> WorldChange:
    """What changed between two Worlds loaded in full (O(size of the World))."""
    services = {s for s in new.services if old.services.get(s) != new.services[s]}
    inst = {
        s
        for s in set(old_index.instances_by_service) | set(new_index.instances_by_service)
        if old_index.instances_of(s) != new_index.instances_of(s)
    }
    proxies = {p for p in set(old.proxies) | set(new.proxies) if old.proxies.get(p) != new.proxies.get(p)}
    return WorldChange(services=frozenset(services), instance_services=frozenset(inst), proxies=frozenset(proxies))


class ConfigState:
    def __init__(
        self,
        world: World,
        *,
        secrets: SecretProvider,
        options: Options = DEFAULT_OPTIONS,
        clock: Callable[[], float] = time.time,
        cache: ResourceCache | None = None,
    ) -> None:
        self.world = world
        self.index = WorldIndex(world)
        self.secret_provider = secrets
        self.options = options
        self.clock = clock
        self.cache = cache or ResourceCache()
        self.entries: dict[str, Entry] = {}
        self._callers: dict[str, set[str]] = defaultdict(set)  # service -> tracked proxies calling it
        self._own: dict[str, set[str]] = defaultdict(set)  # service -> its tracked sidecars

    # -- tracking ------------------------------------------------------------
    def track(self, name: str) -> Snapshot:
        entry = self.entries.get(name)
        if entry is None:
            proxy = self.world.proxies.get(name)
            if proxy is None:
                return EMPTY
            entry = Entry(proxy)
            self.entries[name] = entry
            if proxy.service:
                self._own[proxy.service].add(name)
            self._plan(entry)
            self._secrets(entry)
            self._assemble(entry)
        return entry.snapshot

    def untrack(self, name: str) -> None:
        entry = self.entries.pop(name, None)
        if entry is not None:
            for u in entry.upstreams:
                self._callers[u].discard(name)
            if entry.proxy.service:
                self._own[entry.proxy.service].discard(name)
            self.secret_provider.forget(name)

    def snapshot(self, name: str) -> Snapshot:
        entry = self.entries.get(name)
        return entry.snapshot if entry is not None else EMPTY

    # -- changes ---------------------------------------------------------------
    def set_world(self, world: World, *, index: WorldIndex | None = None,
                  change: WorldChange | None = None) -> set[str]:
        """Adopt a new World; returns the tracked proxies whose snapshot changed.

        `change` (from worldpatch) says what moved; without it the two Worlds are diffed.
        """
        old, old_index = self.world, self.index
        self.world, self.index = world, index or WorldIndex(world)
        if set(old.services) != set(world.services):
            self.cache.forget_services(world.services)
        if change is None:
            change = _diff(old, old_index, world, self.index)
        everything = change.full or _global_inputs(old) != _global_inputs(world)
        replan: set[str] = set()
        reassemble: set[str] = set()
        resecret: set[str] = set()
        if everything:
            replan.update(self.entries)
            resecret.update(self.entries)
        else:
            for n in change.proxies & self.entries.keys():
                replan.add(n)
                resecret.add(n)
            for s in change.services | change.instance_services:
                replan.update(self._own.get(s, ()))
            for s in change.services:
                replan.update(self._callers.get(s, ()))
            for s in change.instance_services:
                reassemble.update(self._callers.get(s, ()))
        changed: set[str] = set()
        for n in replan | reassemble | resecret:
            entry = self.entries[n]
            proxy = world.proxies.get(n)
            if proxy is None:
                continue  # removed: the server closes its stream and untracks it
            entry.proxy = proxy
            if n in replan:
                self._plan(entry)
            if n in resecret:
                self._secrets(entry)
            if self._assemble(entry):
                changed.add(n)
        return changed

    def refresh_secrets(self, names: Iterable[str] | None = None) -> set[str]:
        """Ask the provider again (identities past half-life, a new signer); returns
        the proxies whose secrets changed."""
        changed = set()
        for n in list(names if names is not None else self.entries):
            entry = self.entries.get(n)
            if entry is None:
                continue
            before = entry.secrets
            self._secrets(entry)
            if [r.version for r in before] != [r.version for r in entry.secrets] and self._assemble(entry):
                changed.add(n)
        return changed

    # -- building ----------------------------------------------------------------
    def _plan(self, entry: Entry) -> None:
        """Re-plan one proxy; on a translation error it keeps its previous config."""
        try:
            plan = proxy_plan(self.index, entry.proxy, self.options)
            own = tuple(self.cache.intern(g) for g in plan.own)
        except TranslateError as exc:
            entry.error = str(exc)
            event(log, "translate-failed", proxy=entry.proxy.name, error=str(exc), level=logging.ERROR)
            return
        for u in entry.upstreams:
            self._callers[u].discard(entry.proxy.name)
        entry.error = None
        entry.own, entry.upstreams = own, plan.upstreams
        for u in entry.upstreams:
            self._callers[u].add(entry.proxy.name)

    def _secrets(self, entry: Entry) -> None:
        try:
            secrets = self.secret_provider.secrets_for(entry.proxy, self.world, self.clock())
        except Exception as exc:  # noqa: BLE001 - a CA problem must not stop config for others
            event(log, "secrets-failed", proxy=entry.proxy.name, error=str(exc), level=logging.ERROR)
            return
        entry.secrets = tuple(
            self.cache.intern_bytes(
                types.SECRET,
                name,
                secret.SerializeToString(deterministic=True),
                (f"proxy:{entry.proxy.name}",) if name == "identity" else ("ca",),
            )
            for name, secret in sorted(secrets.items())
        )

    def _assemble(self, entry: Entry) -> bool:
        """Rebuild the snapshot from its parts; True when any type's version changed."""
        parts: list[Resource] = list(entry.own)
        for u in entry.upstreams:
            if u in self.world.services:
                parts.extend(self.cache.service_resources(self.index, u))
        parts.extend(entry.secrets)
        snap = Snapshot.build(parts)
        problems = snap.problems()
        if problems:
            event(log, "snapshot-inconsistent", proxy=entry.proxy.name, problems="; ".join(problems),
                  level=logging.ERROR)
            return False
        changed = not snap.same_as(entry.snapshot)
        entry.snapshot = snap
        return changed
