"""The `meshgate` command line: click groups, one module per noun.

Errors: a `MeshgateError` prints one line `error: ...` and exits with its
code (1 for domain errors: not found, exists, conflict; 2 for invalid input);
click's usage errors exit 2. No command prints a traceback for bad input.
"""

from __future__ import annotations

import importlib

import click
from sqlalchemy.exc import DatabaseError

from meshgate import __version__
from meshgate.cli.context import pass_ctx  # noqa: F401  (re-exported for noun modules)
from meshgate.errors import MeshgateError, printable

# (module, attribute) of every command; each noun module owns its commands.
COMMANDS: list[tuple[str, str]] = [
    ("meshgate.cli.init", "init"),
    ("meshgate.cli.mesh", "mesh"),
    ("meshgate.cli.service", "service"),
    ("meshgate.cli.instance", "instance"),
    ("meshgate.cli.proxy", "proxy"),
    ("meshgate.cli.policy", "policy"),
    ("meshgate.cli.edge", "edge"),
    ("meshgate.cli.jwt", "jwt"),
    ("meshgate.cli.ca", "ca"),
    ("meshgate.cli.serve", "serve"),
    ("meshgate.cli.demo", "demo"),
    ("meshgate.cli.config", "apply"),
    ("meshgate.cli.config", "export"),
    ("meshgate.cli.config", "plan"),
    ("meshgate.cli.config", "validate"),
    ("meshgate.cli.history", "history"),
    ("meshgate.cli.history", "diff"),
    ("meshgate.cli.history", "rollback"),
    ("meshgate.cli.observe", "top"),
    ("meshgate.cli.observe", "events"),
]


class MeshgateGroup(click.Group):
    """Turns meshgate's own errors into one clear line and an exit code."""

    def invoke(self, ctx: click.Context):  # type: ignore[no-untyped-def]
        try:
            return super().invoke(ctx)
        except MeshgateError as exc:
            # values in messages come from the user: never let them add lines or hide text
            text = str(exc)
            lines = text.split("\n") if exc.multiline else [text]
            click.echo("error: " + "\n".join(printable(line) for line in lines), err=True)
            ctx.exit(exc.exit_code)
        except DatabaseError as exc:
            # e.g. a --db file that is not a database: one line, never a traceback.
            click.echo(f"error: database error: {exc.orig}", err=True)
            ctx.exit(1)


@click.group(cls=MeshgateGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--db",
    envvar="MESHGATE_DB",
    default=None,
    metavar="PATH|URL",
    help="Database: a SQLite file path or any SQLAlchemy URL "
    "(default ./meshgate.db; env MESHGATE_DB).",
)
@click.option(
    "--actor",
    envvar="MESHGATE_ACTOR",
    default=None,
    help="Who is making changes, recorded in each revision (default user@host).",
)
@click.version_option(__version__, prog_name="meshgate")
@click.pass_context
def cli(ctx: click.Context, db: str | None, actor: str | None) -> None:
    """meshgate: secure microservices with Envoy, at the edge and inside.

    Services and policies live in SQL; `meshgate serve` streams them to Envoy
    edge gateways and sidecars over xDS. Start with `meshgate init`.

    Shell completion (bash): eval "$(_MESHGATE_COMPLETE=bash_source meshgate)"
    (zsh: zsh_source, fish: fish_source).
    """
    from meshgate.cli.context import CliContext

    ctx.obj = CliContext(db=db, actor=actor)
    ctx.call_on_close(ctx.obj.close)


for _module, _attr in COMMANDS:
    cli.add_command(getattr(importlib.import_module(_module), _attr))


def main() -> None:
    cli(prog_name="meshgate")


if __name__ == "__main__":  # pragma: no cover
    main()
