"""`meshgate proxy`: Envoy sidecars and edge gateways, their tokens, status and config."""

from __future__ import annotations

import json
import time
from typing import Any

import click

from meshgate.cli.context import CliContext, pass_ctx
from meshgate.cli.output import emit, output_option
from meshgate.cli.params import INT
from meshgate.model import DEFAULT_OUTBOUND_PORT
from meshgate.store import status as store_status
from meshgate.store.db import reading
from meshgate.store.proxies import (
    add_proxy,
    get_proxy,
    list_proxies,
    proxy_to_dict,
    remove_proxy,
    revoke_proxy,
    token_hash_of,
)
from meshgate.store.txn import write
from meshgate.store.world import load_world_conn
from meshgate.xds import types

LIST_COLUMNS = ("name", "kind", "service", "listen", "revoked", "connected", "in_sync", "nacked", "last_seen")
STATUS_COLUMNS = ("proxy", "type", "connected", "sent", "acked", "state", "last_seen", "nack")


@click.group("proxy")
def proxy() -> None:
    """Manage proxies (Envoy sidecars and edge gateways) and see their status.

    A proxy joins with a token shown once by `proxy add`; `meshgate serve`
    refuses streams without it. `proxy bootstrap` writes the Envoy config.

    \b
    Examples:
        meshgate proxy add orders-1 --service orders
        meshgate proxy add public --edge --listen 0.0.0.0:8443
        meshgate proxy bootstrap orders-1 --rotate-token --out orders-1.json
        meshgate proxy status
    """


def _ago(ts: float | None, now: float) -> str | None:
    if ts is None:
        return None
    s = max(0.0, now - ts)
    return f"{s:.0f}s ago" if s < 120 else f"{s / 60:.0f}m ago" if s < 7200 else f"{s / 3600:.0f}h ago"


def _state(row: dict[str, Any]) -> str:
    if store_status.nack_open(row):
        return "NACKED"
    if store_status.in_sync(row):
        return "in sync"
    return "pending" if row.get("sent_version") else "waiting"


def _short(v: str | None) -> str | None:
    return v[:8] if v else v


@proxy.command("add")
@click.argument("name")
@click.option("--service", help="Sidecar: the service whose instance this Envoy fronts.")
@click.option("--edge", is_flag=True, help="An edge gateway instead of a sidecar.")
@click.option("--listen", metavar="HOST:PORT", help="Edge gateway: the public HTTPS listener address.")
@click.option("--outbound-port", type=INT, default=DEFAULT_OUTBOUND_PORT, show_default=True,
              help="Sidecar: the local port (127.0.0.1) the app sends mesh traffic to.")
@output_option
@pass_ctx
def add(ctx: CliContext, name: str, service: str | None, edge: bool, listen: str | None,
        outbound_port: int, output: str) -> None:
    """Add a proxy and print its join token (shown only this once).

    \b
    Examples:
        meshgate proxy add orders-1 --service orders
        meshgate proxy add orders-2 --service orders --outbound-port 15011
        meshgate proxy add public --edge --listen 0.0.0.0:8443 --output json
    """
    if edge == (service is not None):
        raise click.UsageError("give exactly one of --service SERVICE (a sidecar) or --edge (a gateway)")
    kind = "edge" if edge else "sidecar"
    with write(ctx.engine, f"proxy add {name}", ctx.actor) as w:
        p, token = add_proxy(w, name, kind=kind, service=service, listen=listen, outbound_port=outbound_port)
    if output != "table":
        emit({**proxy_to_dict(p), "token": token, "revision": w.revision}, output)
        return
    what = f'sidecar of service "{p.service}"' if p.kind == "sidecar" else "edge gateway"
    click.echo(f'proxy "{p.name}" added (revision {w.revision}): {what}')
    click.echo(f"token: {token}")
    click.echo("The token is shown only now; meshgate keeps just its SHA-256. Use it with "
               f"`meshgate proxy bootstrap {p.name} --token ...`, or make a new one with --rotate-token.")


def _listing(p: Any, rows: list[dict[str, Any]], now: float) -> dict[str, Any]:
    seen = [r["last_seen"] for r in rows if r.get("last_seen")]
    return {
        **proxy_to_dict(p),
        "connected": any(r["connected"] for r in rows),
        "in_sync": bool(rows) and all(store_status.in_sync(r) for r in rows),
        "nacked": [r["type"] for r in rows if store_status.nack_open(r)],
        "last_seen": _ago(max(seen), now) if seen else None,
    }


@proxy.command("list")
@click.option("--kind", type=click.Choice(["sidecar", "edge"]), help="Only this kind.")
@output_option
@pass_ctx
def list_(ctx: CliContext, kind: str | None, output: str) -> None:
    """List proxies, whether they are connected, in sync, or have NACKed config.

    \b
    Examples:
        meshgate proxy list
        meshgate proxy list --kind edge --output json
    """
    now = time.time()
    with reading(ctx.engine) as conn:
        by_proxy: dict[str, list[dict[str, Any]]] = {}
        for r in store_status.status_rows(conn):
            by_proxy.setdefault(r["proxy"], []).append(r)
        rows = [_listing(p, by_proxy.get(p.name, []), now) for p in list_proxies(conn, kind)]
    emit(rows, output, columns=LIST_COLUMNS)


def _status_view(row: dict[str, Any], now: float, full: bool) -> dict[str, Any]:
    if full:
        return {**row, "state": _state(row), "nack_open": store_status.nack_open(row)}
    nack = None
    if row.get("nack_at") is not None:
        nack = f"{row['nack_detail']} [resources: {', '.join(row.get('nack_resources') or [])}; " \
               f"from: {', '.join(row.get('nack_sources') or [])}]"
        if not store_status.nack_open(row):
            nack = "(resolved) " + nack
    return {
        "proxy": row["proxy"], "type": row["type"], "connected": row["connected"],
        "sent": _short(row.get("sent_version")), "acked": _short(row.get("acked_version")),
        "state": _state(row), "last_seen": _ago(row.get("last_seen"), now), "nack": nack,
    }


@proxy.command("status")
@click.argument("name", required=False)
@output_option
@pass_ctx
def status(ctx: CliContext, name: str | None, output: str) -> None:
    """What each proxy was sent and ACKed, per xDS type, and the last NACK's reason.

    The server writes this every half second. A NACK shows Envoy's reason, the
    rejected resources and the user objects (service, instance, policy) they
    came from; "(resolved)" once a later version was ACKed.

    \b
    Examples:
        meshgate proxy status
        meshgate proxy status orders-1 --output json
    """
    now = time.time()
    with reading(ctx.engine) as conn:
        if name is not None:
            get_proxy(conn, name)
        rows = store_status.status_rows(conn, name)
    emit([_status_view(r, now, output != "table") for r in rows], output, columns=STATUS_COLUMNS)


@proxy.command("show")
@click.argument("name")
@output_option
@pass_ctx
def show(ctx: CliContext, name: str, output: str) -> None:
    """Show one proxy, its instance and its per-type xDS status.

    \b
    Examples:
        meshgate proxy show orders-1
        meshgate proxy show orders-1 --output json
    """
    now = time.time()
    with reading(ctx.engine) as conn:
        p = get_proxy(conn, name)
        record: dict[str, Any] = proxy_to_dict(p, token_hash_of(conn, name))
        world = load_world_conn(conn)
        rows = store_status.status_rows(conn, name)
    inst = [i for i in world.instances if i.proxy == name]
    if p.kind == "sidecar":
        record["identity"] = world.mesh.service_identity(p.service or "")
        record["instance"] = (f"{inst[0].address}:{inst[0].inbound_port} (app port {inst[0].app_port})"
                              if inst else None)
    else:
        record["identity"] = world.mesh.edge_identity(p.name)
    if output == "table":
        emit(record, output, title=f"proxy {name}")
        if rows:
            emit([_status_view(r, now, False) for r in rows], output, columns=STATUS_COLUMNS)
        else:
            click.echo("never connected")
    else:
        record["status"] = [_status_view(r, now, True) for r in rows]
        emit(record, output)


@proxy.command("remove")
@click.argument("name")
@pass_ctx
def remove(ctx: CliContext, name: str) -> None:
    """Remove a proxy (its stream is closed within a second).

    Refused while edge routes use the gateway. Instances the sidecar fronted
    stay, unlinked.

    \b
    Examples:
        meshgate proxy remove orders-1
    """
    with write(ctx.engine, f"proxy remove {name}", ctx.actor) as w:
        remove_proxy(w, name)
    click.echo(f'proxy "{name}" removed (revision {w.revision})')


@proxy.command("revoke")
@click.argument("name")
@pass_ctx
def revoke(ctx: CliContext, name: str) -> None:
    """Refuse a proxy's token from now on; its open stream is closed within a second.

    The proxy stays listed (revoked) with its history; remove it when done.

    \b
    Examples:
        meshgate proxy revoke orders-1
    """
    with write(ctx.engine, f"proxy revoke {name}", ctx.actor) as w:
        _, changed = revoke_proxy(w, name)
    if changed:
        click.echo(f'proxy "{name}" revoked (revision {w.revision})')
    else:
        click.echo(f'proxy "{name}" was already revoked')


@proxy.command("config")
@click.argument("name")
@click.option("--type", "type_", type=click.Choice(list(types.BY_SHORT)), multiple=True,
              help="Only this xDS type (repeatable); default all.")
@pass_ctx
def config(ctx: CliContext, name: str, type_: tuple[str, ...]) -> None:
    """Print, as JSON, the exact resources the server would send the proxy now.

    Versions match `proxy status`. Secrets are redacted (keys never leave the server).

    \b
    Examples:
        meshgate proxy config orders-1
        meshgate proxy config orders-1 --type cds --type eds
    """
    from meshgate.xds.inspect import proxy_config

    with reading(ctx.engine) as conn:
        world = load_world_conn(conn)
    click.echo(json.dumps(proxy_config(world, name, type_ or None), indent=2))


def _register_bootstrap() -> None:
    from meshgate.cli.proxy_bootstrap import bootstrap
    from meshgate.cli.proxy_run import run

    proxy.add_command(bootstrap)
    proxy.add_command(run)


_register_bootstrap()
