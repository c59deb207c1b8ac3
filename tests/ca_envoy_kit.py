"""Two real Envoys wired by hand for CA tests: caller sidecar A -> mTLS -> callee sidecar B -> app b.

The TLS contexts are meshgate's own (`meshgate.xds.translate.tls`); only the
SDS source differs: instead of the ADS stream, each secret comes from a file
that Envoy watches (`path_config_source`). Rewriting a file (atomic rename) is
a secret push, and Envoy's admin `/certs` shows what it applied, which stands
in for the server's ACK record. This tests the CA (certificates, bundles,
rotation order) against Envoy without depending on the xDS server.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from meshgate.fleet.envoy import EnvoyProcess, free_port
from meshgate.xds.translate import tls

ROUTER = {"name": "envoy.filters.http.router", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}


def _file_sds(node: Any, secret_dir: Path) -> Any:
    """Point every SDS reference at `<secret_dir>/<name>.json` instead of ADS."""
    if isinstance(node, dict):
        if "sdsConfig" in node and "name" in node:
            node["sdsConfig"] = {"pathConfigSource": {"path": str(secret_dir / f"{node['name']}.json")},
                                 "resourceApiVersion": "V3"}
        for v in node.values():
            _file_sds(v, secret_dir)
    elif isinstance(node, list):
        for v in node:
            _file_sds(v, secret_dir)
    return node


def socket_json(ctx: Any, secret_dir: Path) -> dict[str, Any]:
    return _file_sds(json.loads(json_format.MessageToJson(tls.transport_socket(ctx))), secret_dir)


def write_secret(secret_dir: Path, secret: Any) -> None:
    """Atomically replace the secret's file: Envoy sees the move and reloads it."""
    body = json.loads(json_format.MessageToJson(secret))
    body["@type"] = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
    tmp = secret_dir / f".{secret.name}.tmp"
    tmp.write_text(json.dumps({"resources": [body]}))
    os.replace(tmp, secret_dir / f"{secret.name}.json")


def _hcm(stat: str, cluster: str, xfcc: bool = False) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": stat,
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "route": {"cluster": cluster}}]}]},
        "http_filters": [ROUTER],
    }
    if xfcc:  # tell app b who called: the client certificate's URI SAN and hash
        cfg["forward_client_cert_details"] = "SANITIZE_SET"
        cfg["set_current_client_cert_details"] = {"uri": True}
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": cfg}


def _cluster(name: str, port: int, socket: dict[str, Any] | None = None) -> dict[str, Any]:
    c: dict[str, Any] = {
        "name": name, "type": "STATIC", "connect_timeout": "2s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]},
    }
    if socket:
        c["transport_socket"] = socket
        # a new TLS handshake per request: every request proves the current certificates
        c["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "common_http_protocol_options": {"max_requests_per_connection": 1},
                "explicit_http_config": {"http_protocol_options": {}},
            }}
    return c


def _listener(name: str, port: int, filters: list[dict[str, Any]],
              socket: dict[str, Any] | None = None) -> dict[str, Any]:
    chain: dict[str, Any] = {"filters": filters}
    if socket:
        chain["transport_socket"] = socket
    return {"name": name, "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [chain]}


@dataclass
class Sidecar:
    name: str
    secret_dir: Path
    envoy: EnvoyProcess
    port: int  # A: outbound HTTP listener; B: inbound mTLS listener

    def certs(self) -> dict[str, Any]:
        return json.loads(self.envoy.admin("/certs"))

    def applied(self) -> tuple[set[str], set[str]]:
        """(CA serials, leaf serials) of every TLS context Envoy has loaded, hex lowercase."""
        cas: set[str] = set()
        leaves: set[str] = set()
        for c in self.certs().get("certificates", []):
            cas |= {x["serial_number"].lower() for x in c.get("ca_cert", [])}
            leaves |= {x["serial_number"].lower() for x in c.get("cert_chain", [])[:1]}
        return cas, leaves


def start_sidecar(workdir: Path, name: str, *, inbound_to: int | None = None,
                  upstream: tuple[str, int] | None = None, trust_domain: str = "example.org") -> Sidecar:
    """inbound_to=app port: an mTLS inbound sidecar. upstream=(spiffe id, port): an outbound one."""
    secret_dir = workdir / f"{name}-secrets"
    secret_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    if inbound_to is not None:
        sock = socket_json(tls.mesh_downstream_context(trust_domain, alpn=("http/1.1",)), secret_dir)
        listeners = [_listener("inbound", port, [_hcm("inbound", "app", xfcc=True)], sock)]
        clusters = [_cluster("app", inbound_to)]
    else:
        assert upstream is not None
        sock = socket_json(tls.mesh_upstream_context(upstream[0], alpn=("http/1.1",)), secret_dir)
        listeners = [_listener("outbound", port, [_hcm("outbound", "upstream")])]
        clusters = [_cluster("upstream", upstream[1], sock)]
    bootstrap = {
        "node": {"id": name, "cluster": name},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": free_port()}}},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    }
    envoy = EnvoyProcess(bootstrap, workdir, name)
    return Sidecar(name, secret_dir, envoy, port)


def wait_until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@dataclass
class Traffic:
    """Requests sent one after another through sidecar A until stopped; every one counted."""

    port: int
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    callers: set[str] = field(default_factory=set)  # XFCC values app b saw
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _one(self) -> None:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/anything",
                                     headers={"host": "b"})
        try:
            with urllib.request.urlopen(req, timeout=5) as r:  # noqa: S310 - loopback
                body = json.loads(r.read())
                self.ok += 1
                self.callers.add(body["headers"].get("x-forwarded-client-cert", ""))
        except urllib.error.HTTPError as exc:
            self.failures.append(f"{exc.code} {exc.read()[:200]!r}")
        except OSError as exc:
            self.failures.append(repr(exc))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._one()
            self._stop.wait(0.005)  # continuous, but leave the shared CPUs some air

    def __enter__(self) -> Traffic:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(10)
