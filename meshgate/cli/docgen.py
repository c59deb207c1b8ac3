"""docs/cli.md, generated from the click commands themselves.

    python -m meshgate.cli.docgen > docs/cli.md

Walks every group and command registered on `meshgate.cli.cli` (including the
ones other modules add later), so the reference cannot drift from the code:
tests/test_cli_docs.py fails when docs/cli.md differs from this output or when
a command or option has no help text.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import click

REGENERATE = "python -m meshgate.cli.docgen > docs/cli.md"

HEADER = f"""# meshgate command reference

Generated from the commands themselves: do not edit by hand. Regenerate with

```sh
{REGENERATE}
```

Every command takes `-h` / `--help`. Exit codes: 0 success; 1 a domain error (not found, already exists, conflict,
database unavailable); 2 bad usage or invalid input. Errors are one line on
stderr, `error: ...`, naming every invalid field.
"""


@dataclass(frozen=True)
class Entry:
    """One command in the tree, with the click context that names it."""

    command: click.Command
    ctx: click.Context

    @property
    def path(self) -> str:
        return self.ctx.command_path


def walk(command: click.Command, ctx: click.Context) -> Iterator[Entry]:
    """`command` and everything under it, depth first, subcommands in listed order."""
    yield Entry(command, ctx)
    if isinstance(command, click.Group):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is None or sub.hidden:
                continue
            yield from walk(sub, click.Context(sub, info_name=name, parent=ctx))


def entries(root: click.Command | None = None, prog: str = "meshgate") -> list[Entry]:
    if root is None:
        from meshgate.cli import cli

        root = cli
    # The root's context settings (e.g. `-h` for help) reach every subcommand, as
    # in a real invocation.
    return list(walk(root, click.Context(root, info_name=prog, **root.context_settings)))


def documented_options(entry: Entry) -> list[click.Option]:
    """The options shown for a command (not --help, not hidden)."""
    help_option = entry.command.get_help_option(entry.ctx)
    return [
        p
        for p in entry.command.get_params(entry.ctx)
        if isinstance(p, click.Option) and not p.hidden and p is not help_option
    ]


def help_text(command: click.Command) -> str:
    """The command's help as click shows it: up to a `\\f`, dedented."""
    text = command.help or ""
    return inspect.cleandoc(text.split("\f", 1)[0]).strip()


def _escape(text: str) -> str:
    """Markdown-safe prose: `<name>` outside inline code would vanish as an HTML tag."""
    parts = text.split("`")
    for i in range(0, len(parts), 2):
        parts[i] = parts[i].replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return "`".join(parts)


def _help_markdown(text: str) -> list[str]:
    """Paragraphs as text; a click `\\b` paragraph keeps its lines: its indented lines
    (examples) become a shell code block."""
    out: list[str] = []
    for para in text.split("\n\n"):
        lines = para.splitlines()
        if lines and lines[0].strip() == "\b":
            lines = lines[1:]
            plain = [ln for ln in lines if not ln.startswith((" ", "\t"))]
            code = [ln.strip() for ln in lines if ln.startswith((" ", "\t"))]
            if plain:
                out += ["  \n".join(_escape(ln.strip()) for ln in plain), ""]
            if code:
                out += ["```sh", *code, "```", ""]
        else:
            out += [_escape(" ".join(ln.strip() for ln in lines)), ""]
    return out


def _usage(entry: Entry) -> str:
    pieces = entry.command.collect_usage_pieces(entry.ctx)
    return " ".join([entry.path, *pieces])


def render_entry(entry: Entry) -> list[str]:
    cmd, ctx = entry.command, entry.ctx
    depth = min(len(entry.path.split()), 3)
    out = ["#" * (depth + 1) + f" {entry.path}", ""]
    out += ["```", _usage(entry), "```", ""]
    out += _help_markdown(help_text(cmd))
    args = [p for p in cmd.get_params(ctx) if isinstance(p, click.Argument)]
    if args:
        out += ["Arguments:", ""]
        for a in args:
            need = "required" if a.required else "optional"
            many = ", repeatable" if a.nargs == -1 else ""
            out.append(f"- `{a.make_metavar(ctx)}` ({need}{many})")
        out.append("")
    opts = documented_options(entry)
    if opts:
        out += ["Options:", ""]
        for o in opts:
            record = o.get_help_record(ctx)
            if record is None:
                continue
            names, text = record
            text = _escape(" ".join(text.split()))
            out.append(f"- `{names}`: {text}" if text else f"- `{names}`")
        out.append("")
    if isinstance(cmd, click.Group):
        subs = [(n, cmd.get_command(ctx, n)) for n in cmd.list_commands(ctx)]
        shown = [(n, c) for n, c in subs if c is not None and not c.hidden]
        if shown:
            out += ["Commands:", ""]
            for name, sub in shown:
                anchor = f"{entry.path} {name}".replace(" ", "-")
                short = _escape(sub.get_short_help_str(limit=200))
                out.append(f"- [`{name}`](#{anchor}): {short}")
            out.append("")
    return out


def render(root: click.Command | None = None) -> str:
    lines = [HEADER]
    for entry in entries(root):
        lines += render_entry(entry)
    return "\n".join(lines).rstrip() + "\n"


def sections(markdown: str) -> dict[str, str]:
    """Heading (`meshgate service add`) -> its text, for naming what is stale."""
    found: dict[str, str] = {}
    current = ""
    for line in markdown.splitlines():
        if line.startswith("#") and " meshgate" in line:
            current = line.lstrip("#").strip()
            found[current] = ""
        elif current:
            found[current] += line + "\n"
    return found


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
