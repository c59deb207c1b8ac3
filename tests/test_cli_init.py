"""`meshgate init`: creates the database and the mesh in one revision, refuses twice."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from conftest import Invoke, dump_database


def _revisions(path: Path) -> list[tuple[int, str, str, str]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT id, actor, summary, changes FROM revisions ORDER BY id").fetchall()
    finally:
        conn.close()


def test_init_creates_database_and_mesh_in_one_revision(run: Invoke, db_path: Path) -> None:
    result = run("init", "--trust-domain", "example.org")
    assert result.exit_code == 0, result.output
    assert "created mesh example.org" in result.output
    assert db_path.exists()

    conn = sqlite3.connect(db_path)
    try:
        row = conn.execute(
            "SELECT trust_domain, mtls_mode, default_action, cert_ttl_seconds, "
            "instance_grace_seconds FROM mesh"
        ).fetchall()
        assert row == [("example.org", "strict", "deny", 3600, 30)]
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        conn.close()

    revs = _revisions(db_path)
    assert len(revs) == 1
    _id, actor, summary, changes = revs[0]
    assert actor == "test@meshgate"
    assert summary == "init mesh example.org"
    all_changes = json.loads(changes)
    # the same revision also records the mesh's root CA (issue 4)
    # revision convention: kind = table, key = primary key, after = the full row
    assert [(c["kind"], c["key"], c["op"]) for c in all_changes] == [
        ("mesh", "1", "add"), ("ca_certs", "1", "add")
    ]
    (mesh_change,) = [c for c in all_changes if c["kind"] == "mesh"]
    assert mesh_change["before"] is None
    created = mesh_change["after"].pop("created_at")
    assert isinstance(created, float)
    assert mesh_change["after"] == {
        "id": 1,
        "trust_domain": "example.org",
        "mtls_mode": "strict",
        "default_action": "deny",
        "cert_ttl_seconds": 3600,
        "instance_grace_seconds": 30,
    }
    # the CA row is recorded without its sealed private key
    (ca_change,) = [c for c in all_changes if c["kind"] == "ca_certs"]
    assert ca_change["after"]["key_encrypted"] == "(redacted)"
    assert ca_change["after"]["status"] == "active"


def test_init_with_every_option(run: Invoke, db_path: Path) -> None:
    result = run(
        "--actor", "alice@ops",
        "init", "--trust-domain", "corp.example", "--mtls-mode", "permissive",
        "--default-action", "allow", "--cert-ttl", "1h30m", "--instance-grace", "2m",
    )
    assert result.exit_code == 0, result.output
    shown = run("mesh", "show", "--output", "json")
    assert json.loads(shown.output) == {
        "trust_domain": "corp.example",
        "mtls_mode": "permissive",
        "default_action": "allow",
        "cert_ttl_seconds": 5400,
        "instance_grace_seconds": 120,
        "revision": 1,
    }
    assert _revisions(db_path)[0][1] == "alice@ops"


def test_init_refuses_an_existing_mesh(initialized: Invoke, db_path: Path) -> None:
    before = dump_database(db_path)
    result = initialized("init", "--trust-domain", "other.org")
    assert result.exit_code == 1, result.output
    assert "error: a mesh already exists" in result.output
    assert "example.org" in result.output
    assert dump_database(db_path) == before


def test_init_db_from_environment(run: Invoke, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from click.testing import CliRunner

    from meshgate.cli import cli

    target = tmp_path / "env.db"
    monkeypatch.setenv("MESHGATE_DB", str(target))
    result = CliRunner().invoke(cli, ["init", "--trust-domain", "env.example"])
    assert result.exit_code == 0, result.output
    assert target.exists()
    assert not (tmp_path / "meshgate.db").exists()


def test_init_default_path_is_the_working_directory(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from meshgate.cli import cli

    # conftest chdirs into tmp_path and clears MESHGATE_DB
    result = CliRunner().invoke(cli, ["init", "--trust-domain", "cwd.example"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "meshgate.db").exists()


def test_init_into_a_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from meshgate.cli import cli

    target = tmp_path / "no" / "such" / "dir.db"
    result = CliRunner().invoke(cli, ["--db", str(target), "init", "--trust-domain", "x.org"])
    assert result.exit_code == 1, result.output
    assert result.output.startswith("error: cannot open database"), result.output
    assert "Traceback" not in result.output
    assert not target.exists()


def test_commands_before_init_say_to_run_init(run: Invoke, db_path: Path) -> None:
    result = run("service", "list")
    assert result.exit_code == 1, result.output
    assert "meshgate init" in result.output
    assert not db_path.exists()


def test_a_failure_inside_init_leaves_no_database(
    run: Invoke, db_path: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """A step after the mesh row (e.g. creating the CA) failing must leave nothing behind."""
    import meshgate.cli.init as init_module
    from meshgate.errors import MeshgateError

    real = init_module.create_mesh

    def create_then_fail(w, *args, **kwargs):  # type: ignore[no-untyped-def]
        real(w, *args, **kwargs)
        raise MeshgateError("CA could not be created")

    monkeypatch.setattr(init_module, "create_mesh", create_then_fail)
    result = run("init", "--trust-domain", "example.org")
    assert result.exit_code == 1, result.output
    assert result.output.strip() == "error: CA could not be created"
    assert not db_path.exists()
    assert list(db_path.parent.glob("meshgate.db*")) == []
