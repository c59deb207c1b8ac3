"""`meshgate mesh show|set`."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import yaml
from conftest import Invoke

from meshgate.durations import format_duration, parse_duration


def test_show_table_json_yaml(initialized: Invoke) -> None:
    table = initialized("mesh", "show")
    assert table.exit_code == 0, table.output
    for text in ("example.org", "strict", "deny", "1h", "30s"):
        assert text in table.output
    as_json = json.loads(initialized("mesh", "show", "--output", "json").output)
    assert as_json["trust_domain"] == "example.org"
    assert as_json["cert_ttl_seconds"] == 3600
    as_yaml = yaml.safe_load(initialized("mesh", "show", "-o", "yaml").output)
    assert as_yaml == as_json


def test_set_changes_only_what_is_given_and_records_a_revision(
    initialized: Invoke, db_path: Path
) -> None:
    result = initialized("mesh", "set", "--mtls-mode", "permissive", "--cert-ttl", "30m")
    assert result.exit_code == 0, result.output
    assert "revision 2" in result.output
    assert "mtls_mode 'strict' -> 'permissive'" in result.output
    shown = json.loads(initialized("mesh", "show", "-o", "json").output)
    assert shown["mtls_mode"] == "permissive"
    assert shown["cert_ttl_seconds"] == 1800
    assert shown["default_action"] == "deny"
    assert shown["instance_grace_seconds"] == 30

    conn = sqlite3.connect(db_path)
    try:
        actor, summary, changes = conn.execute(
            "SELECT actor, summary, changes FROM revisions WHERE id = 2"
        ).fetchone()
    finally:
        conn.close()
    assert (actor, summary) == ("test@meshgate", "mesh set")
    (change,) = json.loads(changes)
    assert change["kind"] == "mesh" and change["op"] == "update"
    assert change["before"]["mtls_mode"] == "strict"
    assert change["after"]["mtls_mode"] == "permissive"
    assert change["after"]["cert_ttl_seconds"] == 1800


def test_set_to_the_same_values_makes_no_revision(initialized: Invoke, db_path: Path) -> None:
    result = initialized("mesh", "set", "--mtls-mode", "strict", "--cert-ttl", "60m")
    assert result.exit_code == 0, result.output
    assert "mesh unchanged" in result.output
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("SELECT COUNT(*) FROM revisions").fetchone() == (1,)
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("30m", 1800), ("1h", 3600), ("1h30m", 5400), ("2d", 172800), ("600", 600),
     ("1d2h3m4s", 93784), (" 5M ", 300)],
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "1 h", "h", "1x", "-5m", "1.5h", "30m1h", "1h1h", "m30"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize("seconds", [0, 1, 59, 60, 3600, 5400, 86400, 93784])
def test_format_duration_round_trips(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


def test_shell_completion_offers_the_choices() -> None:
    """Lenient choice options still complete their values in the shell."""
    from click.shell_completion import ShellComplete

    from meshgate.cli import cli

    complete = ShellComplete(cli, {}, "meshgate", "_MESHGATE_COMPLETE")

    def values(args: list[str], incomplete: str) -> list[str]:
        return [c.value for c in complete.get_completions(args, incomplete)]

    assert values(["mesh", "set", "--mtls-mode"], "") == ["strict", "permissive"]
    assert values(["service", "add", "orders", "--protocol"], "g") == ["grpc"]
    assert "service" in values([], "ser")
    assert set(values(["service"], "")) >= {"add", "list", "show", "update", "remove"}
