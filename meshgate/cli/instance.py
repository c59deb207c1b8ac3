"""`meshgate instance add|list|remove`: the replicas of services."""

from __future__ import annotations

import click

from meshgate.cli.context import CliContext, pass_ctx
from meshgate.cli.output import emit, output_option
from meshgate.cli.params import INT
from meshgate.store.db import reading
from meshgate.store.instances import (
    MAX_WEIGHT,
    add_instance,
    instance_key,
    instance_to_dict,
    list_instances,
    remove_instance,
)
from meshgate.store.txn import write

LIST_COLUMNS = (
    "id", "service", "address", "inbound_port", "app_port", "weight", "healthy", "source", "proxy",
)


@click.group("instance")
def instance() -> None:
    """Manage the instances (replicas) of services.

    Sidecars that connect to `meshgate serve` register their own instance;
    these commands add and remove instances by hand.

    \b
    Examples:
        meshgate instance add orders --address 127.0.0.1 --inbound-port 15006 --app-port 8080
        meshgate instance list --service orders
    """


@instance.command("add")
@click.argument("service")
@click.option(
    "--address", required=True, help="IP address or host name where the sidecar accepts mTLS."
)
@click.option(
    "--inbound-port", type=INT, required=True, help="The sidecar's inbound mTLS port (1-65535)."
)
@click.option(
    "--app-port", type=INT, required=True, help="Port the application listens on (1-65535)."
)
@click.option(
    "--weight",
    type=INT,
    default=1,
    show_default=True,
    help=f"Load-balancing weight (1-{MAX_WEIGHT}).",
)
@click.option(
    "--proxy",
    metavar="NAME",
    help="The sidecar (of SERVICE) in front of this instance: it gets the inbound listener "
    "and local-app cluster for it. Sidecars that register themselves need no --proxy.",
)
@pass_ctx
def add(
    ctx: CliContext,
    service: str,
    address: str,
    inbound_port: int,
    app_port: int,
    weight: int,
    proxy: str | None,
) -> None:
    """Add an instance of SERVICE.

    Without --proxy no sidecar serves the instance's inbound side until a
    sidecar registers it by connecting (its bootstrap made with --address,
    --inbound-port and --app-port). With --proxy NAME, sidecar NAME serves it
    as soon as the instance is added; NAME must be a sidecar of SERVICE that
    fronts no other instance.

    Exit 1 when the service or proxy does not exist, the proxy is not a sidecar
    of SERVICE or already fronts an instance, an instance already has this
    address and inbound port, or the address is 127.0.0.1 and the inbound port
    is one the proxy listens on there already (its --outbound-port, or any tcp
    service's port): Envoy refuses two listeners on one address.

    \b
    Examples:
        meshgate instance add orders --address 127.0.0.1 --inbound-port 15006 --app-port 8080
        meshgate instance add orders --address 10.0.0.8 --inbound-port 15006 --app-port 8080 --weight 3
        meshgate instance add orders --address 10.0.0.9 --inbound-port 15006 --app-port 8080 --proxy orders-9
    """
    summary = f"instance add {service} {address}:{inbound_port}"
    with write(ctx.engine, summary, ctx.actor) as w:
        inst = add_instance(w, service, address, inbound_port, app_port, weight, proxy=proxy)
    via = f', sidecar "{inst.proxy}"' if inst.proxy else ""
    click.echo(
        f'instance {inst.id} added to service "{inst.service}" (revision {w.revision}): '
        f"{instance_key(inst)} -> app port {inst.app_port}, weight {inst.weight}{via}"
    )


@instance.command("list")
@click.option("--service", help="Only the instances of this service.")
@output_option
@pass_ctx
def list_(ctx: CliContext, service: str | None, output: str) -> None:
    """List instances, optionally of one service.

    \b
    Examples:
        meshgate instance list
        meshgate instance list --service orders --output json
    """
    with reading(ctx.engine) as conn:
        rows = [instance_to_dict(i) for i in list_instances(conn, service)]
    emit(rows, output, columns=LIST_COLUMNS)


@instance.command("remove")
@click.argument("id", type=INT)
@pass_ctx
def remove(ctx: CliContext, id: int) -> None:  # noqa: A002 - the CLI argument is ID
    """Remove the instance with this ID (see `meshgate instance list`).

    \b
    Examples:
        meshgate instance remove 3
    """
    with write(ctx.engine, f"instance remove {id}", ctx.actor) as w:
        inst = remove_instance(w, id)
    click.echo(
        f'instance {inst.id} ({instance_key(inst)} of service "{inst.service}") removed '
        f"(revision {w.revision})"
    )
