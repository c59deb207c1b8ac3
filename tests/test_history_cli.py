"""`meshgate history`, `diff` and `rollback`: revisions listed, composed, and restored as a
new revision, never restoring revoked tokens or CA material.

Runs on SQLite and, with MESHGATE_TEST_PG, on PostgreSQL too.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshgate.store.db import open_store
from meshgate.store.instances import add_instance
from meshgate.store.proxies import rotate_token
from meshgate.store.txn import write
from tests.config_kit import write_full_config
from tests.conftest import Invoke


@pytest.fixture
def db(store_url: str) -> str:
    return store_url


def _json(run: Invoke, *args: str) -> Any:
    r = run(*args, "-o", "json")
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


def _config(run: Invoke) -> list[dict[str, Any]]:
    r = run("export")
    assert r.exit_code == 0, r.output
    return [d for d in yaml.safe_load_all(r.output) if d]


def _rev(run: Invoke) -> int:
    return int(_json(run, "history", "--limit", "1")[0]["revision"])


def test_history_lists_every_write_newest_first(initialized: Invoke, tmp_path: Path) -> None:
    initialized("--actor", "alice@ops", "service", "add", "orders", "--port", "8080")
    initialized("--actor", "bob@ops", "service", "update", "orders", "--port", "8081")
    revs = _json(initialized, "history")
    assert [(r["revision"], r["actor"], r["summary"]) for r in revs] == [
        (3, "bob@ops", "service update orders"),
        (2, "alice@ops", "service add orders"),
        (1, "test@meshgate", "init mesh example.org"),
    ]
    (change,) = revs[0]["changes"]
    assert (change["kind"], change["key"], change["op"]) == ("services", "orders", "update")
    assert (change["before"]["port"], change["after"]["port"]) == (8080, 8081)
    assert [r["revision"] for r in _json(initialized, "history", "--limit", "2")] == [3, 2]
    table = initialized("history", "--changes")
    assert "revision 3" in table.output and "~ services 'orders': port 8080 -> 8081" in table.output
    plain = initialized("history")
    assert "service update orders" in plain.output and "alice@ops" in plain.output


def test_diff_composes_revisions_both_ways(initialized: Invoke) -> None:
    initialized("service", "add", "orders", "--port", "8080")          # 2
    initialized("service", "update", "orders", "--port", "8081")       # 3
    initialized("service", "update", "orders", "--port", "8082")       # 4
    initialized("service", "add", "web")                               # 5
    initialized("service", "remove", "web")                            # 6
    forward = _json(initialized, "diff", "2")
    assert [(c["kind"], c["key"], c["op"]) for c in forward] == [("services", "orders", "update")]
    assert (forward[0]["before"]["port"], forward[0]["after"]["port"]) == (8080, 8082)
    assert forward[0]["revision"] == 4  # the last revision that touched it
    back = _json(initialized, "diff", "4", "2")
    assert (back[0]["before"]["port"], back[0]["after"]["port"]) == (8082, 8080)
    one = _json(initialized, "diff", "4", "5")
    assert [(c["key"], c["op"]) for c in one] == [("web", "add")]
    assert initialized("diff", "5", "6").output.strip() == "- services 'web'"
    assert initialized("diff", "6").output.strip() == "no differences"
    text = initialized("diff", "1")
    assert "+ services 'orders'" in text.output
    missing = initialized("diff", "99")
    assert missing.exit_code == 1
    assert missing.output.strip() == "error: revision 99 not found: revisions are 1 to 6 (see `meshgate history`)"


def test_rollback_restores_the_config_as_a_new_revision(
    initialized: Invoke, tmp_path: Path, db: str
) -> None:
    path = write_full_config(tmp_path)
    assert initialized("apply", "-f", str(path)).exit_code == 0
    target = _rev(initialized)
    at_target = _config(initialized)
    # a mix of later changes, through the CLI and a second apply
    assert initialized("service", "update", "orders", "--port", "9999").exit_code == 0
    assert initialized("policy", "remove", "no-admin").exit_code == 0
    assert initialized("edge", "route", "remove", "public-admin").exit_code == 0
    assert initialized("instance", "remove", "2").exit_code == 0
    assert initialized("service", "add", "billing", "--protocol", "grpc").exit_code == 0
    assert initialized("mesh", "set", "--default-action", "allow").exit_code == 0
    assert initialized("proxy", "add", "billing-1", "--service", "billing").exit_code == 0
    latest = _rev(initialized)
    assert _config(initialized) != at_target

    r = initialized("rollback", str(target), "--yes")
    assert r.exit_code == 0, r.output
    assert f"rolled back to revision {target} (revision {latest + 1})" in r.output
    assert _config(initialized) == at_target
    assert initialized("diff", str(target)).output.strip() == "no differences"
    # history is kept, the rollback is one more revision
    revs = _json(initialized, "history", "--limit", "100")
    assert revs[0]["summary"] == f"rollback to revision {target}"
    assert [r["revision"] for r in revs][:2] == [latest + 1, latest]
    # and it can itself be rolled back; the proxy it brings back has a new token
    again = initialized("rollback", str(latest), "--yes")
    assert again.exit_code == 0, again.output
    assert 'join token for proxy "billing-1"' in again.output
    diff = _json(initialized, "diff", str(latest))
    assert [(c["kind"], c["key"], c["op"]) for c in diff] == [("proxies", "billing-1", "update")]
    assert {k for k in diff[0]["after"] if diff[0]["after"][k] != diff[0]["before"][k]} == {"token_hash"}


def token_hash_of_(db: str, name: str) -> str:
    from meshgate.store.proxies import token_hash_of

    with open_store(db).connect() as conn:
        return token_hash_of(conn, name)


def test_rollback_never_restores_tokens_revocation_or_ca(initialized: Invoke, db: str) -> None:
    assert initialized("service", "add", "orders").exit_code == 0
    for name in ("orders-1", "orders-2", "orders-3"):
        assert initialized("proxy", "add", name, "--service", "orders").exit_code == 0
    target = _rev(initialized)
    hashes = {p["name"]: p for p in _json(initialized, "proxy", "list")}
    assert initialized("proxy", "revoke", "orders-1").exit_code == 0
    with write(open_store(db), "rotate token") as w:
        rotate_token(w, "orders-2")
    rotated = token_hash_of_(db, "orders-2")
    assert initialized("proxy", "remove", "orders-3").exit_code == 0
    assert initialized("ca", "rotate").exit_code == 0
    ca_before = _json(initialized, "ca", "show")

    r = initialized("rollback", str(target), "--yes")
    assert r.exit_code == 0, r.output
    # the revoked proxy stays revoked, the rotated token stays rotated
    assert token_hash_of_(db, "orders-2") == rotated
    listed = {p["name"]: p for p in _json(initialized, "proxy", "list")}
    assert listed["orders-1"]["revoked"] is True
    # the removed proxy is back, with a NEW token (printed once), never its old one
    token_lines = [ln for ln in r.output.splitlines() if ln.startswith('join token for proxy "orders-3"')]
    assert len(token_lines) == 1
    assert listed["orders-3"]["revoked"] is False
    assert "never rolled back" in r.output and "CA certificates" in r.output
    assert "NEW join token" in r.output
    # the CA is as the rotation left it
    assert _json(initialized, "ca", "show") == ca_before
    assert set(hashes) == set(listed)


def test_a_proxy_revoked_at_the_target_revision_comes_back_revoked(initialized: Invoke) -> None:
    assert initialized("service", "add", "orders").exit_code == 0
    assert initialized("proxy", "add", "orders-1", "--service", "orders").exit_code == 0
    assert initialized("proxy", "revoke", "orders-1").exit_code == 0
    target = _rev(initialized)
    assert initialized("proxy", "remove", "orders-1").exit_code == 0
    r = initialized("rollback", str(target), "--yes")
    assert r.exit_code == 0, r.output
    assert "join token" not in r.output and "back revoked" in r.output
    listed = {p["name"]: p for p in _json(initialized, "proxy", "list")}
    assert listed["orders-1"]["revoked"] is True


def test_rollback_that_breaks_a_constraint_is_refused(
    initialized: Invoke, db: str, db_dump: Callable[[], str]
) -> None:
    assert initialized("service", "add", "orders").exit_code == 0
    args = ("--address", "127.0.0.1", "--inbound-port", "15006", "--app-port", "8080")
    assert initialized("instance", "add", "orders", *args).exit_code == 0
    target = _rev(initialized)
    assert initialized("instance", "remove", "1").exit_code == 0
    assert initialized("proxy", "add", "orders-1", "--service", "orders").exit_code == 0
    # the sidecar registers itself at the same address: runtime state, never rolled back
    with write(open_store(db), "sidecar registers") as w:
        add_instance(w, "orders", "127.0.0.1", 15006, 8080, proxy="orders-1", source="proxy")
    before = db_dump()
    r = initialized("rollback", str(target), "--yes")
    assert r.exit_code == 1, r.output
    assert r.output.startswith(f"error: cannot restore instances '1' as of revision {target}:")
    assert "nothing was changed" in r.output
    assert db_dump() == before


def test_rollback_asks_first_and_refuses_unknown_revisions(
    initialized: Invoke, db_dump: Callable[[], str]
) -> None:
    assert initialized("service", "add", "orders").exit_code == 0
    before = db_dump()
    r = initialized("rollback", "1", input="n\n")
    assert r.exit_code == 1
    assert "rolling back to revision 1 undoes:" in r.output and "- services 'orders'" in r.output
    assert "Aborted" in r.output
    assert db_dump() == before
    assert initialized("rollback", "2", "--yes").output.strip().startswith("nothing to roll back")
    assert initialized("rollback", "7", "--yes").exit_code == 1
    assert db_dump() == before
    assert initialized("rollback", "1", input="y\n").exit_code == 0
    assert _json(initialized, "service", "list") == []
