"""Property: every model meshgate accepts compiles to config the real Envoy accepts.

Hypothesis draws a whole mesh as config documents (docs/config.md): services of
every protocol, instances (IPv4 and IPv6), sidecars, policies (allow/deny,
enforce/audit, methods, exact/prefix/glob paths, headers, gRPC methods, edge
sources with claims), an edge gateway with certificates, JWT providers (inline
JWKS or remote URI), routes of every auth mode with rate limits and claims.
Instances are addressed by IPv4, IPv6 or a host name (a service with a host name
instance gets a DNS cluster with inline endpoints: Envoy's EDS takes IPs only).
The documents go through `meshgate apply`'s own code (the same validation as
the CLI: what it accepts is by definition a valid model), edge certificates
through `edge cert issue`'s, and every proxy's translation (with the options
`meshgate serve` uses) through `envoy --mode validate`
(meshgate.config.envoy_check.validate_world, which turns SDS-over-ADS into
static secrets: Envoy 1.40's validate mode crashes on those).

Service ports, sidecars' outbound ports and some instances' inbound ports come
from a small pool, so local listeners colliding in one Envoy are drawn: tcp
services with each other or with an outbound listener, and an instance on
127.0.0.1 whose inbound port is its own sidecar's outbound port or a tcp
service's port. The store refuses those (meshgate/store/ports.py) and the
example is dropped; everything else it accepts must validate.
"""

from __future__ import annotations

import json
import tempfile
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from meshgate.ca.keys import load_keybox
from meshgate.config.apply import apply
from meshgate.config.envoy_check import validate_world
from meshgate.config.errors import ConfigError
from meshgate.config.load import load_text
from meshgate.model import HTTP_METHODS
from meshgate.policy.paths import rule_path_problems
from meshgate.store import ports
from meshgate.store.edge_certs import issue_dev_cert
from meshgate.store.txn import write
from meshgate.store.world import load_world
from tests.edge_kit import MeshCa, Signer, jwks
from tests.xds_support import new_mesh

pytestmark = pytest.mark.envoy

SERVICE_NAMES = ("web", "orders", "pay", "ledger")
ADDRESSES = ("127.0.0.1", "10.0.0.7", "192.168.1.20", "::1", "fd00::17", "orders-2.internal")
HOSTS = ("api.example.com", "www.example.com", "*.example.com", "a.b.example.com")
# every character a rule path may hold (RFC 3986 pchar): the RBAC regexes must escape them right
SEGMENT = st.text(alphabet="abzAZ09-._~!$&'()+,;=:@", min_size=1, max_size=8).filter(lambda s: s not in (".", ".."))


@lru_cache(maxsize=1)
def _static() -> tuple[str, str]:
    """A client CA bundle and an inline JWKS (ES256 + RS256 public keys), made once."""
    return MeshCa(trust_domain="clients.example").pem, jwks(Signer.es256(), Signer.rs256())


def _path(kind: str) -> st.SearchStrategy[str]:
    if kind == "glob":
        parts = st.lists(st.one_of(SEGMENT, st.just("*"), st.just("**"), SEGMENT.map(lambda s: s + "*")),
                         min_size=1, max_size=4)
    else:
        parts = st.lists(SEGMENT, min_size=0, max_size=4)
    trailing = st.booleans() if kind != "glob" else st.just(False)
    return st.builds(lambda p, t: "/" + "/".join(p) + ("/" if t and p else ""), parts, trailing).filter(
        lambda v: not rule_path_problems(v, kind))


def _path_rule(kind: str) -> st.SearchStrategy[dict[str, str]]:
    return _path(kind).map(lambda value: {kind: value})


@st.composite
def policies(draw: Any, services: dict[str, str], gateway: bool) -> list[dict[str, Any]]:
    out = []
    seen: set[str] = set()
    names = list(services)
    for i in range(draw(st.integers(1, 5))):
        target = draw(st.sampled_from(names))
        protocol = services[target]
        choices = names + (["edge:gw"] if gateway else [])
        sources = draw(st.one_of(st.just(["*"]), st.lists(st.sampled_from(choices), min_size=1, max_size=3,
                                                          unique=True)))
        doc: dict[str, Any] = {"kind": "Policy", "id": f"p{i}", "action": draw(st.sampled_from(["allow", "deny"])),
                               "mode": draw(st.sampled_from(["enforce", "audit"])), "sources": sources,
                               "target": target}
        if protocol != "tcp":
            methods = draw(st.lists(st.sampled_from(HTTP_METHODS), max_size=3, unique=True))
            if methods:
                doc["methods"] = methods
            paths = draw(st.lists(st.sampled_from(["exact", "prefix", "glob"]).flatmap(_path_rule), max_size=3))
            if paths:
                doc["paths"] = paths
            headers = draw(st.dictionaries(st.text("abcxyz-", min_size=1, max_size=8).filter(
                lambda h: not h.startswith("-")), st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=8),
                max_size=2))
            if headers:
                doc["headers"] = headers
            if protocol == "grpc" and draw(st.booleans()):
                doc["grpc_methods"] = draw(st.lists(st.sampled_from(
                    ["shop.Pay/Charge", "shop.Pay/*", "a.b.C/D"]), min_size=1, max_size=2, unique=True))
        if "edge:gw" in sources and draw(st.booleans()):
            doc["claims"] = {"role": draw(st.sampled_from(["admin", "reader"]))}
        same = json.dumps({k: v for k, v in doc.items() if k != "id"}, sort_keys=True)
        if same not in seen:  # the store refuses a rule that repeats another exactly
            seen.add(same)
            out.append(doc)
    return out


@st.composite
def meshes(draw: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """(config documents, edge hosts needing a certificate)."""
    client_ca, inline_jwks = _static()
    names = draw(st.lists(st.sampled_from(SERVICE_NAMES), min_size=1, max_size=4, unique=True))
    protocols = {n: draw(st.sampled_from(["http", "grpc", "tcp"])) for n in names}
    docs: list[dict[str, Any]] = [{"kind": "Mesh", "mtls_mode": draw(st.sampled_from(["strict", "permissive"])),
                                   "default_action": draw(st.sampled_from(["deny", "allow"]))}]
    # service, outbound and some inbound ports from a small pool: a tcp service listens on its
    # port in every caller's sidecar, the inbound listener on the instance's address, so
    # collisions are drawn on purpose (the store refuses them: ports.py)
    shared = st.sampled_from([15001, 20000, 20001, 5432])
    port = iter(range(21000, 22000))  # app ports and the other inbound ports: distinct
    endpoints: set[tuple[str, int]] = set()  # an address:port held twice is another refusal
    for n in names:
        docs.append({"kind": "Service", "name": n, "protocol": protocols[n], "port": draw(shared)})
    for n in names:
        for k in range(draw(st.integers(0 if len(names) > 1 else 1, 2))):
            sidecar = f"{n}-{k}"
            docs.append({"kind": "Sidecar", "name": sidecar, "service": n, "outbound_port": draw(shared)})
            address, inbound = draw(st.sampled_from(ADDRESSES)), draw(st.one_of(shared, st.just(next(port))))
            if (address, inbound) in endpoints:
                inbound = next(port)
            endpoints.add((address, inbound))
            docs.append({"kind": "Instance", "service": n, "address": address,
                         "inbound_port": inbound, "app_port": next(port),
                         "weight": draw(st.integers(1, 100)), "proxy": sidecar})
    gateway = draw(st.integers(0, 9)) < 7
    hosts: list[str] = []
    if gateway:
        gw: dict[str, Any] = {"kind": "Gateway", "name": "gw",
                              "listen": draw(st.sampled_from(["127.0.0.1:8443", "[::1]:8443", "0.0.0.0:443"]))}
        if draw(st.booleans()):
            gw["http_redirect_port"] = next(port)
        if draw(st.booleans()):
            gw["client_ca"] = client_ca
        docs.append(gw)
        providers = []
        for i in range(draw(st.integers(0, 2))):
            p: dict[str, Any] = {"kind": "JwtProvider", "name": f"idp{i}", "issuer": f"https://idp{i}.example.com/",
                                 "audiences": draw(st.lists(st.sampled_from(["api", "web", "x"]), min_size=1,
                                                            max_size=2, unique=True))}
            if draw(st.booleans()):
                p["jwks"] = inline_jwks
            else:
                p["jwks_uri"] = draw(st.sampled_from([f"https://idp{i}.example.com/.well-known/jwks.json",
                                                      "http://127.0.0.1:9000/jwks.json"]))
            providers.append(p["name"])
            docs.append(p)
        routable = [n for n in names if protocols[n] != "tcp"]
        auths = ["none"] + (["mtls"] if "client_ca" in gw else []) + [f"jwt:{p}" for p in providers]
        seen: set[tuple[str, str]] = set()
        for i in range(draw(st.integers(1, 5)) if routable else 0):
            host = draw(st.sampled_from(HOSTS))
            prefix = draw(st.sampled_from(["/", "/orders", "/api/", "/v1/x"]))
            if (host, prefix) in seen:
                continue
            seen.add((host, prefix))
            auth = draw(st.sampled_from(auths))
            route: dict[str, Any] = {"kind": "EdgeRoute", "id": f"r{i}", "gateway": "gw", "host": host,
                                     "prefix": prefix, "service": draw(st.sampled_from(routable)), "auth": auth}
            if draw(st.booleans()):
                route["rate"] = draw(st.sampled_from(["100/s", "5/m", "1000/h", "10/30s"]))
            if auth.startswith("jwt:") and draw(st.booleans()):
                route["claims"] = ["role=admin"]
            elif auth == "mtls" and draw(st.booleans()):
                route["claims"] = ["san=spiffe://clients.example/bot"]
            docs.append(route)
            hosts.append(host)
    docs += draw(policies({n: protocols[n] for n in names}, gateway))
    return docs, sorted(set(hosts))


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(meshes())
def test_every_valid_model_compiles_to_config_envoy_accepts(model: tuple[list[dict[str, Any]], list[str]]) -> None:
    docs, hosts = model
    text = yaml.safe_dump_all(docs, sort_keys=False)
    with tempfile.TemporaryDirectory(prefix="meshgate-prop-") as tmp:
        engine = new_mesh(Path(tmp) / "mesh.db")
        try:
            try:
                apply(engine, load_text(text, "model.yaml"))  # meshgate's own validation
            except ConfigError as exc:
                # the one refusal the generator provokes on purpose: colliding local ports
                # (other problems only follow from it, e.g. an instance of the refused sidecar)
                why = (ports.WHY, ports.WHY_INBOUND)
                assert any(w in p.message for p in exc.problems for w in why), str(exc)
                follows = ("not found", "unknown service")
                assert all(any(w in p.message for w in why + follows) for p in exc.problems), str(exc)
                reject()
            keybox = load_keybox(str(engine.url))
            with write(engine, "edge certificates") as w:
                for host in hosts:
                    issue_dev_cert(w, keybox, "gw", host, time.time())
            world = load_world(engine)
        finally:
            engine.dispose()
        failures = validate_world(world, sorted(world.proxies))
    assert failures == [], json.dumps({"failures": failures, "model": docs}, indent=1)[:6000]
