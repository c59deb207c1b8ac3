"""A per-World index so translating many proxies stays linear in the World's size.

`World` holds flat tuples; translating 10,000 sidecars by scanning them for
each proxy would be quadratic. The index groups them once. It is pure: built
from one World, it only reads it.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Callable, Hashable
from functools import cached_property
from typing import Any, TypeVar

from meshgate.model import Instance, Policy, World
from meshgate.policy import compile as policy_compile
from meshgate.policy.validate import ANY_SOURCE

T = TypeVar("T")


class WorldIndex:
    def __init__(self, world: World, **seeds: object) -> None:
        """`seeds` pre-fill lazily computed groups (carried over from the previous
        World's index when the rows behind them did not change; see xds/worldpatch.py)."""
        self.world = world
        self.__dict__.update(seeds)

    @cached_property
    def instances_by_service(self) -> dict[str, tuple[Instance, ...]]:
        groups: dict[str, list[Instance]] = defaultdict(list)
        for inst in self.world.instances:
            groups[inst.service].append(inst)
        return {k: tuple(v) for k, v in groups.items()}

    def instances_of(self, service: str) -> tuple[Instance, ...]:
        return self.instances_by_service.get(service, ())

    @cached_property
    def instance_by_proxy(self) -> dict[str, Instance]:
        """The instance each sidecar fronts (the one whose `proxy` names it)."""
        return {i.proxy: i for i in self.world.instances if i.proxy}

    @cached_property
    def _policies_by_target(self) -> dict[str, tuple[Policy, ...]]:
        groups: dict[str, list[Policy]] = defaultdict(list)
        for p in self.world.policies:
            groups[p.target].append(p)
        return {k: tuple(v) for k, v in groups.items()}

    @cached_property
    def _policies_by_source(self) -> dict[str, tuple[Policy, ...]]:
        groups: dict[str, list[Policy]] = defaultdict(list)
        for p in self.world.policies:
            for s in set(p.sources):
                groups[s].append(p)
        return {k: tuple(v) for k, v in groups.items()}

    def target_world(self, service: str) -> World:
        """The World with only the policies targeting `service`.

        `policy.compile.http_rbac_filters` / `network_rbac_filters` read only
        those (`rules_for`), so they give the same result in O(own rules)
        instead of O(all rules); tests/test_xds_translate.py checks it.
        """
        return dataclasses.replace(self.world, policies=self._policies_by_target.get(service, ()))

    def source_world(self, service: str) -> World:
        """The World with only the policies naming `service` (or '*') as a source,
        which is all `policy.compile.reachable_services` reads."""
        own = self._policies_by_source.get(service, ())
        anyone = self._policies_by_source.get(ANY_SOURCE, ())
        merged = tuple(sorted(set(own) | set(anyone), key=lambda p: (p.seq, p.id)))
        return dataclasses.replace(self.world, policies=merged)

    @cached_property
    def _reachable(self) -> dict[str, frozenset[str]]:
        return {}

    @cached_property
    def _memo(self) -> dict[Hashable, Any]:
        return {}

    def memo(self, key: Hashable, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` once per World for `key` (results are never mutated afterwards):
        e.g. the outbound listener, the same for every sidecar with the same port."""
        if key not in self._memo:
            self._memo[key] = fn(*args)
        return self._memo[key]  # type: ignore[no-any-return]

    def reachable(self, service: str) -> frozenset[str]:
        """Services a sidecar of `service` may call (its outbound scope), memoized."""
        got = self._reachable.get(service)
        if got is None:
            got = frozenset(policy_compile.reachable_services(self.source_world(service), service))
            self._reachable[service] = got
        return got
