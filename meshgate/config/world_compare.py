"""Comparing Worlds by content: ids and counters the database hands out are left out.

Two stores hold the same config when their signatures are equal, even if
instance ids or policy sequence numbers differ (export then apply to an empty
database; a dry run on PostgreSQL, whose sequences do not roll back).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from meshgate.model import World


def world_signature(world: World) -> Any:
    """`world` without its revision, instance ids and policy sequence numbers."""
    return replace(
        world,
        revision=0,
        instances=tuple(sorted((replace(i, id=0) for i in world.instances),
                               key=lambda i: (i.address, i.inbound_port))),
        policies=tuple(sorted((replace(p, seq=0) for p in world.policies), key=lambda p: p.id)),
    )
