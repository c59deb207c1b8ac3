"""Asking the real Envoy whether it accepts a proxy's config (`envoy --mode validate`).

    failures = validate_world(world, ["orders-1", "public"])   # [(proxy, Envoy's reason)]

Each proxy's translated resources become one static bootstrap, because
`--mode validate` reads only a bootstrap (ENVOY_NOTES.md, measured on 1.40):
- EDS clusters become STATIC with their ClusterLoadAssignment inlined (Envoy
  applies the same address checks to both);
- listeners' RDS references become the inline route configuration;
- SDS references lose their `sds_config` (Envoy 1.40's validate mode segfaults
  on secrets fetched over ADS) and static secrets with the same names hold a
  throwaway self-signed certificate: the config's shape is checked, not the
  mesh's certificates.
Proxies whose bootstraps are the same bytes (but for the node id) are checked
once. Envoy runs as a child process, a few at a time, each stopped by its PID
when it overruns the timeout.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import tempfile
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from meshgate.model import Proxy, World
from meshgate.xds import types
from meshgate.xds.translate.generated import Generated, Options

TIMEOUT_S = 60.0
JOBS = 2
_CERT_FIELDS = ("tls_certificate_sds_secret_configs",)
_CA_FIELDS = ("validation_context_sds_secret_config",)


def server_options() -> Options:
    """The translation options `meshgate serve` uses by default (telemetry's access
    logs in every HCM and TCP proxy), so plans and validation see the same config.
    Each proxy's access logs carry a placeholder in place of its telemetry key (the
    server's come from the store's secret): the same shape, and proxies with equal
    config still validate once."""
    from meshgate.telemetry.keys import PLACEHOLDER_KEY
    from meshgate.telemetry.service import Telemetry

    return Telemetry.translate_options(same_key=PLACEHOLDER_KEY)  # type: ignore[no-any-return]


@lru_cache(maxsize=1)
def throwaway_pair() -> tuple[str, str]:
    """A self-signed CA certificate and key (PEM) standing in for every secret."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "meshgate validate")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return (
        cert.public_bytes(serialization.Encoding.PEM).decode(),
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption()).decode(),
    )


def _to_json(g: Generated) -> dict[str, Any]:
    return json_format.MessageToDict(g.message, preserving_proto_field_name=True)


def _strip_sds(node: Any, certs: set[str], cas: set[str]) -> None:
    """Drop every `sdsConfig` and note which secret names hold certificates or CAs."""
    if isinstance(node, dict):
        node.pop("sds_config", None)
        for k, v in node.items():
            if k in _CERT_FIELDS:
                certs.update(x.get("name", "") for x in v)
            elif k in _CA_FIELDS:
                cas.add(v.get("name", ""))
            _strip_sds(v, certs, cas)
    elif isinstance(node, list):
        for v in node:
            _strip_sds(v, certs, cas)


def _inline_rds(node: Any, routes: dict[str, dict[str, Any]]) -> None:
    if isinstance(node, dict):
        rds = node.get("rds")
        if isinstance(rds, dict) and "route_config_name" in rds:
            del node["rds"]
            name = rds["route_config_name"]
            node["route_config"] = routes.get(name, {"name": name})
        for v in node.values():
            _inline_rds(v, routes)
    elif isinstance(node, list):
        for v in node:
            _inline_rds(v, routes)


def static_bootstrap(proxy: Proxy, resources: Iterable[Generated], *,
                     secrets: Iterable[Message] | None = None, admin_port: int = 9901) -> dict[str, Any]:
    """One proxy's resources inside the bootstrap `meshgate proxy bootstrap` writes for
    it (fleet.bootstrap.render_bootstrap), made static so Envoy can `--mode validate`
    it (see the module doc): its own clusters (the control plane's, which access
    logs name) stay, the ADS part goes. `secrets` (what SDS would send the proxy)
    replace the throwaway ones, so a real Envoy can also serve traffic on it."""
    from meshgate.fleet.bootstrap import control_plane_identity, render_bootstrap

    by_type: dict[str, list[Generated]] = {}
    for g in resources:
        by_type.setdefault(g.type_url, []).append(g)
    endpoints = {g.name: _to_json(g) for g in by_type.get(types.ENDPOINT, [])}
    routes = {g.name: _to_json(g) for g in by_type.get(types.ROUTE, [])}
    clusters = []
    for g in by_type.get(types.CLUSTER, []):
        c = _to_json(g)
        if c.get("type") == "EDS" or "eds_cluster_config" in c:
            c.pop("eds_cluster_config", None)
            c["type"] = "STATIC"
            c["load_assignment"] = endpoints.get(g.name, {"cluster_name": g.name})
        clusters.append(c)
    listeners = [_to_json(g) for g in by_type.get(types.LISTENER, [])]
    _inline_rds(listeners, routes)
    certs: set[str] = set()
    cas: set[str] = set()
    _strip_sds(clusters, certs, cas)
    _strip_sds(listeners, certs, cas)
    cert, key = throwaway_pair()
    if secrets is not None:
        held = [json_format.MessageToDict(s, preserving_proto_field_name=True) for s in secrets]
    else:
        held = [{"name": n, "tls_certificate": {"certificate_chain": {"inline_string": cert},
                                                "private_key": {"inline_string": key}}}
                for n in sorted(certs)]
        held += [{"name": n, "validation_context": {"trusted_ca": {"inline_string": cert}}}
                 for n in sorted(cas - certs)]
    boot = render_bootstrap(proxy, "validate-only", servers=["127.0.0.1:18000"], admin_port=admin_port,
                            xds_ca_pem=cert, xds_san=control_plane_identity("validate.invalid"))
    boot.pop("dynamic_resources", None)
    static = boot["static_resources"]
    static["clusters"] = [*static.get("clusters", []), *clusters]
    static["listeners"] = listeners
    static["secrets"] = held
    return boot


_LOG_PREFIX = re.compile(r"^(\[[^\]]*\]\s*)+")
_INIT_PREFIX = re.compile(r"^error initializing configuration '[^']*':\s*")


def envoy_reason(output: str) -> str:
    """Envoy's complaint, from the end of its output (the reason comes last), without
    the log prefix and the temporary file's name."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    picked = next((ln for ln in reversed(lines)
                   if any(w in ln.lower() for w in ("error", "exception", "invalid", "malformed"))),
                  lines[-1] if lines else "Envoy failed without a message")
    return _INIT_PREFIX.sub("", _LOG_PREFIX.sub("", picked))[-2000:]


def check_bootstrap(bootstrap: dict[str, Any], timeout: float = TIMEOUT_S) -> str | None:
    """None when Envoy accepts `bootstrap`, else its reason."""
    from meshgate.fleet.envoy import find_envoy

    with tempfile.TemporaryDirectory(prefix="meshgate-validate-") as tmp:
        path = Path(tmp) / "bootstrap.json"
        path.write_text(json.dumps(bootstrap))
        proc = subprocess.Popen(
            [find_envoy(), "--mode", "validate", "-c", str(path), "--disable-hot-restart",
             "--concurrency", "1", "-l", "error"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            return f"Envoy did not finish validating within {timeout:.0f} s"
    if proc.returncode == 0:
        return None
    if proc.returncode < 0:
        return f"Envoy crashed (signal {-proc.returncode}) while validating: {envoy_reason(out)}"
    return envoy_reason(out)


def validate_world(world: World, proxies: Iterable[str], jobs: int = JOBS,
                   options: Options | None = None) -> list[tuple[str, str]]:
    """[(proxy, reason)] for every proxy whose config Envoy rejects (translation
    failures count as rejections, with their own message). `options` default to
    what `meshgate serve` translates with (server_options)."""
    from meshgate.errors import MeshgateError
    from meshgate.xds.translate import WorldIndex, translate_proxy

    options = options if options is not None else server_options()
    index = WorldIndex(world)
    failures: list[tuple[str, str]] = []
    groups: dict[str, tuple[dict[str, Any], list[str]]] = {}
    for name in proxies:
        try:
            proxy = world.proxies.get(name)
            if proxy is None:
                failures.append((name, "no such proxy"))
                continue
            b = static_bootstrap(proxy, translate_proxy(world, name, index=index, options=options))
        except MeshgateError as exc:
            failures.append((name, f"cannot translate: {exc}"))
            continue
        digest = hashlib.sha256(json.dumps({**b, "node": {}}, sort_keys=True).encode()).hexdigest()
        groups.setdefault(digest, (b, []))[1].append(name)
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        results = list(pool.map(lambda item: (item[1], check_bootstrap(item[0])), groups.values()))
    for names, reason in results:
        if reason is not None:
            failures += [(n, reason) for n in names]
    return sorted(failures)
