"""Handlers of the mesh's own kinds: Mesh, Service, Instance, Policy, JwtProvider."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from sqlalchemy import Connection

from meshgate.config import schema as S
from meshgate.config.handler import MESH_KEY, Effects, Handler, drop_empty
from meshgate.errors import ValidationError, Violation
from meshgate.model import Instance, JwtProvider, Mesh, PathMatch, Policy, Service
from meshgate.store.txn import Write


class MeshHandler(Handler):
    spec = S.MESH
    prunable = False

    def key(self, obj: Mesh) -> str:
        return MESH_KEY

    def current(self, conn: Connection) -> dict[str, Any]:
        from meshgate.store.mesh import get_mesh

        return {MESH_KEY: get_mesh(conn)}

    def desired(self, doc: dict[str, Any], conn: Connection) -> Mesh:
        from meshgate.model import DEFAULT_CERT_TTL_SECONDS, DEFAULT_INSTANCE_GRACE_SECONDS
        from meshgate.store.mesh import get_mesh, validate_mesh

        current = get_mesh(conn)
        td = doc.get("trust_domain", current.trust_domain)
        if td != current.trust_domain:
            raise ValidationError([Violation(
                "trust_domain",
                f"{td!r} differs from this mesh's {current.trust_domain!r}: the trust domain is "
                "fixed at `meshgate init` (every identity and certificate is made under it)",
            )], "mesh")
        return validate_mesh(
            td,
            doc.get("mtls_mode", "strict"),
            doc.get("default_action", "deny"),
            doc.get("cert_ttl", DEFAULT_CERT_TTL_SECONDS),
            doc.get("instance_grace", DEFAULT_INSTANCE_GRACE_SECONDS),
        )

    def fields(self, m: Mesh) -> dict[str, Any]:
        from meshgate.store.mesh import mesh_settings

        return mesh_settings(m)

    def update(self, w: Write, old: Mesh, new: Mesh, fx: Effects) -> None:
        from meshgate.store.mesh import update_mesh

        update_mesh(w, mtls_mode=new.mtls_mode, default_action=new.default_action,
                    cert_ttl=new.cert_ttl_seconds, instance_grace=new.instance_grace_seconds)


class ServiceHandler(Handler):
    spec = S.SERVICE

    def current(self, conn: Connection) -> dict[str, Any]:
        from meshgate.store.services import list_services

        return {s.name: s for s in list_services(conn)}

    def desired(self, doc: dict[str, Any], conn: Connection) -> Service:
        from meshgate.store.services import validate_service

        return validate_service(doc.get("name"), doc.get("protocol", "http"), doc.get("port", 80),
                                doc.get("labels") or {})

    def fields(self, s: Service) -> dict[str, Any]:
        return drop_empty({"name": s.name, "protocol": s.protocol, "port": s.port, "labels": dict(s.labels)})

    def add(self, w: Write, s: Service, fx: Effects) -> None:
        from meshgate.store.services import add_service

        add_service(w, s.name, s.protocol, s.port, dict(s.labels))

    def update(self, w: Write, old: Service, new: Service, fx: Effects) -> None:
        from meshgate.store.services import update_service

        update_service(w, new.name, protocol=new.protocol, port=new.port, replace_labels=dict(new.labels))

    def remove(self, w: Write, s: Service, fx: Effects) -> None:
        from meshgate.store.services import remove_service

        remove_service(w, s.name)


class InstanceHandler(Handler):
    replaces = True
    spec = S.INSTANCE

    def key(self, obj: Instance) -> str:
        from meshgate.store.instances import endpoint

        return endpoint(obj.address, obj.inbound_port)

    def current(self, conn: Connection) -> dict[str, Any]:
        from meshgate.store.instances import list_instances

        return {self.key(i): i for i in list_instances(conn) if i.source == "cli"}

    def desired(self, doc: dict[str, Any], conn: Connection) -> Instance:
        from meshgate.store.instances import validate_instance

        args: dict[str, Any] = {k: doc.get(k) for k in ("service", "address", "inbound_port", "app_port")}
        weight, proxy = doc.get("weight", 1), doc.get("proxy")
        validate_instance(**args, weight=weight, proxy=proxy, source="cli")
        return Instance(id=0, weight=weight, proxy=proxy, source="cli", **args)

    def fields(self, i: Instance) -> dict[str, Any]:
        return drop_empty({"service": i.service, "address": i.address, "inbound_port": i.inbound_port,
                            "app_port": i.app_port, "weight": i.weight, "proxy": i.proxy})

    def add(self, w: Write, i: Instance, fx: Effects) -> None:
        from meshgate.store.instances import add_instance

        add_instance(w, i.service, i.address, i.inbound_port, i.app_port, i.weight, i.proxy, "cli")

    def remove(self, w: Write, i: Instance, fx: Effects) -> None:
        from meshgate.store.instances import find_instance, remove_instance

        found = find_instance(w.conn, i.address, i.inbound_port)
        if found is not None:  # gone already when its service was removed first
            remove_instance(w, found.id)


class PolicyHandler(Handler):
    replaces = True
    spec = S.POLICY

    def key(self, obj: Policy) -> str:
        return obj.id

    def current(self, conn: Connection) -> dict[str, Any]:
        from meshgate.store.policies import list_policies

        return {p.id: p for p in list_policies(conn)}

    def desired(self, doc: dict[str, Any], conn: Connection) -> Policy:
        from meshgate.policy.validate import check_policy
        from meshgate.store.policies import base_id

        p = Policy(
            id=doc.get("id") or "",
            action=doc.get("action"),  # type: ignore[arg-type]
            mode=doc.get("mode", "enforce"),
            sources=tuple(doc.get("sources") or ()),
            target=doc.get("target"),  # type: ignore[arg-type]
            methods=tuple(m.upper() for m in doc.get("methods") or ()),
            paths=tuple(PathMatch(*next(iter(x.items()))) for x in doc.get("paths") or ()),
            headers=tuple((k.lower(), v) for k, v in (doc.get("headers") or {}).items()),
            grpc_methods=tuple(doc.get("grpc_methods") or ()),
            claims=tuple((doc.get("claims") or {}).items()),
        )
        if not p.id:
            p = replace(p, id=base_id(p))
        check_policy(p)  # shape of every field; references are checked by add_policy
        return p

    def fields(self, p: Policy) -> dict[str, Any]:
        return drop_empty({
            "id": p.id, "action": p.action, "mode": p.mode, "sources": list(p.sources), "target": p.target,
            "methods": list(p.methods), "paths": [{pm.kind: pm.value} for pm in p.paths],
            "headers": dict(p.headers), "grpc_methods": list(p.grpc_methods), "claims": dict(p.claims),
        })

    def add(self, w: Write, p: Policy, fx: Effects) -> None:
        from meshgate.store.policies import add_policy

        add_policy(w, replace(p, seq=0))

    def remove(self, w: Write, p: Policy, fx: Effects) -> None:
        from meshgate.store.policies import remove_policy

        remove_policy(w, p.id)


class JwtProviderHandler(Handler):
    spec = S.JWT_PROVIDER

    def current(self, conn: Connection) -> dict[str, Any]:
        from meshgate.store.jwt import list_jwt_providers

        return {p.name: p for p in list_jwt_providers(conn)}

    def desired(self, doc: dict[str, Any], conn: Connection) -> JwtProvider:
        from meshgate.store.jwt import validate_jwt_provider

        jwks = doc.get("jwks")
        if isinstance(jwks, dict):
            jwks = json.dumps(jwks)
        return validate_jwt_provider(doc.get("name"), doc.get("issuer"), doc.get("audiences"),
                                     jwks, doc.get("jwks_uri"))

    def fields(self, p: JwtProvider) -> dict[str, Any]:
        return drop_empty({"name": p.name, "issuer": p.issuer, "audiences": list(p.audiences),
                            "jwks": json.loads(p.jwks) if p.jwks else None, "jwks_uri": p.jwks_uri})

    def add(self, w: Write, p: JwtProvider, fx: Effects) -> None:
        from meshgate.store.jwt import add_jwt_provider

        add_jwt_provider(w, p.name, p.issuer, list(p.audiences), p.jwks, p.jwks_uri)

    def update(self, w: Write, old: JwtProvider, new: JwtProvider, fx: Effects) -> None:
        from meshgate.store.jwt import update_jwt_provider

        update_jwt_provider(w, new.name, issuer=new.issuer, audiences=list(new.audiences),
                            jwks=new.jwks, jwks_uri=new.jwks_uri)

    def remove(self, w: Write, p: JwtProvider, fx: Effects) -> None:
        from meshgate.store.jwt import remove_jwt_provider

        remove_jwt_provider(w, p.name)
