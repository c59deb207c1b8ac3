"""`meshgate proxy bootstrap`: the Envoy bootstrap (JSON) for one proxy.

The join token is shown once, at `proxy add`. A bootstrap embeds it, so this
command needs it back: pass it (`--token`, or MESHGATE_PROXY_TOKEN), or make a
new one (`--rotate-token`; the old token stops working and a proxy still
using it is disconnected). The store never holds a token, only its SHA-256.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from meshgate.cli.context import CliContext, pass_ctx
from meshgate.cli.params import INT
from meshgate.errors import Conflict, ValidationError, Violation
from meshgate.fleet.bootstrap import XDS_CLUSTER, control_plane_identity, render_bootstrap
from meshgate.model import Instance
from meshgate.store.db import reading
from meshgate.store.proxies import get_proxy, verify_token
from meshgate.store.proxies import rotate_token as rotate_token_
from meshgate.store.txn import write
from meshgate.store.world import load_world_conn
from meshgate.telemetry.envoy_config import bootstrap_stats_sink
from meshgate.validation import Checker

DEFAULT_SERVER = "127.0.0.1:18000"
DEFAULT_ADMIN_PORT = 9901
F = TypeVar("F", bound=Callable[..., Any])


def proxy_options(token_use: str, admin_port: Callable[[F], F]) -> Callable[[F], F]:
    """The options `proxy bootstrap` and `proxy run` share (run passes them on to
    bootstrap): `token_use` ends --rotate-token's help, `admin_port` is the command's
    own --admin-port option, placed where both list it."""
    options: list[Callable[[Any], Any]] = [
        click.option("--token", envvar="MESHGATE_PROXY_TOKEN", metavar="TOKEN",
                     help="The proxy's join token (from `proxy add`; env MESHGATE_PROXY_TOKEN)."),
        click.option("--rotate-token", is_flag=True,
                     help=f"Make a new token for the proxy and {token_use} it (the old one stops working)."),
        click.option("--server", "servers", multiple=True, metavar="HOST:PORT",
                     help=f"Control-plane address; repeat for several replicas (default {DEFAULT_SERVER})."),
        admin_port,
        click.option("--sotw", is_flag=True, help="State-of-the-world ADS instead of delta."),
        click.option("--insecure-plaintext", is_flag=True,
                     help="No TLS to the control plane (only for `serve --insecure-plaintext-loopback`)."),
        click.option("--address",
                     help="Self-registration: the instance's address (with --inbound-port, --app-port)."),
        click.option("--inbound-port", type=INT, help="Self-registration: the sidecar's inbound (mTLS) port."),
        click.option("--app-port", type=INT, help="Self-registration: the app's local port."),
    ]

    def apply(f: F) -> F:
        for option in reversed(options):  # the first listed ends up first in --help
            f = option(f)
        return f

    return apply


@click.command("bootstrap")
@click.argument("name")
@proxy_options("embed", click.option("--admin-port", type=INT, default=DEFAULT_ADMIN_PORT, show_default=True,
                                     help="Envoy's admin port (bound to 127.0.0.1)."))
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write to this file (mode 0600) instead of standard output.")
@pass_ctx
def bootstrap(ctx: CliContext, name: str, token: str | None, rotate_token: bool, servers: tuple[str, ...],
              admin_port: int, sotw: bool, insecure_plaintext: bool, address: str | None,
              inbound_port: int | None, app_port: int | None, out: Path | None) -> None:
    """Write the Envoy bootstrap for proxy NAME (ADS to `meshgate serve`, token, TLS).

    The control plane's certificate is checked against the mesh trust bundle
    and its SPIFFE id spiffe://<trust-domain>/control-plane.

    \b
    Examples:
        meshgate proxy bootstrap orders-1 --token "$TOKEN" --out orders-1.json
        meshgate proxy bootstrap orders-1 --rotate-token --server 10.0.0.5:18000 --server 10.0.0.6:18000
        envoy -c orders-1.json --disable-hot-restart
    """
    if bool(token) == rotate_token:
        raise click.UsageError(
            "give --token TOKEN (the one `proxy add` printed) or --rotate-token (make a new one); "
            "the store keeps only a hash, so it cannot print the old token"
        )
    self_reg = (address, inbound_port, app_port)
    if any(v is not None for v in self_reg) and not all(v is not None for v in self_reg):
        raise click.UsageError("--address, --inbound-port and --app-port go together")
    v = Checker(f'bootstrap for proxy "{name}"')
    v.port("--admin-port", admin_port)
    for s in servers:
        v.host_port("--server", s)
    if address is not None:
        v.address("--address", address)
        v.port("--inbound-port", inbound_port)
        v.port("--app-port", app_port)
    v.done()
    with reading(ctx.engine) as conn:
        proxy = get_proxy(conn, name)
        if proxy.revoked:  # the server refuses its token: a bootstrap could never connect
            raise Conflict(f'proxy "{name}" is revoked; remove it and add it again for a new token')
        if token and not verify_token(conn, name, token):
            raise ValidationError([Violation("--token", f'not the current token of proxy "{name}" '
                                             "(wrong, or rotated since)")])
        world = load_world_conn(conn)
    roots = "".join(world.trust_roots_pem)
    if not insecure_plaintext and not roots:
        raise click.ClickException("the store has no CA to check the control plane's certificate with "
                                   "(run `meshgate init`), or pass --insecure-plaintext for a loopback server")
    if rotate_token:
        with write(ctx.engine, f"proxy rotate token {name}", ctx.actor) as w:
            proxy, token = rotate_token_(w, name)
        click.echo(f'new token for proxy "{name}" (revision {w.revision}); the old one no longer works', err=True)
    instance = next((i for i in world.instances if i.proxy == name), None)
    if address is not None:
        instance = Instance(id=0, service=proxy.service or "", address=address, inbound_port=int(inbound_port or 0),
                            app_port=int(app_port or 0), proxy=name, source="proxy")
    assert token is not None
    boot = render_bootstrap(
        proxy, token, servers=list(servers) or [DEFAULT_SERVER], admin_port=admin_port,
        xds_ca_pem=None if insecure_plaintext else roots,
        xds_san=None if insecure_plaintext else control_plane_identity(world.mesh.trust_domain),
        delta=not sotw, instance=instance,
        # stats pushed to `meshgate serve` (meshgate.telemetry), authenticated like ADS
        extra=bootstrap_stats_sink(XDS_CLUSTER, initial_metadata=[("authorization", f"Bearer {token}")]),
    )
    text = json.dumps(boot, indent=2) + "\n"
    if out is None:
        click.echo(text, nl=False)
        return
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(out, 0o600)
    click.echo(f"wrote {out} (it holds the join token: keep it private)", err=True)


