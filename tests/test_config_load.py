"""Config files that are wrong: every problem is listed with file:line:column, nothing is written."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from meshgate.config.errors import ConfigError
from meshgate.config.load import load_text
from meshgate.config.schema import KINDS, json_schema
from tests.conftest import Invoke


def _write(tmp_path: Path, text: str, name: str = "mesh.yaml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip())
    return str(path)


def _problems(result_output: str) -> list[str]:
    return [ln.strip() for ln in result_output.splitlines() if ln.startswith("  ")]


def test_yaml_syntax_error_names_line_and_column(
    initialized: Invoke, tmp_path: Path, db_dump: Callable[[], str]
) -> None:
    path = _write(tmp_path, """
        kind: Service
        name: orders
        port: [8080
        ---
        kind: Service
    """)
    before = db_dump()
    r = initialized("apply", "-f", path)
    assert r.exit_code == 2, r.output
    assert "error: 1 problem in the config; nothing was changed" in r.output
    (line,) = _problems(r.output)
    assert line.startswith(f"{path}:4:1: YAML syntax:"), line
    assert "Traceback" not in r.output
    assert db_dump() == before


def test_unknown_kinds_and_fields_are_all_listed(
    initialized: Invoke, tmp_path: Path, db_dump: Callable[[], str]
) -> None:
    path = _write(tmp_path, """
        kind: Service
        name: orders
        protocl: http
        colour: blue
        ---
        kind: Servise
        name: web
        ---
        name: nokind
        ---
        kind: Policy
        action: allow
        sources: [web]
        target: orders
        pathz: [{prefix: /a}]
    """)
    before = db_dump()
    r = initialized("apply", "-f", path)
    assert r.exit_code == 2, r.output
    assert _problems(r.output) == [
        f"{path}:3:1 (Service \"orders\"): unknown field 'protocl' for kind Service "
        "(fields: name, protocol, port, labels); did you mean 'protocol'?",
        f"{path}:4:1 (Service \"orders\"): unknown field 'colour' for kind Service "
        "(fields: name, protocol, port, labels)",
        f"{path}:6:7: unknown kind 'Servise' (one of: {', '.join(KINDS)}); did you mean Service?",
        f"{path}:9:1: document 3 has no `kind` (one of: {', '.join(KINDS)})",
        f"{path}:15:1 (Policy (document 4)): unknown field 'pathz' for kind Policy "
        "(fields: id, action, mode, sources, target, methods, paths, headers, grpc_methods, claims); "
        "did you mean 'paths'?",
    ]
    assert db_dump() == before


def test_types_required_fields_and_duplicate_keys(initialized: Invoke, tmp_path: Path) -> None:
    path = _write(tmp_path, """
        kind: Service
        name: orders
        port: "8080"
        labels: {tier: 1}
        ---
        kind: Instance
        service: orders
        address: 127.0.0.1
        inbound_port: 15006
        inbound_port: 15007
        ---
        kind: Policy
        action: permit
        sources: web
        target: orders
    """)
    r = initialized("apply", "-f", path)
    assert r.exit_code == 2, r.output
    assert _problems(r.output) == [
        f"{path}:10:1: key 'inbound_port' is given twice in one mapping",
    ]
    # without the duplicate key, every other shape problem shows at once
    Path(path).write_text(Path(path).read_text().replace("inbound_port: 15007\n", ""))
    r = initialized("apply", "-f", path)
    assert r.exit_code == 2, r.output
    assert _problems(r.output) == [
        f"{path}:3:7 (Service \"orders\"): port: expected a whole number, got '8080'",
        f"{path}:4:9 (Service \"orders\"): labels: 'tier': a number (1): keys and values must be "
        "text (quote numbers, e.g. '1')",
        f'{path}:6:1 (Instance "127.0.0.1:15006"): app_port: required for kind Instance',
        f"{path}:12:9 (Policy (document 3)): action: 'permit' is not one of: allow, deny",
        f"{path}:13:10 (Policy (document 3)): sources: expected a list, got 'web'",
    ]


def test_value_errors_from_the_store_validation_point_at_their_lines(
    initialized: Invoke, tmp_path: Path, db_dump: Callable[[], str]
) -> None:
    """The same rules as the CLI (store validation), mapped to the line of the field."""
    path = _write(tmp_path, """
        kind: Service
        name: Orders
        port: 70000
        ---
        kind: Policy
        id: p1
        action: allow
        sources: [web, web]
        target: orders
        methods: [GET, FETCH]
        paths:
          - prefix: /ok
          - glob: /a/***/b
        ---
        kind: Mesh
        trust_domain: other.org
        cert_ttl: forever
    """)
    before = db_dump()
    r = initialized("apply", "-f", path)
    assert r.exit_code == 2, r.output
    lines = _problems(r.output)
    assert lines[0].startswith(f'{path}:2:7 (Service "Orders"): name: \'Orders\' is not a DNS label')
    assert lines[1].startswith(f'{path}:3:7 (Service "Orders"): port: 70000 is not a port')
    assert lines[2] == f'{path}:8:16 (Policy "p1"): sources[1]: "web" is listed twice'
    assert lines[3].startswith(f'{path}:10:16 (Policy "p1"): methods[1]: unknown method "FETCH"')
    assert lines[4].startswith(f'{path}:13:5 (Policy "p1"): paths[1]:'), lines[4]
    assert lines[5].startswith(f"{path}:16:15 (Mesh (document 3)): trust_domain: 'other.org' differs")
    assert len(lines) == 6, lines
    assert db_dump() == before


def test_same_object_twice_is_refused(initialized: Invoke, tmp_path: Path) -> None:
    path = _write(tmp_path, """
        kind: Service
        name: orders
        ---
        kind: Service
        name: orders
        port: 81
    """)
    r = initialized("apply", "-f", path)
    assert r.exit_code == 2
    assert _problems(r.output) == [
        f"{path}:4:1 (Service \"orders\"): Service 'orders' is also given at {path}:1:1"
    ]


def test_missing_file_and_bad_encoding(initialized: Invoke, tmp_path: Path) -> None:
    r = initialized("apply", "-f", "nope.yaml")
    assert r.exit_code == 2
    assert "nope.yaml: no such file" in r.output
    (tmp_path / "bin.yaml").write_bytes(b"kind: Service\nname: \xff\xfe\n")
    r = initialized("plan", "-f", str(tmp_path / "bin.yaml"))
    assert r.exit_code == 2
    assert "not UTF-8 text" in r.output


def test_a_json_list_of_documents_is_read_like_a_stream() -> None:
    text = json.dumps([{"kind": "Service", "name": "a"}, {"kind": "Service", "nam": "b"}], indent=1)
    with pytest.raises(ConfigError) as info:
        load_text(text, "x.json")
    unknown, missing = info.value.problems
    assert unknown.where.startswith("x.json:8:")  # the line of "nam" in the indented JSON
    assert "unknown field 'nam'" in unknown.message
    assert missing.where.startswith("x.json:6:") and missing.message == "name: required for kind Service"


def test_json_schema_has_every_kind_and_field() -> None:
    schema = json_schema()
    kinds = {s["title"]: s for s in schema["oneOf"]}
    assert list(kinds) == list(KINDS)
    for name, spec in KINDS.items():
        props = kinds[name]["properties"]
        assert set(props) == {"kind"} | {f.name for f in spec.fields}
        assert kinds[name]["additionalProperties"] is False
        assert set(kinds[name]["required"]) == {"kind"} | {f.name for f in spec.fields if f.required}


def test_merge_keys_work_as_in_safe_load() -> None:
    import yaml

    text = textwrap.dedent("""\
        - &defaults {kind: Service, protocol: grpc, port: 80}
        - <<: *defaults
          name: orders
          port: 8080
        - <<: [{port: 1}, *defaults]
          name: web
        """)
    assert load_text_docs(text) == list(yaml.safe_load_all(text))
    assert load_text_docs(text)[0][1] == {"kind": "Service", "protocol": "grpc", "port": 8080, "name": "orders"}
    with pytest.raises(ConfigError, match="key 'name' is given twice"):
        load_text_docs("<<: {name: a}\nname: b\nname: c\n")


def load_text_docs(text: str) -> list[object]:
    from meshgate.config.source import read_documents

    return [d.value for d in read_documents(text, "m.yaml")]
