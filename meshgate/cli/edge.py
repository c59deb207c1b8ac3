"""`meshgate edge add|update|list|show|remove` and `edge route ...`, `edge cert ...`."""

from __future__ import annotations

import time
from typing import Any

import click

from meshgate.cli.context import CliContext, pass_ctx
from meshgate.cli.edge_certs import cert
from meshgate.cli.output import emit, output_option
from meshgate.cli.params import INT, echo_update, read_text_file, require_any
from meshgate.store.db import reading
from meshgate.store.edge import (
    add_route,
    format_rate,
    get_gateway,
    host_matches,
    list_gateways,
    list_routes,
    remove_route,
    route_to_dict,
)
from meshgate.store.edge_certs import list_certs
from meshgate.store.edge_gateways import (
    add_gateway,
    gateway_to_dict,
    remove_gateway,
    update_gateway,
)
from meshgate.store.mesh import get_mesh
from meshgate.store.txn import write

GATEWAY_COLUMNS = ("name", "listen", "http_redirect_port", "mtls", "hosts", "routes", "identity")
ROUTE_COLUMNS = ("id", "gateway", "host", "prefix", "service", "auth", "rate", "claims")


@click.group("edge")
def edge() -> None:
    """Edge gateways: the public entry point (TLS, JWT or client-certificate auth,
    claims, rate limits) routing to mesh services. See docs/edge.md.

    A gateway is a proxy of kind edge; its mesh identity is
    spiffe://<trust-domain>/edge/<name>, so mesh policies name it as `edge:<name>`.

    \b
    Examples:
        meshgate edge add public --listen 0.0.0.0:8443 --http-redirect-port 8080
        meshgate edge cert issue --gateway public --host api.example.com
        meshgate edge route add public --host api.example.com --prefix /orders \\
            --to orders --auth jwt:auth0 --rate 100/s --claim role=admin
        meshgate policy allow --from edge:public --to orders
    """


edge.add_command(cert)


def uncovered_hosts(routes: list[Any], cert_hosts: list[str]) -> list[str]:
    """Route hosts no certificate covers (the gateway cannot serve them)."""
    return sorted({r.host for r in routes if not host_matches(r.host, cert_hosts)})


@edge.command("add")
@click.argument("name")
@click.option("--listen", metavar="HOST:PORT", help="Public HTTPS listener, e.g. 0.0.0.0:8443.")
@click.option("--http-redirect-port", type=INT, metavar="PORT",
              help="Also listen for plain HTTP on this port and redirect it to https.")
@click.option("--client-ca", metavar="FILE",
              help="PEM CA bundle that signs client certificates (needed by --auth mtls routes).")
@pass_ctx
def add(ctx: CliContext, name: str, listen: str | None, http_redirect_port: Any,
        client_ca: str | None) -> None:
    """Add an edge gateway; prints its join token once.

    \b
    Examples:
        meshgate edge add public --listen 0.0.0.0:8443
        meshgate edge add partners --listen 127.0.0.1:9443 --client-ca partners-ca.pem
    """
    bundle = read_text_file(client_ca, "client_ca")
    with write(ctx.engine, f"edge add {name}", ctx.actor) as w:
        gw, token = add_gateway(w, name, listen, http_redirect_port=http_redirect_port,
                                client_ca_pem=bundle, now=time.time())
        identity = get_mesh(w.conn).edge_identity(gw.name)
    click.echo(f'edge gateway "{gw.name}" added (revision {w.revision}): {identity}, listening on {gw.listen}')
    click.echo(f"join token (shown once; the gateway's Envoy presents it): {token}")


@edge.command("update")
@click.argument("name")
@click.option("--listen", metavar="HOST:PORT", help="New public HTTPS listener.")
@click.option("--http-redirect-port", type=INT, metavar="PORT", help="Redirect plain HTTP on PORT.")
@click.option("--no-http-redirect", is_flag=True, help="Stop redirecting plain HTTP.")
@click.option("--client-ca", metavar="FILE", help="Replace the client CA bundle.")
@click.option("--no-client-ca", is_flag=True, help="Drop the client CA (refused while mtls routes exist).")
@pass_ctx
def update(ctx: CliContext, name: str, listen: str | None, http_redirect_port: Any,
           no_http_redirect: bool, client_ca: str | None, no_client_ca: bool) -> None:
    """Change a gateway's listener, redirect port or client CA.

    \b
    Examples:
        meshgate edge update public --client-ca clients-ca.pem
        meshgate edge update public --no-http-redirect
    """
    require_any(listen=listen, http_redirect_port=http_redirect_port,
                no_http_redirect=no_http_redirect or None, client_ca=client_ca,
                no_client_ca=no_client_ca or None)
    if no_http_redirect and http_redirect_port is not None:
        raise click.UsageError("give --http-redirect-port or --no-http-redirect, not both")
    if no_client_ca and client_ca is not None:
        raise click.UsageError("give --client-ca or --no-client-ca, not both")
    changes: dict[str, Any] = {}
    if listen is not None:
        changes["listen"] = listen
    if http_redirect_port is not None or no_http_redirect:
        changes["http_redirect_port"] = None if no_http_redirect else http_redirect_port
    if client_ca is not None or no_client_ca:
        changes["client_ca_pem"] = None if no_client_ca else read_text_file(client_ca, "client_ca")
    with write(ctx.engine, f"edge update {name}", ctx.actor) as w:
        before = get_gateway(w.conn, name)
        after = update_gateway(w, name, now=time.time(), **changes)
    echo_update(f'edge gateway "{name}"', after != before, w.revision)


def _gateway_listing(conn: Any, gw: Any, identity: str) -> dict[str, Any]:
    hosts = [c.host for c in list_certs(conn, gw.name)]
    return {
        "name": gw.name,
        "listen": gw.listen,
        "http_redirect_port": gw.http_redirect_port,
        "mtls": bool(gw.client_ca_pem),
        "hosts": hosts,
        "routes": len(list_routes(conn, gw.name)),
        "identity": identity,
    }


@edge.command("list")
@output_option
@pass_ctx
def list_(ctx: CliContext, output: str) -> None:
    """List edge gateways.

    \b
    Examples:
        meshgate edge list
        meshgate edge list --output json
    """
    with reading(ctx.engine) as conn:
        mesh = get_mesh(conn)
        rows = [_gateway_listing(conn, g, mesh.edge_identity(g.name)) for g in list_gateways(conn)]
    emit(rows, output, columns=GATEWAY_COLUMNS)


@edge.command("show")
@click.argument("name")
@output_option
@pass_ctx
def show(ctx: CliContext, name: str, output: str) -> None:
    """Show a gateway: settings, certificates, routes, and hosts it cannot serve yet.

    \b
    Examples:
        meshgate edge show public
        meshgate edge show public --output yaml
    """
    now = time.time()
    with reading(ctx.engine) as conn:
        gw = get_gateway(conn, name)
        identity = get_mesh(conn).edge_identity(name)
        certs = list_certs(conn, name)
        routes = list_routes(conn, name)
    record: dict[str, Any] = {**gateway_to_dict(gw), "identity": identity}
    cert_hosts = [c.host for c in certs]
    missing = uncovered_hosts(routes, cert_hosts)
    if output == "table":
        record["certificates"] = [f"{c.host} (expires {c.view()['not_after']})" for c in certs]
        record["routes"] = [
            f"{r.id}: {r.host}{r.prefix} -> {r.service} auth {r.auth}"
            + (f" rate {format_rate(r.rate)}" if r.rate else "")
            + (" claims " + ",".join(f"{k}={v}" for k, v in r.claims) if r.claims else "")
            for r in routes
        ]
    else:
        record["certificates"] = [c.view(now) for c in certs]
        record["routes"] = [route_to_dict(r) for r in routes]
    record["hosts_without_certificate"] = missing
    emit(record, output, title=f"edge gateway {name}")


@edge.command("remove")
@click.argument("name")
@pass_ctx
def remove(ctx: CliContext, name: str) -> None:
    """Remove a gateway and its certificates (refused while it has routes).

    \b
    Examples:
        meshgate edge remove public
    """
    with write(ctx.engine, f"edge remove {name}", ctx.actor) as w:
        remove_gateway(w, name)
    click.echo(f'edge gateway "{name}" removed (revision {w.revision})')


# -- routes ----------------------------------------------------------------------


@edge.group("route")
def route() -> None:
    """Routes: host + path prefix -> service, with explicit authentication.

    \b
    Examples:
        meshgate edge route add public --host api.example.com --prefix /orders \\
            --to orders --auth jwt:auth0 --rate 100/s
        meshgate edge route list --gateway public
        meshgate edge route remove public-orders
    """


@route.command("add")
@click.argument("gateway")
@click.option("--host", help="Host (TLS SNI and Host header), e.g. api.example.com or *.example.com.")
@click.option("--prefix", help="Path prefix; /orders matches /orders and /orders/..., / matches all.")
@click.option("--to", "service", metavar="SERVICE", help="The service requests go to.")
@click.option("--auth", metavar="jwt:<provider>|mtls|none",
              help="Required: how callers authenticate (no default, on purpose).")
@click.option("--rate", metavar="N/PERIOD",
              help="Token-bucket limit for the route, e.g. 100/s, 600/m, 10/30s (429 beyond).")
@click.option("--claim", "claims", multiple=True, metavar="KEY=VALUE",
              help="A JWT claim the token must carry (list claims: must contain VALUE); "
              "on mtls routes only san=VALUE (the client certificate). Repeat: all must hold.")
@click.option("--id", "route_id", help="Route id (default <gateway>-<service>).")
@pass_ctx
def route_add(ctx: CliContext, gateway: str, host: str | None, prefix: str | None,
              service: str | None, auth: str | None, rate: str | None,
              claims: tuple[str, ...], route_id: str | None) -> None:
    """Add a route to GATEWAY.

    \b
    Examples:
        meshgate edge route add public --host api.example.com --prefix /orders \\
            --to orders --auth jwt:auth0 --claim role=admin
        meshgate edge route add public --host machines.example.com --prefix / \\
            --to telemetry --auth mtls --rate 50/s
        meshgate edge route add public --host www.example.com --prefix / --to web --auth none
    """
    with write(ctx.engine, f"edge route add {gateway}", ctx.actor) as w:
        r = add_route(w, gateway, host, prefix, service, auth, rate, list(claims), route_id)
        cert_hosts = [c.host for c in list_certs(w.conn, gateway)]
    click.echo(f'edge route "{r.id}" added (revision {w.revision}): '
               f"https://{r.host}{r.prefix} -> {r.service}, auth {r.auth}")
    if uncovered_hosts([r], cert_hosts):
        click.echo(f"warning: gateway \"{gateway}\" has no certificate for {r.host}: the route "
                   f"is served once one exists (meshgate edge cert import|issue --gateway {gateway} "
                   f"--host {r.host})", err=True)


@route.command("list")
@click.option("--gateway", help="Only this gateway's routes.")
@output_option
@pass_ctx
def route_list(ctx: CliContext, gateway: str | None, output: str) -> None:
    """List edge routes.

    \b
    Examples:
        meshgate edge route list
        meshgate edge route list --gateway public --output json
    """
    with reading(ctx.engine) as conn:
        rows = [route_to_dict(r) for r in list_routes(conn, gateway)]
    emit(rows, output, columns=ROUTE_COLUMNS)


@route.command("remove")
@click.argument("route_id")
@pass_ctx
def route_remove(ctx: CliContext, route_id: str) -> None:
    """Remove a route by id.

    \b
    Examples:
        meshgate edge route remove public-orders
    """
    with write(ctx.engine, f"edge route remove {route_id}", ctx.actor) as w:
        r = remove_route(w, route_id)
    click.echo(f'edge route "{r.id}" removed (revision {w.revision})')
