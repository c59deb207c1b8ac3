"""docs/config.md stays true: its generated reference matches the schema, every kind and
field is documented, and its example file applies to a new mesh."""

from __future__ import annotations

import json
import re
from pathlib import Path

from meshgate.config.reference import END, START, reference
from meshgate.config.schema import KINDS, json_schema
from tests.conftest import Invoke

DOC = Path(__file__).resolve().parent.parent / "docs" / "config.md"


def test_generated_reference_is_up_to_date() -> None:
    text = DOC.read_text()
    assert START in text and END in text
    generated = text[text.index(START): text.index(END) + len(END)] + "\n"
    assert generated == reference(), (
        "docs/config.md is stale; regenerate it from the repository root: "
        "python -m meshgate.config.reference docs/config.md"
    )


def test_schema_block_and_field_tables_cover_every_kind() -> None:
    text = DOC.read_text()
    block = re.search(r"## JSON schema.*?```json\n(.*?)```", text, re.S)
    assert block is not None
    assert json.loads(block.group(1)) == json_schema()
    for kind, spec in KINDS.items():
        section = text.split(f"### {kind}\n", 1)[1].split("###", 1)[0]
        for f in spec.fields:
            assert f"| `{f.name}` |" in section, f"{kind}.{f.name} is not documented"


def test_the_example_applies_to_a_new_mesh(initialized: Invoke, tmp_path: Path) -> None:
    example = re.search(r"## A file.*?```yaml\n(.*?)```", DOC.read_text(), re.S)
    assert example is not None
    path = tmp_path / "example.yaml"
    path.write_text(example.group(1))
    r = initialized("apply", "-f", str(path))
    assert r.exit_code == 0, r.output
    assert "9 added, 0 changed, 0 removed" in r.output
    assert initialized("apply", "-f", str(path)).output.startswith("no changes")
