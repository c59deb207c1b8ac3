"""One proxy's complete configuration at one moment, checked before it is published."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from meshgate.xds import types
from meshgate.xds.resources import Resource, combined_version


@dataclass(frozen=True)
class Snapshot:
    """Resources by type URL, then by name. Immutable once built."""

    resources: Mapping[str, Mapping[str, Resource]]
    _type_versions: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    @staticmethod
    def build(resources: Iterable[Resource]) -> Snapshot:
        by_type: dict[str, dict[str, Resource]] = {t: {} for t in types.PUSH_ORDER}
        for r in resources:
            by_type[r.type_url][r.name] = r
        return Snapshot({t: MappingProxyType(v) for t, v in by_type.items()})

    def of(self, type_url: str) -> Mapping[str, Resource]:
        return self.resources.get(type_url, MappingProxyType({}))

    def type_version(self, type_url: str, names: Iterable[str] | None = None) -> str:
        """SotW version of a type: a hash of its resources' versions (of `names` only, if given)."""
        items = self.of(type_url)
        if names is None:
            cached = self._type_versions.get(type_url)
            if cached is None:
                cached = combined_version((n, r.version) for n, r in items.items())
                self._type_versions[type_url] = cached
            return cached
        return combined_version((n, items[n].version) for n in names if n in items)

    def same_as(self, other: Snapshot) -> bool:
        """Same resources: interned Resources compare by identity, so this costs no hashing."""
        return all(self.of(t) == other.of(t) for t in types.PUSH_ORDER)

    def versions(self) -> dict[str, str]:
        """Type URL -> type version: two snapshots with equal versions send the same bytes."""
        return {t: self.type_version(t) for t in types.PUSH_ORDER}

    def problems(self, checked: tuple[str, ...] = (types.ENDPOINT, types.ROUTE)) -> list[str]:
        """Every dangling reference to an EDS or RDS resource (secrets come from the CA
        separately and may lag; they are not checked here)."""
        out = []
        for t in (types.CLUSTER, types.LISTENER):
            for r in self.of(t).values():
                for ref_type, ref_name in r.refs:
                    if ref_type in checked and ref_name not in self.of(ref_type):
                        out.append(
                            f"{types.short(t)} {r.name!r} needs {types.short(ref_type)} {ref_name!r}, "
                            "which the snapshot lacks"
                        )
        return out

    def consistent(self) -> bool:
        return not self.problems()

    def sources_of(self, type_url: str, names: Iterable[str]) -> list[str]:
        items = self.of(type_url)
        seen: dict[str, None] = {}
        for n in names:
            r = items.get(n)
            if r is not None:
                for s in r.sources:
                    seen.setdefault(s)
        return list(seen)


EMPTY = Snapshot.build(())
