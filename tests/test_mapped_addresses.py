"""IPv4-mapped IPv6 addresses (`::ffff:10.0.0.7`) are refused wherever Envoy must
bind or connect (meshgate/validation.py `mapped_ipv4`).

Envoy opens IPv6-only sockets: a listener there is NACKed (`cannot bind
'[::ffff:127.0.0.1]:P': Invalid argument`) and an endpoint there is accepted but
never reached (`Network is unreachable`); `test_envoy_can_neither_bind_nor_reach_a_mapped_address`
keeps that fact measured. Each refusal names the field and the plain IPv4 form,
exits as the project does for that error kind, and writes nothing.
"""

from __future__ import annotations

import http.client
import json
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import insert

from meshgate.errors import ValidationError
from meshgate.fleet.app import App
from meshgate.fleet.bootstrap import render_bootstrap
from meshgate.fleet.envoy import EnvoyProcess, free_port
from meshgate.fleet.errors import FleetError
from meshgate.model import Proxy
from meshgate.store import schema
from meshgate.store.db import open_store
from meshgate.store.proxies import rotate_token
from meshgate.store.rows import read_row, record_row, update_row
from meshgate.store.txn import write
from meshgate.validation import Checker, mapped_ipv4
from tests.conftest import Invoke
from tests.mesh_kit import wait_for
from tests.test_fleet_registration import refused, sidecar_meta

WHY = "is an IPv4-mapped IPv6 address, which Envoy can neither bind nor connect to; use"


@pytest.mark.parametrize("value, plain", [
    ("::ffff:10.0.0.7", "10.0.0.7"), ("::FFFF:10.0.0.7", "10.0.0.7"), ("::ffff:a00:7", "10.0.0.7"),
    ("0:0:0:0:0:ffff:10.0.0.7", "10.0.0.7"), ("::ffff:127.0.0.1", "127.0.0.1"),
    ("10.0.0.7", None), ("::1", None), ("fd00::2", None), ("::", None), ("::10.0.0.7", None),
    ("64:ff9b::a00:7", None), ("orders.example.org", None), ("", None),
])
def test_mapped_ipv4_finds_every_spelling_and_nothing_else(value: str, plain: str | None) -> None:
    assert mapped_ipv4(value) == plain


def test_the_checker_refuses_mapped_addresses_and_keeps_the_rest() -> None:
    v = Checker("x")
    for ok in ("10.0.0.7", "::1", "fd00::2", "orders.example.org"):
        assert v.address("address", ok)
    for ok in ("127.0.0.1:8443", "[::1]:8443", "[fd00::2]:8443", "xds.example.org:18000"):
        assert v.host_port("listen", ok)
    assert not v.address("address", "::ffff:10.0.0.7")
    assert not v.host_port("listen", "[::ffff:a00:7]:8443")
    assert not v.host_port("listen", "[::ffff:a00:7:8443")  # malformed: one violation, the old one
    with pytest.raises(ValidationError) as exc:
        v.done()
    assert [str(x) for x in exc.value.violations] == [
        f"address: ::ffff:10.0.0.7 {WHY} 10.0.0.7",
        f"listen: [::ffff:a00:7]:8443 {WHY} 10.0.0.7:8443",
        "listen: '[::ffff:a00:7:8443' is not HOST:PORT (port 1-65535)",
    ]


# -- the CLI: every command that takes an address --------------------------------------

@pytest.fixture
def mesh(initialized: Invoke) -> Invoke:
    for args in (("service", "add", "orders", "--port", "8080"),
                 ("proxy", "add", "orders-1", "--service", "orders"),
                 ("edge", "add", "public", "--listen", "127.0.0.1:8443")):
        r = initialized(*args)
        assert r.exit_code == 0, r.output
    return initialized


CLI_CASES: list[tuple[list[str], str]] = [
    (["instance", "add", "orders", "--address", "::ffff:10.0.0.7", "--inbound-port", "15006", "--app-port", "8080"],
     f"address: ::ffff:10.0.0.7 {WHY} 10.0.0.7"),
    (["instance", "add", "orders", "--address", "::ffff:7f00:1", "--inbound-port", "15006", "--app-port", "8080",
      "--proxy", "orders-1"],
     f"address: ::ffff:7f00:1 {WHY} 127.0.0.1"),
    (["edge", "add", "gw", "--listen", "[::ffff:127.0.0.1]:9443"], f"listen: [::ffff:127.0.0.1]:9443 {WHY} 127.0.0.1:9443"),
    (["edge", "update", "public", "--listen", "[::ffff:10.0.0.7]:8443"],
     f"listen: [::ffff:10.0.0.7]:8443 {WHY} 10.0.0.7:8443"),
    (["proxy", "add", "gw", "--edge", "--listen", "[::ffff:127.0.0.1]:9443"],
     f"listen: [::ffff:127.0.0.1]:9443 {WHY} 127.0.0.1:9443"),
    (["proxy", "bootstrap", "orders-1", "--rotate-token", "--server", "127.0.0.1:18000",
      "--server", "[::ffff:10.0.0.5]:18000"],
     f"--server: [::ffff:10.0.0.5]:18000 {WHY} 10.0.0.5:18000"),
    (["proxy", "bootstrap", "orders-1", "--rotate-token", "--address", "::ffff:10.0.0.7", "--inbound-port", "15006",
      "--app-port", "8080"],
     f"--address: ::ffff:10.0.0.7 {WHY} 10.0.0.7"),
    (["proxy", "run", "orders-1", "--token", "t", "--server", "[::ffff:127.0.0.1]:18000"],
     f"--server: [::ffff:127.0.0.1]:18000 {WHY} 127.0.0.1:18000"),
    (["proxy", "run", "orders-1", "--token", "t", "--address", "::ffff:127.0.0.1", "--inbound-port", "15006",
      "--app-port", "8080"],
     f"--address: ::ffff:127.0.0.1 {WHY} 127.0.0.1"),
    (["jwt", "add", "idp", "--issuer", "https://idp.example/", "--audience", "api",
      "--jwks-uri", "https://[::ffff:10.0.0.7]:8443/jwks"],
     f"jwks_uri: 'https://[::ffff:10.0.0.7]:8443/jwks': ::ffff:10.0.0.7 {WHY} 10.0.0.7"),
]


@pytest.mark.parametrize("args, message", CLI_CASES, ids=lambda c: " ".join(c[:2]) if isinstance(c, list) else "")
def test_cli_refuses_a_mapped_address_naming_the_field(mesh: Invoke, db_dump: Callable[[], str],
                                                         args: list[str], message: str) -> None:
    before = db_dump()
    r = mesh(*args)
    assert r.exit_code == 2, r.output  # a bad value: a usage error, like every other field check
    assert "Traceback" not in r.output
    assert message in r.output, r.output
    assert db_dump() == before  # no row, no revision (and --rotate-token rotated nothing)


def test_the_plain_forms_are_accepted(mesh: Invoke) -> None:
    for args in (["instance", "add", "orders", "--address", "10.0.0.7", "--inbound-port", "15006", "--app-port", "8080"],
                 ["instance", "add", "orders", "--address", "::1", "--inbound-port", "15006", "--app-port", "8080"],
                 ["edge", "update", "public", "--listen", "[::1]:8443"]):
        r = mesh(*args)
        assert r.exit_code == 0, (args, r.output)


def test_render_bootstrap_refuses_a_mapped_server() -> None:
    """Callers other than the CLI (config validation, fleet tooling) meet the same rule."""
    proxy = Proxy(name="orders-1", kind="sidecar", service="orders")
    with pytest.raises(FleetError, match=r"--server: \[::ffff:127\.0\.0\.1\]:18000 " + WHY + " 127.0.0.1:18000"):
        render_bootstrap(proxy, "t", servers=["[::ffff:127.0.0.1]:18000"], admin_port=9901,
                         xds_ca_pem=None, xds_san=None)


# -- apply: reported at the YAML field ----------------------------------------------------

CONFIG = textwrap.dedent("""\
    kind: Service
    name: orders
    port: 8080
    ---
    kind: Instance
    service: orders
    address: "::ffff:10.0.0.7"
    inbound_port: 15006
    app_port: 8080
    ---
    kind: JwtProvider
    name: idp
    issuer: https://idp.example/
    audiences: [api]
    jwks_uri: "https://[::ffff:10.0.0.8]/jwks"
    """)


def _line(text: str, needle: str) -> int:
    return text.splitlines().index(needle) + 1


@pytest.mark.parametrize("command", ["apply", "plan"])
def test_apply_reports_each_mapped_address_at_its_field(initialized: Invoke, tmp_path: Path,
                                                        db_dump: Callable[[], str], command: str) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_text(CONFIG)
    before = db_dump()
    r = initialized(command, "-f", str(path))
    assert r.exit_code == 2, r.output
    address = _line(CONFIG, 'address: "::ffff:10.0.0.7"')
    jwks = _line(CONFIG, 'jwks_uri: "https://[::ffff:10.0.0.8]/jwks"')
    assert f'{path}:{address}:10 (Instance "::ffff:10.0.0.7:15006"): ' \
           f"address: ::ffff:10.0.0.7 {WHY} 10.0.0.7" in r.output, r.output
    assert f'{path}:{jwks}:11 (JwtProvider "idp"): ' \
           f"jwks_uri: 'https://[::ffff:10.0.0.8]/jwks': ::ffff:10.0.0.8 {WHY} 10.0.0.8" in r.output, r.output
    assert "2 problems in the config; nothing was changed" in r.output, r.output
    assert db_dump() == before


def test_apply_reports_a_mapped_gateway_listen_at_its_field(initialized: Invoke, tmp_path: Path,
                                                            db_dump: Callable[[], str]) -> None:
    text = 'kind: Gateway\nname: gw\nlisten: "[::ffff:127.0.0.1]:9443"\n'
    path = tmp_path / "gw.yaml"
    path.write_text(text)
    before = db_dump()
    r = initialized("apply", "-f", str(path))
    # gateways are checked when written (store/edge_gateways.py), which apply reports as exit 1,
    # the same as any other bad gateway listen address
    assert r.exit_code == 1, r.output
    assert f'{path}:3:9 (Gateway "gw"): listen: [::ffff:127.0.0.1]:9443 {WHY} 127.0.0.1:9443' in r.output, r.output
    assert db_dump() == before


# -- rollback: revisions from before the rule may hold one ---------------------------------

def _written_before_the_rule(db: str, table: str, key: str, **values: Any) -> None:
    """A revision as the store wrote it before it refused mapped addresses (raw SQL)."""
    engine = open_store(db)
    try:
        with write(engine, "before the rule", "old@test") as w:
            t = getattr(schema, table)
            if read_row(w.conn, t, key) is None:
                w.conn.execute(insert(t).values(**values))
                record_row(w, t, key, None)
            else:
                update_row(w, t, key, **values)
    finally:
        engine.dispose()


@pytest.mark.parametrize("table, key, values, undo, message", [
    ("instances", "1", {"id": 1, "service": "orders", "address": "::ffff:10.0.0.7", "inbound_port": 15006,
                        "app_port": 8080, "created_at": 0.0},
     ["instance", "remove", "1"], f"cannot restore instances '1' as of revision {{rev}}: address: ::ffff:10.0.0.7 "
                                  f"{WHY} 10.0.0.7; nothing was changed"),
    ("proxies", "public", {"listen": "[::ffff:127.0.0.1]:8443"},
     ["edge", "update", "public", "--listen", "127.0.0.1:8443"],
     f"cannot restore proxies 'public' as of revision {{rev}}: listen: [::ffff:127.0.0.1]:8443 {WHY} "
     "127.0.0.1:8443; nothing was changed"),
    ("jwt_providers", "idp", {"name": "idp", "issuer": "https://idp.example/", "audiences": '["api"]',
                              "jwks_uri": "https://[::ffff:10.0.0.8]/jwks", "created_at": 0.0},
     ["jwt", "remove", "idp"], f"cannot restore jwt_providers 'idp' as of revision {{rev}}: jwks_uri: "
                               f"::ffff:10.0.0.8 {WHY} 10.0.0.8; nothing was changed"),
])
def test_a_rollback_that_would_bring_back_a_mapped_address_is_refused(
        mesh: Invoke, db: str, db_dump: Callable[[], str], table: str, key: str, values: dict[str, Any],
        undo: list[str], message: str) -> None:
    _written_before_the_rule(db, table, key, **values)
    rev = json.loads(mesh("history", "-o", "json").output)[0]["revision"]
    r = mesh(*undo)
    assert r.exit_code == 0, r.output
    before = db_dump()
    r = mesh("rollback", str(rev), "--yes")
    assert r.exit_code == 1, r.output  # a conflict with the store's rules, like rollback's others
    assert message.format(rev=rev) in r.output, r.output
    assert db_dump() == before


# -- self-registration: the stream is refused, nothing is written -----------------------

async def test_self_registration_at_a_mapped_address_refuses_the_stream(mesh: Invoke, db: str) -> None:
    engine = open_store(db)
    try:
        with write(engine, "token") as w:
            token = rotate_token(w, "orders-1")[1]
        code, details = await refused(engine, token, "orders-1", sidecar_meta(address="::ffff:127.0.0.1"))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        engine.dispose()
    assert f'node metadata of proxy "orders-1": node.metadata.meshgate.instance.address: ::ffff:127.0.0.1 ' \
           f"{WHY} 127.0.0.1" in details, details


# -- why: what a real Envoy does with a mapped address -------------------------------------

def _tcp_listener(name: str, host: str, port: int, cluster: str) -> dict[str, Any]:
    return {"name": name, "address": {"socket_address": {"address": host, "port_value": port}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                "stat_prefix": name, "cluster": cluster}}]}]}


def _eds_cluster(name: str, path: Path) -> dict[str, Any]:
    return {"name": name, "type": "EDS", "connect_timeout": "1s",
            "eds_cluster_config": {"eds_config": {"path_config_source": {"path": str(path)}}}}


def _assignment(name: str, host: str, port: int) -> dict[str, Any]:
    return {"version_info": "1", "resources": [{
        "@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment", "cluster_name": name,
        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
            "address": host, "port_value": port}}}}]}]}]}


def _get(port: int) -> int | None:
    """Status of GET / through a tcp_proxy listener; None when Envoy closed the connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/")
        return conn.getresponse().status
    except ConnectionError:  # reset or closed (http.client.RemoteDisconnected is one)
        return None
    finally:
        conn.close()


def test_envoy_can_neither_bind_nor_reach_a_mapped_address(tmp_path: Path) -> None:
    """The reason for the rule, measured: a listener on [::ffff:127.0.0.1] is NACKed
    (LDS), and an endpoint there (EDS) is accepted but every connection fails, while
    the same endpoint as 127.0.0.1 serves."""
    with App("orders") as app:
        admin, via_mapped, via_plain, mapped_listener = (free_port() for _ in range(4))
        (tmp_path / "mapped.json").write_text(json.dumps(_assignment("mapped", "::ffff:127.0.0.1", app.port)))
        (tmp_path / "plain.json").write_text(json.dumps(_assignment("plain", "127.0.0.1", app.port)))
        lds = _tcp_listener("inbound", "::ffff:127.0.0.1", mapped_listener, "plain")
        lds["@type"] = "type.googleapis.com/envoy.config.listener.v3.Listener"
        (tmp_path / "lds.json").write_text(json.dumps({"version_info": "1", "resources": [lds]}))
        boot = {
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
            "node": {"id": "mapped", "cluster": "mapped"},
            "dynamic_resources": {"lds_config": {"path_config_source": {"path": str(tmp_path / "lds.json")}}},
            "static_resources": {
                "listeners": [_tcp_listener("via-mapped", "127.0.0.1", via_mapped, "mapped"),
                              _tcp_listener("via-plain", "127.0.0.1", via_plain, "plain")],
                "clusters": [_eds_cluster("mapped", tmp_path / "mapped.json"),
                             _eds_cluster("plain", tmp_path / "plain.json")]},
        }
        with EnvoyProcess(boot, tmp_path, "envoy") as envoy:
            envoy.wait_live()
            wait_for("the LDS NACK", lambda: envoy.stat("listener_manager.lds.update_rejected") == 1)
            assert f"cannot bind '[::ffff:127.0.0.1]:{mapped_listener}': Invalid argument" in envoy.tail(200)
            assert envoy.stat("cluster.mapped.update_success") == 1  # EDS took the endpoint: no NACK
            assert envoy.stat("cluster.mapped.update_rejected") == 0
            assert _get(via_plain) == 200
            assert _get(via_mapped) is None
            wait_for("the failed connect", lambda: envoy.stat("cluster.mapped.upstream_cx_connect_fail") >= 1)
            assert envoy.stat("cluster.plain.upstream_cx_connect_fail") == 0
