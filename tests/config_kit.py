"""A config file with every kind, for the apply/export/plan/history tests."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from tests import ca_factory


def public_jwks(kid: str = "k1") -> dict[str, object]:
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    return {"keys": [{**jwk, "kid": kid, "alg": "ES256", "use": "sig"}]}


def client_ca_pem() -> str:
    k = ca_factory.key()
    return ca_factory.pem(ca_factory.cert("clients CA", k))


def full_config(ca_pem: str, jwks: dict[str, object]) -> str:
    """Every kind, with most optional fields set."""
    ca_block = textwrap.indent(ca_pem, "  ")
    return textwrap.dedent("""\
        kind: Mesh
        mtls_mode: permissive
        default_action: deny
        cert_ttl: 30m
        ---
        kind: Service
        name: orders
        port: 8080
        labels: {team: shop, tier: "1"}
        ---
        kind: Service
        name: web
        ---
        kind: Service
        name: ledger
        protocol: grpc
        port: 9090
        ---
        kind: JwtProvider
        name: auth0
        issuer: https://issuer.example/
        audiences: [api]
        jwks: JWKS
        ---
        kind: Gateway
        name: public
        listen: 127.0.0.1:8443
        http_redirect_port: 8080
        client_ca: |
        CA_BLOCK---
        kind: Sidecar
        name: orders-1
        service: orders
        outbound_port: 15002
        ---
        kind: Instance
        service: orders
        address: 127.0.0.1
        inbound_port: 15006
        app_port: 8080
        weight: 2
        proxy: orders-1
        ---
        kind: Instance
        service: web
        address: 127.0.0.1
        inbound_port: 15007
        app_port: 9000
        ---
        kind: Policy
        action: allow
        sources: [web]
        target: orders
        methods: [GET, HEAD]
        paths: [{prefix: /orders}, {glob: "/api/**"}]
        headers: {x-tenant: blue}
        ---
        kind: Policy
        id: no-admin
        action: deny
        mode: audit
        sources: ["*"]
        target: orders
        paths: [{prefix: /admin}]
        ---
        kind: Policy
        action: allow
        sources: ["edge:public"]
        target: orders
        claims: {role: admin}
        ---
        kind: Policy
        action: allow
        sources: [web]
        target: ledger
        grpc_methods: [ledger.Ledger/Get]
        ---
        kind: EdgeRoute
        gateway: public
        host: api.example.com
        prefix: /orders
        service: orders
        auth: jwt:auth0
        rate: 100/s
        claims: [role=admin]
        ---
        kind: EdgeRoute
        id: public-admin
        gateway: public
        host: api.example.com
        prefix: /admin
        service: orders
        auth: mtls
        claims: [san=spiffe://clients/ops]
        """).replace("JWKS", json.dumps(jwks)).replace("CA_BLOCK", ca_block)


def write_full_config(tmp_path: Path, name: str = "mesh.yaml") -> Path:
    path = tmp_path / name
    path.write_text(full_config(client_ca_pem(), public_jwks()))
    return path
