"""One handler per document kind: how a document becomes a model object (through
the store's own validation), how an object becomes a document (export), and
which store function adds, changes or removes it.

Every write goes through the repository functions `meshgate <noun> add|update|remove`
use, inside the caller's one transaction: there is no second write path and no
second set of rules. A kind whose repository has no update function for a field
is changed by removing and adding the object again, in the same transaction.

Runtime state is never config: self-registered instances (`source: proxy`),
join tokens, revocation, edge certificates (private keys), CA material, proxy
status. Export leaves it out; apply and --prune never touch it.
"""

from __future__ import annotations

from meshgate.config import schema as S
from meshgate.config.handler import MESH_KEY, Effects, Handler
from meshgate.config.kinds_edge import EdgeRouteHandler, GatewayHandler, SidecarHandler
from meshgate.config.kinds_mesh import (
    InstanceHandler,
    JwtProviderHandler,
    MeshHandler,
    PolicyHandler,
    ServiceHandler,
)

# Dependency order: a kind only refers to kinds before it. Adds and updates run
# in this order, removals in reverse (routes go before the gateway they use).
HANDLERS: tuple[Handler, ...] = (
    MeshHandler(), ServiceHandler(), JwtProviderHandler(), GatewayHandler(), SidecarHandler(),
    InstanceHandler(), PolicyHandler(), EdgeRouteHandler(),
)
BY_KIND: dict[str, Handler] = {h.spec.kind: h for h in HANDLERS}
assert set(BY_KIND) == set(S.KINDS), "every kind in the schema has a handler"

__all__ = ["BY_KIND", "HANDLERS", "MESH_KEY", "Effects", "Handler"]
