"""`meshgate demo`: run a small secured mesh of real Envoys and walk through it."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from types import FrameType

import click


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@click.command("demo")
@click.option("--keep", is_flag=True,
              help="Leave the fleet running after the tour (dashboard, edge address printed); Ctrl-C stops it.")
@click.option("--short", is_flag=True, help="Less traffic per step (what the test suite runs).")
@click.option("--json", "as_json", is_flag=True,
              help="Print a JSON summary of every step on standard output (the tour goes to stderr).")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path),
              help="Put the database, keys and logs here and keep them (default: a temporary directory, "
                   "removed at the end unless a step failed).")
def demo(keep: bool, short: bool, as_json: bool, workdir: Path | None) -> None:
    """Run a secured mesh of real Envoys on this machine and tour it (well under a minute).

    From nothing: the store and its CA, `meshgate serve`, an edge gateway and
    three services (web -> orders -> payments), each a tiny app with its sidecar
    started by `meshgate proxy run`, policies and a JWT provider. Then: a request
    with a valid token (200) and without (401), a forbidden hop (403, and the
    rule that decided), `policy check`, scaling orders up and down (instances
    register themselves), a root CA rotation under traffic (0 failed requests),
    proxy status and `meshgate top`. Every step prints the commands to do it
    yourself. Every process it starts is stopped at the end, also on Ctrl-C.

    Exit code 0 when every step passed.

    \b
    Examples:
        meshgate demo
        meshgate demo --keep
        meshgate demo --short --json > demo.json
    """
    from rich.console import Console

    from meshgate.fleet.demo import DemoOptions, run_demo

    console = Console(file=sys.stderr if as_json else sys.stdout, soft_wrap=True, highlight=False)
    # Ctrl-C (also when started in the background, where SIGINT starts out ignored), SIGTERM
    # and SIGHUP all stop the fleet the same way
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    try:
        result = run_demo(DemoOptions(short=short, keep=keep, workdir=workdir), console)
    except KeyboardInterrupt:  # before the tour was over (with --keep, Ctrl-C after it is the normal end)
        console.print("interrupted: every process was stopped")
        sys.exit(130)
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2))
    sys.exit(0 if result.ok else 1)
