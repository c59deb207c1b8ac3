"""`meshgate serve`: the xDS control plane."""

from __future__ import annotations

import asyncio

import click

from meshgate.cli.context import CliContext, pass_ctx
from meshgate.durations import parse_duration
from meshgate.store.db import resolve_url


@click.command("serve")
@click.option("--listen", default="127.0.0.1:18000", show_default=True, metavar="HOST:PORT",
              help="Address of the xDS (ADS) gRPC port.")
@click.option("--insecure-plaintext-loopback", is_flag=True,
              help="Serve xDS WITHOUT TLS; allowed only on a loopback address (development).")
@click.option("--admin", metavar="HOST:PORT", help="Also serve the HTTP admin (/healthz, /xds/proxies) here.")
@click.option("--server-name", "server_names", multiple=True, metavar="NAME",
              help="Extra DNS name or IP for the server certificate (repeatable).")
@click.option("--replica", help="Name of this server in proxy status (default HOST:PORT of --listen; "
              "a 0.0.0.0 or :: host becomes this machine's name).")
@click.option("--replica-timeout", default="15s", show_default=True, metavar="DURATION",
              help="Replicas sharing the store: how long another replica may stay silent before "
              "its proxies are shown disconnected (e.g. 15s, 1m).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True, help="Log lines are `event=... key=value`, one per decision.")
@pass_ctx
def serve(ctx: CliContext, listen: str, insecure_plaintext_loopback: bool, admin: str | None,
          server_names: tuple[str, ...], replica: str | None, replica_timeout: str,
          log_level: str) -> None:
    """Run the xDS control plane: stream the store to Envoy proxies.

    Changes made with the CLI reach connected proxies within a fraction of a
    second, without a restart. Each proxy authenticates with its join token.
    The xDS port serves TLS with a certificate from the mesh CA; Envoy checks
    it against the trust bundle in its bootstrap. Stop with SIGTERM or Ctrl-C.

    \b
    Examples:
        meshgate serve --listen 0.0.0.0:18000 --server-name xds.example.internal
        meshgate serve --insecure-plaintext-loopback --admin 127.0.0.1:18001
    """
    from meshgate.xds.logs import configure
    from meshgate.xds.runner import ServeConfig, check_listen
    from meshgate.xds.runner import serve as run

    try:
        timeout = parse_duration(replica_timeout)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--replica-timeout") from exc
    if not 3 <= timeout <= 3600:
        raise click.BadParameter("must be between 3s and 1h", param_hint="--replica-timeout")
    cfg = ServeConfig(listen=listen, insecure_plaintext_loopback=insecure_plaintext_loopback, admin=admin,
                      server_names=server_names, replica=replica,
                      server_kwargs={"replica_timeout": float(timeout)})
    from meshgate.xds.errors import XdsError

    try:
        check_listen(cfg)
    except XdsError as exc:
        raise click.UsageError(str(exc)) from exc
    engine = ctx.engine
    configure(log_level)

    def ready(server: object) -> None:
        tls = "plaintext (loopback only)" if insecure_plaintext_loopback else "TLS"
        click.echo(f"meshgate serving xDS on {listen} ({tls})" + (f", admin on {admin}" if admin else ""),
                   err=True)

    asyncio.run(run(engine, resolve_url(ctx.db), cfg, on_ready=ready))
