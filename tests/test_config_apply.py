"""`meshgate apply` and `meshgate export`: one transaction and one revision per file,
through the store's own repositories, idempotent, and export round-trips.

Runs on SQLite and, with MESHGATE_TEST_PG, on PostgreSQL too.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from meshgate.cli import cli
from meshgate.config.world_compare import world_signature
from meshgate.store.db import open_store
from meshgate.store.world import load_world
from tests.config_kit import write_full_config
from tests.conftest import Invoke


@pytest.fixture
def db(store_url: str) -> str:
    return store_url


def _revisions(run: Invoke) -> list[dict[str, Any]]:
    r = run("history", "--limit", "1000", "-o", "json")
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


def _export(run: Invoke, fmt: str = "yaml") -> str:
    r = run("export", "--output", fmt)
    assert r.exit_code == 0, r.output
    return r.output


def _docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def test_every_kind_in_one_transaction_and_one_revision(initialized: Invoke, tmp_path: Path) -> None:
    path = write_full_config(tmp_path)
    before = len(_revisions(initialized))
    r = initialized("apply", "-f", str(path))
    assert r.exit_code == 0, r.output
    assert "applied" in r.output and "14 added, 1 changed, 0 removed" in r.output
    assert "+ Gateway 'public'" in r.output and "~ Mesh 'mesh' (mtls_mode, cert_ttl)" in r.output
    tokens = [ln for ln in r.output.splitlines() if ln.startswith("join token")]
    assert [t.split('"')[1] for t in tokens] == ["orders-1", "public"]
    revs = _revisions(initialized)
    assert len(revs) == before + 1
    newest = revs[0]
    assert newest["summary"].startswith(f"apply {path}: 14 added, 1 changed, 0 removed")
    kinds = {c["kind"] for c in newest["changes"]}
    assert kinds == {"mesh", "services", "jwt_providers", "proxies", "instances", "policies", "edge_routes"}

    # the store holds what the file says (read back through the CLI's own views)
    svc = json.loads(initialized("service", "show", "orders", "-o", "json").output)
    assert (svc["port"], svc["labels"]) == (8080, {"team": "shop", "tier": "1"})
    policies = json.loads(initialized("policy", "list", "-o", "json").output)
    assert sorted(p["id"] for p in policies) == [
        "allow-edge-public-to-orders", "allow-web-to-ledger", "allow-web-to-orders", "no-admin"]
    mesh = json.loads(initialized("mesh", "show", "-o", "json").output)
    assert (mesh["mtls_mode"], mesh["cert_ttl_seconds"]) == ("permissive", 1800)

    # idempotent: the same file again changes nothing and makes no revision
    again = initialized("apply", "-f", str(path))
    assert again.exit_code == 0, again.output
    assert again.output.strip() == "no changes: the store already matches the file"
    assert len(_revisions(initialized)) == before + 1
    # so does its own export, in either format
    for fmt in ("yaml", "json"):
        exported = tmp_path / f"export.{fmt}"
        exported.write_text(_export(initialized, fmt))
        r = initialized("apply", "-f", str(exported))
        assert r.output.strip() == "no changes: the store already matches the file", r.output


def test_export_round_trips_to_an_empty_database(
    initialized: Invoke, tmp_path: Path, db: str, store_url: str, request: pytest.FixtureRequest
) -> None:
    path = write_full_config(tmp_path)
    assert initialized("apply", "-f", str(path)).exit_code == 0
    # history made by other commands round-trips too
    assert initialized("service", "update", "web", "--port", "81", "--label", "x=y").exit_code == 0
    assert initialized("policy", "remove", "allow-web-to-ledger").exit_code == 0
    assert initialized("policy", "allow", "--from", "orders", "--to", "ledger").exit_code == 0
    exported = _export(initialized)
    (tmp_path / "export.yaml").write_text(exported)

    if "://" in db and not db.startswith("sqlite"):
        from tests.pgdb import fresh_database

        other_cm = fresh_database()
        other = other_cm.__enter__()
        request.addfinalizer(lambda: other_cm.__exit__(None, None, None))
    else:
        other = str(tmp_path / "other.db")
    runner = CliRunner()

    def run_other(*args: str) -> Any:
        return runner.invoke(cli, ["--db", other, *args], catch_exceptions=False)

    assert run_other("init", "--trust-domain", "example.org").exit_code == 0
    r = run_other("apply", "-f", str(tmp_path / "export.yaml"))
    assert r.exit_code == 0, r.output
    again = run_other("export").output
    # the same documents (the header names the revision, which differs)
    assert _docs(again) == _docs(exported)
    # and the same World, but for ids, counters, the revision and each mesh's own CA
    a, b = load_world(open_store(db)), load_world(open_store(other))
    strip = lambda w: world_signature(w).__class__(**{**world_signature(w).__dict__, "trust_roots_pem": ()})  # noqa: E731
    assert strip(a) == strip(b)


def test_prune_removes_what_the_file_omits_but_never_runtime_state(
    initialized: Invoke, tmp_path: Path, db: str
) -> None:
    from meshgate.store.instances import add_instance
    from meshgate.store.txn import write

    path = write_full_config(tmp_path)
    assert initialized("apply", "-f", str(path)).exit_code == 0
    assert initialized("service", "add", "extra").exit_code == 0
    assert initialized("policy", "allow", "--from", "extra", "--to", "orders", "--id", "extra-in").exit_code == 0
    assert initialized("proxy", "add", "web-1", "--service", "web").exit_code == 0
    # a replica the web-1 sidecar registered itself: runtime state, not config
    with write(open_store(db), "sidecar registers") as w:
        add_instance(w, "web", "127.0.0.1", 15020, 9000, proxy="web-1", source="proxy")

    plain = initialized("apply", "-f", str(path))
    assert plain.output.strip() == "no changes: the store already matches the file", plain.output

    r = initialized("apply", "-f", str(path), "--prune")
    assert r.exit_code == 0, r.output
    assert sorted(ln for ln in r.output.splitlines() if ln.startswith("- ")) == [
        "- Policy 'extra-in'", "- Service 'extra'", "- Sidecar 'web-1'"]
    services = [s["name"] for s in json.loads(initialized("service", "list", "-o", "json").output)]
    assert services == ["ledger", "orders", "web"]
    instances = json.loads(initialized("instance", "list", "-o", "json").output)
    assert [(i["inbound_port"], i["source"], i["proxy"]) for i in instances] == [
        (15006, "cli", "orders-1"), (15007, "cli", None), (15020, "proxy", None)]
    assert initialized("apply", "-f", str(path), "--prune").output.startswith("no changes")


def test_changes_are_updates_or_replacements_in_one_revision(initialized: Invoke, tmp_path: Path) -> None:
    path = write_full_config(tmp_path)
    assert initialized("apply", "-f", str(path)).exit_code == 0
    text = path.read_text()
    text = text.replace("port: 8080\nlabels: {team: shop, tier: \"1\"}", "port: 8081\nlabels: {team: shop}")
    text = text.replace("methods: [GET, HEAD]", "methods: [GET]")
    text = text.replace("rate: 100/s", "rate: 50/s")
    text = text.replace("audiences: [api]", "audiences: [api, admin]")
    text = text.replace("default_action: deny", "default_action: allow")
    path.write_text(text)
    before = len(_revisions(initialized))
    r = initialized("apply", "-f", str(path))
    assert r.exit_code == 0, r.output
    assert [ln for ln in r.output.splitlines() if ln[:1] in "+~-"] == [
        "~ EdgeRoute 'public-orders' (rate)",
        "~ JwtProvider 'auth0' (audiences)",
        "~ Mesh 'mesh' (default_action)",
        "~ Policy 'allow-web-to-orders' (methods)",
        "~ Service 'orders' (port, labels)",
    ]
    revs = _revisions(initialized)
    assert len(revs) == before + 1
    changes = revs[0]["changes"]
    # a policy and a route have no update in their repositories: removed and added again
    assert [(c["kind"], c["op"]) for c in changes if c["key"] == "allow-web-to-orders"] == [
        ("policies", "remove"), ("policies", "add")]
    assert [(c["kind"], c["op"]) for c in changes if c["key"] == "orders"] == [("services", "update")]
    # the composed diff of that revision shows the policy as one update
    d = json.loads(initialized("diff", str(before), "-o", "json").output)
    assert {(c["kind"], c["key"], c["op"]) for c in d} >= {
        ("policies", "allow-web-to-orders", "update"), ("services", "orders", "update")}


def test_store_refusals_are_all_listed_and_nothing_is_written(
    initialized: Invoke, tmp_path: Path, db_dump: Callable[[], str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "kind: Service\nname: orders\n---\n"
        "kind: Policy\naction: allow\nsources: [web]\ntarget: orders\n---\n"
        "kind: Instance\nservice: billing\naddress: 127.0.0.1\ninbound_port: 15006\napp_port: 1\n---\n"
        "kind: EdgeRoute\ngateway: nowhere\nhost: a.example.com\nprefix: /\nservice: orders\nauth: none\n"
    )
    before = db_dump()
    r = initialized("apply", "-f", str(path))
    assert r.exit_code == 1, r.output
    lines = [ln.strip() for ln in r.output.splitlines() if ln.startswith("  ")]
    assert lines[0] == f'{path}:6:11 (Policy "allow-web-to-orders"): sources[0]: unknown service "web"'
    assert lines[1] == f'{path}:9:1 (Instance "127.0.0.1:15006"): service "billing" not found'
    assert lines[2].startswith(f'{path}:15:1 (EdgeRoute "nowhere-orders"): edge gateway "nowhere" not found')
    assert len(lines) == 3
    assert db_dump() == before


def test_dry_run_and_stdin(initialized: Invoke, tmp_path: Path, db_dump: Callable[[], str]) -> None:
    text = write_full_config(tmp_path).read_text()
    before = db_dump()
    r = initialized("apply", "-f", "-", "--dry-run", input=text)
    assert r.exit_code == 0, r.output
    assert "dry run: 14 added, 1 changed, 0 removed; nothing was written" in r.output
    assert "join token" not in r.output
    assert db_dump() == before
    r = initialized("apply", "-f", "-", "-o", "json", input=text)
    out = json.loads(r.output)
    assert set(out["tokens"]) == {"orders-1", "public"} and out["revision"] == 2


def test_a_sidecar_is_not_silently_recreated(initialized: Invoke, tmp_path: Path) -> None:
    path = write_full_config(tmp_path)
    assert initialized("apply", "-f", str(path)).exit_code == 0
    path.write_text(path.read_text().replace("outbound_port: 15002", "outbound_port: 15003"))
    r = initialized("apply", "-f", str(path))
    assert r.exit_code == 1
    assert 'sidecar "orders-1": its service and outbound port are fixed' in r.output


def test_revoked_and_tokens_are_runtime(initialized: Invoke, tmp_path: Path) -> None:
    path = write_full_config(tmp_path)
    assert initialized("apply", "-f", str(path)).exit_code == 0
    assert initialized("proxy", "revoke", "orders-1").exit_code == 0
    exported = _export(initialized)
    assert "revoked" not in exported and "mgt_" not in exported and "token" not in exported.split("---", 1)[1]
    # applying the file neither un-revokes nor re-creates the proxy
    assert initialized("apply", "-f", str(path)).output.startswith("no changes")
    shown = json.loads(initialized("proxy", "list", "-o", "json").output)
    assert [p["revoked"] for p in shown if p["name"] == "orders-1"] == [True]


def test_a_failing_check_before_commit_writes_nothing(
    initialized: Invoke, tmp_path: Path, db: str, db_dump: Callable[[], str]
) -> None:
    """apply --validate's last check (the store still gives the World Envoy validated)
    runs inside the transaction: raising there rolls the whole file back."""
    from meshgate.config.apply import apply
    from meshgate.config.load import load_path
    from meshgate.errors import Conflict

    docs = load_path(str(write_full_config(tmp_path)))
    before = db_dump()
    seen: list[int] = []

    def expect(conn: Any) -> None:
        from meshgate.store.world import load_world_conn

        seen.append(len(load_world_conn(conn).services))  # the writes are visible here
        raise Conflict("the store changed while Envoy validated")

    engine = open_store(db)
    try:
        with pytest.raises(Conflict):
            apply(engine, docs, expect=expect)
    finally:
        engine.dispose()
    assert seen == [3]
    assert db_dump() == before


def test_two_instances_naming_one_sidecar_are_refused(
    initialized: Invoke, tmp_path: Path, db_dump: Callable[[], str]
) -> None:
    """A sidecar fronts one instance: apply goes through the same repository check
    as `instance add --proxy`, and writes nothing."""
    path = tmp_path / "twice.yaml"
    path.write_text(
        "kind: Service\nname: orders\n---\n"
        "kind: Sidecar\nname: orders-1\nservice: orders\n---\n"
        "kind: Instance\nservice: orders\naddress: 127.0.0.1\ninbound_port: 15006\napp_port: 8080\nproxy: orders-1\n---\n"
        "kind: Instance\nservice: orders\naddress: 127.0.0.1\ninbound_port: 15007\napp_port: 8081\nproxy: orders-1\n"
    )
    before = db_dump()
    r = initialized("apply", "-f", str(path))
    assert r.exit_code == 1, r.output
    assert 'proxy "orders-1" already fronts instance' in r.output
    assert db_dump() == before
