"""Attacks on the control plane, by real Envoys against a real `meshgate serve`.

The attacker is an Envoy started from a genuine `meshgate proxy bootstrap`
that was then altered: its join token removed, or swapped for another proxy's;
or a compromised workload (a valid token) whose Envoy also asks SDS for the
identities of other services. And a revoked proxy: its stream is closed and
it cannot come back. tests/test_xds_auth.py covers the same refusals with a
fake client at the protocol level; tests/test_mtls_envoy.py asks for other
secrets with a gRPC client holding a real token.
"""

from __future__ import annotations

import copy
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshgate.ca import authority
from meshgate.fleet.envoy import EnvoyProcess, free_port
from meshgate.store.db import open_store
from tests.mesh_kit import Fleet, cli, get, in_sync, status_rows, wait_for

pytestmark = pytest.mark.envoy
TD = "example.org"


class Plane(Fleet):
    tokens: dict[str, str]
    boots: dict[str, dict[str, Any]]
    web_outbound: int

    def attacker(self, name: str, bootstrap: dict[str, Any]) -> EnvoyProcess:
        boot = copy.deepcopy(bootstrap)
        boot["admin"]["address"]["socket_address"]["port_value"] = free_port()
        e = self.envoy(name, boot)
        # not /ready: an Envoy the control plane refuses never finishes initializing
        wait_for(f"{name}'s admin", lambda: e.admin("/server_info") != "", 15)
        return e

    def log_lines(self, *words: str) -> list[str]:
        return [ln for ln in self.server.log_path.read_text(errors="replace").splitlines()
                if all(w in ln for w in words)]


def _metadata(boot: dict[str, Any]) -> list[dict[str, str]]:
    return boot["dynamic_resources"]["ads_config"]["grpc_services"][0]["initial_metadata"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plane]:
    work = tmp_path_factory.mktemp("attacks-xds")
    with Plane(work / "mesh.db", work) as p:
        p.cli("init", "--trust-domain", TD)
        p.cli("service", "add", "web", "--port", "80")
        p.cli("service", "add", "orders", "--port", "8080")
        p.cli("policy", "allow", "--from", "web", "--to", "orders")
        outbound = {n: free_port() for n in ("web-1", "orders-1", "mallory-1")}
        p.web_outbound = outbound["web-1"]
        p.tokens = {
            "web-1": p.sidecar("web-1", "web", outbound["web-1"]),
            "orders-1": p.sidecar("orders-1", "orders", outbound["orders-1"]),
            # a compromised web workload: a genuine web sidecar, with no instance
            "mallory-1": p.sidecar("mallory-1", "web", outbound["mallory-1"]),
        }
        p.instance("orders", free_port(), p.app("orders").port, proxy="orders-1")
        p.serve("--log-level", "debug")
        p.boots = {name: p.bootstrap(name, token) for name, token in p.tokens.items()}
        p.start_envoys({name: p.boots[name] for name in ("web-1", "orders-1")})
        wait_for("web-1 and orders-1 in sync", lambda: in_sync(p.db, {"web-1", "orders-1"}), 30)
        wait_for("web -> orders", lambda: get(p.web_outbound, "orders")[0] == 200)
        yield p


def _dynamic(envoy: EnvoyProcess) -> dict[str, int]:
    """How many clusters, listeners and secrets the Envoy got from the control plane."""
    dump = envoy.config_dump()
    out = {"clusters": 0, "listeners": 0, "secrets": 0}
    for section in dump["configs"]:
        kind = section.get("@type", "")
        if kind.endswith("ClustersConfigDump"):
            out["clusters"] = len(section.get("dynamic_active_clusters", [])) + len(
                section.get("dynamic_warming_clusters", []))
        elif kind.endswith("ListenersConfigDump"):
            out["listeners"] = len(section.get("dynamic_listeners", []))
        elif kind.endswith("SecretsConfigDump"):
            out["secrets"] = len(section.get("dynamic_active_secrets", []))
    return out


def _not_connected(envoy: EnvoyProcess) -> None:
    """Envoy sets control_plane.connected_state to 1 when it opens an ADS stream, before
    the connection or the server has answered, and to 0 when the stream closes
    (source/common/config/grpc_stream.h): an Envoy that keeps retrying reads 1 for a
    moment on every attempt. Not connected: it is back at 0 (a held stream stays at 1)."""
    wait_for(f"{envoy.name} not connected", lambda: envoy.stat("control_plane.connected_state") == 0, 5)


def _refused_and_empty(plane: Plane, envoy: EnvoyProcess, node: str, reason: str) -> None:
    # refused again and again (Envoy retries every 0.1-0.5 s): never a single resource
    wait_for(f"{envoy.name} refused twice", lambda: len(plane.log_lines("event=refused", f"node={node}",
                                                                         reason)) >= 2, 15)
    assert "UNAUTHENTICATED" in envoy.tail(5) or "closed: 16" in envoy.tail(5), envoy.tail(5)
    _not_connected(envoy)
    assert _dynamic(envoy) == {"clusters": 0, "listeners": 0, "secrets": 0}
    assert envoy.stat("cluster_manager.cds.update_success") == 0


def test_an_envoy_without_a_token_gets_nothing(plane: Plane) -> None:
    boot = copy.deepcopy(plane.boots["web-1"])
    _metadata(boot).clear()
    e = plane.attacker("no-token", boot)
    _refused_and_empty(plane, e, "web-1", "missing join token")
    e.stop()


def test_an_envoy_with_another_proxys_token_gets_nothing(plane: Plane) -> None:
    boot = copy.deepcopy(plane.boots["web-1"])  # node web-1 ...
    _metadata(boot)[0]["value"] = f"Bearer {plane.tokens['orders-1']}"  # ... with orders-1's token
    e = plane.attacker("stolen-token", boot)
    _refused_and_empty(plane, e, "web-1", 'belongs to proxy \\"orders-1\\"')
    e.stop()
    # the proxies whose names and tokens were used are untouched
    assert in_sync(plane.db, {"web-1", "orders-1"})
    assert get(plane.web_outbound, "orders")[0] == 200


def test_a_workload_asking_sds_for_other_identities_gets_only_its_own(plane: Plane) -> None:
    """mallory-1 (a genuine web sidecar) takes its clusters from a file instead of the
    control plane: clusters whose TLS needs other services' identities, by every name
    that could mean one, fetched by SDS over the same ADS stream. SDS answers none of
    them; a cluster asking for `identity` gets mallory-1's own (svc/web).
    (Static bootstrap clusters cannot do this: Envoy 1.40 crashes on SDS over ADS there.)"""
    boot = copy.deepcopy(plane.boots["mallory-1"])
    wanted = [f"spiffe://{TD}/svc/orders", "orders-1", "identity/orders-1", "svc/orders", "edge-cert/api.example.com"]
    ads = {"ads": {}, "resource_api_version": "V3"}
    clusters = []
    for i, name in enumerate([*wanted, "identity"]):  # a client context holds one certificate
        clusters.append({
            "@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            "name": f"steal-{i}", "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": f"steal-{i}", "endpoints": [{"lb_endpoints": [{"endpoint": {
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": free_port()}}}}]}]},
            "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "common_tls_context": {"tls_certificate_sds_secret_configs": [{"name": name, "sds_config": ads}]}}},
        })
    cds = plane.work / "mallory-cds.json"
    cds.write_text(json.dumps({"resources": clusters}))
    boot["dynamic_resources"]["cds_config"] = {"path_config_source": {"path": str(cds)},
                                               "resource_api_version": "V3"}
    e = plane.attacker("mallory", boot)
    wait_for("the refusal logged", lambda: plane.log_lines("event=secret-refused", "proxy=mallory-1"), 20)
    refused = " ".join(plane.log_lines("event=secret-refused", "proxy=mallory-1"))
    for name in wanted:
        assert name in refused, (name, refused)
    wait_for("mallory-1's own identity", lambda: _dynamic(e)["secrets"] >= 1, 20)
    held = {s["name"] for sec in e.config_dump()["configs"] if sec.get("@type", "").endswith("SecretsConfigDump")
            for s in sec.get("dynamic_active_secrets", [])}
    assert held == {"identity"}, held
    certs = json.loads(e.admin("/certs"))["certificates"]
    uris = {s.get("uri") for c in certs for x in c.get("cert_chain", []) for s in x.get("subject_alt_names", [])}
    assert uris == {f"spiffe://{TD}/svc/web"}, uris
    e.stop()


def test_a_revoked_proxy_is_cut_off_and_cannot_reconnect(plane: Plane) -> None:
    web = plane.envoys["web-1"]
    assert web.stat("control_plane.connected_state") == 1
    cli(plane.db, "proxy", "revoke", "web-1")
    wait_for("web-1's stream closed", lambda: web.stat("control_plane.connected_state") == 0, 10)
    wait_for("web-1 refused as revoked", lambda: len(plane.log_lines(
        "event=refused", "node=web-1", 'proxy \\"web-1\\" is revoked')) >= 2, 15)
    _not_connected(web)
    wait_for("web-1 shown disconnected", lambda: not any(
        r["connected"] for r in status_rows(plane.db) if r["proxy"] == "web-1"), 10)
    # a change after the revocation reaches orders-1, never web-1
    cli(plane.db, "service", "add", "billing", "--port", "9090")
    cli(plane.db, "policy", "allow", "--from", "web,orders", "--to", "billing")
    orders = plane.envoys["orders-1"]
    wait_for("orders-1 gets svc/billing", lambda: "svc/billing::" in orders.admin("/clusters"), 15)
    assert "svc/billing::" not in web.admin("/clusters")
    # no way back with the old token, nor a new one: a bootstrap is refused, so is a rotation
    for how in (("--token", plane.tokens["web-1"]), ("--rotate-token",)):
        r = cli_result(plane.db, "proxy", "bootstrap", "web-1", *how)
        assert r.exit_code == 1 and r.output.startswith('error: proxy "web-1" is revoked'), r.output


class RogueServer:
    """A TLS server on loopback presenting `cert_pem` to whoever connects (a rogue process
    pretending to be the control plane); it completes handshakes and serves nothing."""

    def __init__(self, work: Path, cert_pem: str, key_pem: str) -> None:
        (work / "rogue.crt").write_text(cert_pem)
        (work / "rogue.key").write_text(key_pem)
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ctx.load_cert_chain(work / "rogue.crt", work / "rogue.key")
        self.ctx.set_alpn_protocols(["h2"])
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            try:
                with self.ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.settimeout(1)
                    tls.recv(1)
            except (ssl.SSLError, OSError):
                pass

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


def test_an_envoy_refuses_a_rogue_control_plane(plane: Plane) -> None:
    """A process on the host that takes the control plane's address cannot feed Envoy: its
    certificate must chain to the mesh roots in the bootstrap AND name
    spiffe://<td>/control-plane. A foreign CA fails the first; a genuine mesh identity of a
    workload (a compromised sidecar's) fails the second."""
    from meshgate.ca.identity import IdentityIssuer
    from meshgate.ca.keys import load_keybox

    now = time.time()
    root, root_key = authority.create_root(TD, now)
    key = authority.new_key()
    foreign = authority.issue_leaf(root, root_key, key.public_key(), spiffe_id=f"spiffe://{TD}/control-plane",
                                   now=now, ttl_seconds=600, ips=("127.0.0.1",))
    engine = open_store(str(plane.db))
    try:
        workload = IdentityIssuer(engine, load_keybox(str(engine.url))).identity_for(
            "web-1", f"spiffe://{TD}/svc/web", 600, now)
    finally:
        engine.dispose()
    cases = [("foreign-ca", authority.cert_pem(foreign), authority.key_pem(key), "fail_verify_error"),
             ("workload-cert", workload.cert_chain_pem, workload.key_pem, "fail_verify_san")]
    for name, cert, key_pem, stat in cases:
        rogue = RogueServer(plane.work, cert, key_pem)
        try:
            boot = copy.deepcopy(plane.boots["mallory-1"])
            xds = next(c for c in boot["static_resources"]["clusters"] if c["name"] == "meshgate-xds")
            xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"][
                "socket_address"]["port_value"] = rogue.port
            e = plane.attacker(name, boot)
            wait_for(f"{name}: Envoy refuses the rogue's certificate",
                     lambda e=e, stat=stat: e.stat(f"cluster.meshgate-xds.ssl.{stat}") >= 2, 15)
            _not_connected(e)
            assert _dynamic(e) == {"clusters": 0, "listeners": 0, "secrets": 0}
            e.stop()
        finally:
            rogue.close()


def cli_result(db: Path, *args: str) -> Any:
    from click.testing import CliRunner

    from meshgate.cli import cli as meshgate_cli

    return CliRunner().invoke(meshgate_cli, ["--db", str(db), *args])
