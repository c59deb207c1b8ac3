"""Authorization policies: allow or deny, from sources to one target service.

    p = add_policy(w, Policy(id="", action="allow", sources=("web",), target="orders"))
    remove_policy(w, "allow-web-to-orders")
    get_policy(conn, id); list_policies(conn, target="orders", source="web")

Ids are stable DNS labels, given by the user or generated from the rule
(`allow-web-to-orders`, then `allow-web-to-orders-2` ...), because they name
the Envoy RBAC policy and so show up in Envoy's denial details. Every add and
remove is one revision.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import replace
from typing import Any

from sqlalchemy import Connection, func, insert, select

from meshgate.errors import AlreadyExists, Conflict, NotFound
from meshgate.model import Policy
from meshgate.policy.validate import ANY_SOURCE, EDGE_PREFIX, check_policy
from meshgate.store import schema
from meshgate.store.rows import delete_row, first_free, record_row
from meshgate.store.txn import Write
from meshgate.store.world import load_world_conn, policy_from_row

MAX_ID = 63


def policy_to_dict(p: Policy) -> dict[str, Any]:
    """The policy as users see it (revisions, JSON/YAML output)."""
    return {
        "id": p.id,
        "action": p.action,
        "mode": p.mode,
        "sources": list(p.sources),
        "target": p.target,
        "methods": list(p.methods),
        "paths": [{"kind": pm.kind, "value": pm.value} for pm in p.paths],
        "headers": dict(p.headers),
        "grpc_methods": list(p.grpc_methods),
        "claims": dict(p.claims),
    }


def _slug(source: str) -> str:
    if source == ANY_SOURCE:
        return "any"
    if source.startswith(EDGE_PREFIX):
        return "edge-" + source[len(EDGE_PREFIX):]
    return source


def base_id(p: Policy) -> str:
    """`allow-web-to-orders`; long ones keep their start and gain a short hash."""
    base = f"{p.action}-{'-'.join(_slug(s) for s in p.sources)}-to-{p.target}"
    if len(base) <= MAX_ID - 3:  # room for a "-NN" suffix
        return base
    digest = hashlib.sha256(base.encode()).hexdigest()[:6]
    return base[: MAX_ID - 3 - 7].rstrip("-") + "-" + digest


def generate_id(conn: Connection, p: Policy) -> str:
    """The first free id of `base_id(p)`, `-2`, `-3`, ... (deterministic, readable)."""
    return first_free(conn, schema.policies.c.id, base_id(p))


def _row(conn: Connection, policy_id: str) -> Any:
    return conn.execute(select(schema.policies).where(schema.policies.c.id == policy_id)).first()


def get_policy(conn: Connection, policy_id: str) -> Policy:
    row = _row(conn, policy_id)
    if row is None:
        raise NotFound(f'policy "{policy_id}" not found')
    return policy_from_row(row)


def list_policies(
    conn: Connection, *, target: str | None = None, source: str | None = None
) -> list[Policy]:
    """Policies in creation order; `source` also matches rules whose sources hold '*'."""
    query = select(schema.policies).order_by(schema.policies.c.seq)
    if target is not None:
        query = query.where(schema.policies.c.target == target)
    found = [policy_from_row(r) for r in conn.execute(query)]
    if source is not None:
        found = [p for p in found if source in p.sources or ANY_SOURCE in p.sources]
    return found


def _same_rule(a: Policy, b: Policy) -> bool:
    return replace(a, id="", seq=0) == replace(b, id="", seq=0)


def add_policy(w: Write, p: Policy, *, allow_unknown: bool = False) -> Policy:
    """Validate `p` against the current store and insert it; an empty id is generated."""
    if not p.id:
        p = replace(p, id=generate_id(w.conn, p))
    check_policy(p, load_world_conn(w.conn), allow_unknown=allow_unknown)
    if _row(w.conn, p.id) is not None:
        raise AlreadyExists(f'policy "{p.id}" already exists')
    for other in list_policies(w.conn, target=p.target):
        if _same_rule(other, p):
            raise Conflict(f'policy "{other.id}" already says exactly this')
    seq = w.conn.execute(select(func.coalesce(func.max(schema.policies.c.seq), 0))).scalar_one()
    p = replace(p, seq=int(seq) + 1)
    w.conn.execute(
        insert(schema.policies).values(
            id=p.id,
            seq=p.seq,
            action=p.action,
            sources=json.dumps(list(p.sources)),
            target=p.target,
            methods=json.dumps(list(p.methods)),
            paths=json.dumps([{"kind": pm.kind, "value": pm.value} for pm in p.paths]),
            headers=json.dumps([list(h) for h in p.headers]),
            grpc_methods=json.dumps(list(p.grpc_methods)),
            claims=json.dumps([list(c) for c in p.claims]),
            mode=p.mode,
            created_at=time.time(),
        )
    )
    record_row(w, schema.policies, p.id, None)
    return p


def remove_policy(w: Write, policy_id: str) -> Policy:
    p = get_policy(w.conn, policy_id)
    delete_row(w, schema.policies, policy_id)
    return p
