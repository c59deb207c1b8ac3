"""`meshgate proxy ...` and `meshgate serve` argument handling (no Envoy here)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.extensions.resource_monitors.downstream_connections.v3 import (  # noqa: F401
    downstream_connections_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2  # noqa: F401 - registers the type
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401
from google.protobuf import json_format

from meshgate.store.db import open_store
from meshgate.store.world import load_world
from meshgate.xds.state import ConfigState
from tests.xds_support import FakeSecrets, instance


@pytest.fixture
def mesh(initialized):  # type: ignore[no-untyped-def]
    r = initialized("service", "add", "orders", "--port", "8080")
    assert r.exit_code == 0, r.output
    return initialized


def add(run, *args: str) -> dict:  # type: ignore[no-untyped-def]
    r = run("proxy", "add", *args, "-o", "json")
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


def test_add_prints_the_token_once_and_stores_only_its_hash(mesh, db_path: Path) -> None:  # type: ignore[no-untyped-def]
    r = mesh("proxy", "add", "orders-1", "--service", "orders")
    assert r.exit_code == 0, r.output
    token = next(line.split()[1] for line in r.output.splitlines() if line.startswith("token: "))
    raw = db_path.read_bytes()
    assert token.encode() not in raw
    assert hashlib.sha256(token.encode()).hexdigest().encode() in raw
    shown = json.loads(mesh("proxy", "show", "orders-1", "-o", "json").output)
    assert shown["token_sha256"] == hashlib.sha256(token.encode()).hexdigest()
    assert "token" not in shown and shown["identity"] == "spiffe://example.org/svc/orders"
    edge = add(mesh, "public", "--edge", "--listen", "127.0.0.1:8443")
    assert edge["kind"] == "edge" and edge["token"].startswith("mgt_") and edge["listen"] == "127.0.0.1:8443"
    names = [p["name"] for p in json.loads(mesh("proxy", "list", "-o", "json").output)]
    assert names == ["orders-1", "public"]


@pytest.mark.parametrize(
    "args, code, message",
    [
        ((), 2, "exactly one of --service"),
        (("--service", "orders", "--edge"), 2, "exactly one of --service"),
        (("--service", "nope"), 1, 'service "nope" not found'),
        (("--edge", "--listen", "nohost"), 2, "listen"),
        (("--service", "orders", "--listen", "127.0.0.1:1"), 2, "only edge gateways"),
    ],
)
def test_add_refuses_bad_input_and_changes_nothing(mesh, db_dump, args, code, message) -> None:  # type: ignore[no-untyped-def]
    before = db_dump()
    r = mesh("proxy", "add", "p1", *args)
    assert r.exit_code == code, r.output
    assert message in r.output and "Traceback" not in r.output
    assert db_dump() == before


def test_add_names_every_bad_field(mesh, db_dump) -> None:  # type: ignore[no-untyped-def]
    before = db_dump()
    r = mesh("proxy", "add", "Bad_Name", "--service", "orders", "--outbound-port", "70000")
    assert r.exit_code == 2
    assert "name:" in r.output and "outbound_port:" in r.output
    assert db_dump() == before


def test_duplicate_unknown_revoke_remove(mesh) -> None:  # type: ignore[no-untyped-def]
    add(mesh, "orders-1", "--service", "orders")
    assert mesh("proxy", "add", "orders-1", "--service", "orders").exit_code == 1
    assert mesh("proxy", "show", "nope").exit_code == 1
    r = mesh("proxy", "revoke", "orders-1")
    assert r.exit_code == 0 and "revoked (revision" in r.output
    assert "already revoked" in mesh("proxy", "revoke", "orders-1").output
    assert json.loads(mesh("proxy", "show", "orders-1", "-o", "json").output)["revoked"] is True
    r = mesh("proxy", "bootstrap", "orders-1", "--rotate-token")
    assert r.exit_code == 1 and "revoked" in r.output
    assert mesh("proxy", "remove", "orders-1").exit_code == 0
    assert mesh("proxy", "remove", "orders-1").exit_code == 1
    revs = json.loads(mesh("history", "-o", "json").output)
    ops = [(c["kind"], c["key"], c["op"]) for rev in revs for c in rev["changes"] if c["kind"] == "proxies"]
    assert ops == [("proxies", "orders-1", "remove"), ("proxies", "orders-1", "update"),
                   ("proxies", "orders-1", "add")]  # newest first; the token itself is never recorded


def test_status_of_a_proxy_that_never_connected(mesh) -> None:  # type: ignore[no-untyped-def]
    add(mesh, "orders-1", "--service", "orders")
    assert mesh("proxy", "status").output.strip() == "(none)"
    assert "never connected" in mesh("proxy", "show", "orders-1").output
    assert mesh("proxy", "status", "nope").exit_code == 1


def test_config_matches_what_the_server_would_send(mesh, db_path: Path) -> None:  # type: ignore[no-untyped-def]
    add(mesh, "orders-1", "--service", "orders")
    engine = open_store(str(db_path))
    instance(engine, "orders", 15006, 8080, proxy="orders-1")
    out = json.loads(mesh("proxy", "config", "orders-1").output)
    assert [k for k in out if k not in ("proxy", "revision")] == ["cds", "eds", "sds", "lds", "rds"]
    snap = ConfigState(load_world(engine), secrets=FakeSecrets()).track("orders-1")
    for short, t in (("cds", "type.googleapis.com/envoy.config.cluster.v3.Cluster"),
                     ("lds", "type.googleapis.com/envoy.config.listener.v3.Listener")):
        assert {r["name"]: r["version"] for r in out[short]} == {n: r.version for n, r in snap.of(t).items()}
    key = next(r for r in out["sds"] if r["name"] == "identity")["resource"]["tls_certificate"]["private_key"]
    assert "redacted" in key["inline_string"]
    only = json.loads(mesh("proxy", "config", "orders-1", "--type", "lds").output)
    assert set(only) == {"proxy", "revision", "lds"}
    assert mesh("proxy", "config", "orders-1", "--type", "xds").exit_code == 2


def test_bootstrap_needs_the_token_or_a_rotation(mesh, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    token = add(mesh, "orders-1", "--service", "orders")["token"]
    r = mesh("proxy", "bootstrap", "orders-1")
    assert r.exit_code == 2 and "--rotate-token" in r.output
    r = mesh("proxy", "bootstrap", "orders-1", "--token", "mgt_wrong")
    assert r.exit_code == 2 and "--token" in r.output
    out = tmp_path / "b.json"
    r = mesh("proxy", "bootstrap", "orders-1", "--token", token, "--server", "10.0.0.1:18000",
             "--server", "xds.example.internal:18000", "--admin-port", "9911", "--out", str(out))
    assert r.exit_code == 0, r.output
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    boot = json.loads(out.read_text())
    json_format.ParseDict(boot, bootstrap_pb2.Bootstrap())  # a valid Envoy bootstrap
    assert boot["node"]["id"] == "orders-1" and boot["node"]["cluster"] == "orders"
    ads = boot["dynamic_resources"]["ads_config"]
    assert ads["api_type"] == "DELTA_GRPC" and ads["set_node_on_first_message_only"] is True
    assert ads["grpc_services"][0]["initial_metadata"] == [{"key": "authorization", "value": f"Bearer {token}"}]
    (xds,) = boot["static_resources"]["clusters"]
    assert xds["type"] == "STRICT_DNS"  # one address is a host name
    assert len(xds["load_assignment"]["endpoints"][0]["lb_endpoints"]) == 2
    tls = xds["transport_socket"]["typed_config"]
    assert "BEGIN CERTIFICATE" in tls["common_tls_context"]["validation_context"]["trusted_ca"]["inline_string"]
    assert tls["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"][0]["matcher"] == \
        {"exact": "spiffe://example.org/control-plane"}
    assert boot["admin"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 9911}
    r = mesh("proxy", "bootstrap", "orders-1", "--rotate-token", "--sotw", "--insecure-plaintext")
    assert r.exit_code == 0, r.output
    boot = json.loads(r.stdout)
    new = boot["dynamic_resources"]["ads_config"]["grpc_services"][0]["initial_metadata"][0]["value"]
    assert new != f"Bearer {token}" and boot["dynamic_resources"]["ads_config"]["api_type"] == "GRPC"
    assert "transport_socket" not in boot["static_resources"]["clusters"][0]
    assert mesh("proxy", "bootstrap", "orders-1", "--token", token).exit_code == 2  # the old token is gone


def test_bootstrap_carries_self_registration_metadata(mesh) -> None:  # type: ignore[no-untyped-def]
    token = add(mesh, "orders-1", "--service", "orders")["token"]
    r = mesh("proxy", "bootstrap", "orders-1", "--token", token, "--address", "10.1.2.3",
             "--inbound-port", "15006", "--app-port", "8080")
    assert r.exit_code == 0, r.output
    meta = json.loads(r.stdout)["node"]["metadata"]["meshgate"]
    assert meta == {"kind": "sidecar", "service": "orders",
                    "instance": {"address": "10.1.2.3", "inbound_port": 15006, "app_port": 8080}}
    r = mesh("proxy", "bootstrap", "orders-1", "--token", token, "--address", "10.1.2.3")
    assert r.exit_code == 2 and "go together" in r.output


def test_serve_refuses_plaintext_off_loopback(mesh) -> None:  # type: ignore[no-untyped-def]
    r = mesh("serve", "--listen", "0.0.0.0:18000", "--insecure-plaintext-loopback")
    assert r.exit_code == 2 and "loopback" in r.output
    r = mesh("serve", "--listen", "nonsense")
    assert r.exit_code == 2 and "--listen" in r.output


def test_serve_stops_cleanly_on_sigterm(mesh, db_path: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import asyncio
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    from meshgate.fleet.envoy import free_port
    from meshgate.store import status as store_status
    from tests.xds_support import CDS, AdsClient

    token = add(mesh, "orders-1", "--service", "orders")["token"]
    port, admin = free_port(), free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "meshgate"), "--db", str(db_path), "serve", "--listen",
             f"127.0.0.1:{port}", "--insecure-plaintext-loopback", "--admin", f"127.0.0.1:{admin}"],
            stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{admin}/healthz", timeout=1)  # noqa: S310
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
                time.sleep(0.1)

        async def connect_then_stop() -> None:
            async with AdsClient(port, token) as c:
                await c.send(c.sotw(CDS, node="orders-1"))
                await c.recv()
                await asyncio.sleep(0.7)  # the ledger records the connection
                proc.send_signal(signal.SIGTERM)
                await c.status(timeout=10)  # the server ends the stream

        asyncio.run(connect_then_stop())
        assert proc.wait(15) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    text = log.read_text()
    assert "event=shutting-down" in text and "event=stopped" in text and "Traceback" not in text
    engine = open_store(str(db_path))
    with engine.connect() as conn:
        rows = store_status.status_rows(conn, "orders-1")
    assert rows and not any(r["connected"] for r in rows)
