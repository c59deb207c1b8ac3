"""docs/cli.md is generated from the commands and must match them; every command and
option has help text; meshgate's core commands show examples."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshgate.cli.docgen import REGENERATE, documented_options, entries, help_text, render, sections

DOC = Path(__file__).resolve().parent.parent / "docs" / "cli.md"


def test_cli_reference_is_up_to_date() -> None:
    expected = render()
    actual = DOC.read_text() if DOC.exists() else ""
    if actual == expected:
        return
    want, have = sections(expected), sections(actual)
    missing = [k for k in want if k not in have]
    extra = [k for k in have if k not in want]
    changed = [k for k in want if k in have and want[k] != have[k]]
    detail = "; ".join(
        f"{label}: {', '.join(names)}"
        for label, names in (("missing", missing), ("changed", changed), ("removed", extra))
        if names
    ) or "header or order changed"
    pytest.fail(
        f"docs/cli.md is stale ({detail}).\n"
        f"Regenerate it from the repository root:  {REGENERATE}",
        pytrace=False,
    )


def test_every_command_and_option_has_help() -> None:
    missing: list[str] = []
    for entry in entries():
        if not help_text(entry.command):
            missing.append(f"{entry.path}: no help text (docstring)")
        for opt in documented_options(entry):
            if not (opt.help or "").strip():
                missing.append(f"{entry.path} {opt.opts[0]}: option without help=")
    assert not missing, "undocumented:\n" + "\n".join(missing)


CORE = ("meshgate init", "meshgate mesh", "meshgate service", "meshgate instance")


def test_core_commands_have_examples() -> None:
    core = [e for e in entries() if e.path.startswith(CORE)]
    assert len(core) >= 12  # init, mesh (2), service (5), instance (3), and the groups
    lacking = [e.path for e in core if "Examples:" not in help_text(e.command)]
    assert not lacking, f"no Examples: in {lacking}"


def test_docgen_finds_commands_added_later() -> None:
    """A command registered on any group shows up with its help, without editing docgen."""
    import click

    @click.group()
    def root() -> None:
        """Root."""

    @root.group("thing")
    def thing() -> None:
        """Things."""

    @thing.command("poke")
    @click.option("--hard", is_flag=True, help="Poke hard.")
    @click.argument("name")
    def poke(hard: bool, name: str) -> None:
        """Poke a <thing>.

        \b
        Examples:
            meshgate thing poke x --hard
        """

    text = render(root)
    assert "### meshgate thing poke" in text
    assert "meshgate thing poke [OPTIONS] NAME" in text
    assert "Poke a &lt;thing&gt;." in text
    assert "- `--hard`: Poke hard." in text
    assert "```sh\nmeshgate thing poke x --hard\n```" in text
    assert "- [`poke`](#meshgate-thing-poke): Poke a &lt;thing&gt;." in text
