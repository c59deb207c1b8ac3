"""`meshgate service add|list|show|update|remove`."""

from __future__ import annotations

from typing import Any

import click

from meshgate.cli.context import CliContext, pass_ctx
from meshgate.cli.output import emit, output_option
from meshgate.cli.params import INT, LenientChoice, describe_update, echo_update, require_any
from meshgate.model import PROTOCOLS, Service
from meshgate.store.db import reading
from meshgate.store.instances import (
    instance_counts,
    instance_key,
    instance_to_dict,
    list_instances,
)
from meshgate.store.mesh import get_mesh
from meshgate.store.services import (
    add_service,
    dependents,
    get_service,
    list_services,
    remove_service,
    service_to_dict,
    update_service,
)
from meshgate.store.txn import write

LIST_COLUMNS = ("name", "protocol", "port", "instances", "labels", "identity")


@click.group("service")
def service() -> None:
    """Manage services (name, protocol, port, labels).

    A service's identity is spiffe://<trust-domain>/svc/<name>.

    \b
    Examples:
        meshgate service add orders --protocol http --port 8080 --label team=shop
        meshgate service list --output json
    """


def _label_option(f: Any) -> Any:
    return click.option(
        "--label",
        "labels",
        multiple=True,
        metavar="KEY=VALUE",
        help="A label; repeat for several.",
    )(f)


@service.command("add")
@click.argument("name")
@click.option(
    "--protocol",
    type=LenientChoice(PROTOCOLS),
    default="http",
    show_default=True,
    help="Protocol the service speaks.",
)
@click.option("--port", type=INT, default=80, show_default=True, help="Port clients call (1-65535).")
@_label_option
@pass_ctx
def add(ctx: CliContext, name: str, protocol: str, port: int, labels: tuple[str, ...]) -> None:
    """Add a service. NAME is a DNS label (e.g. orders).

    \b
    Examples:
        meshgate service add orders --protocol http --port 8080
        meshgate service add payments --protocol grpc --port 9090 --label team=pay --label tier=1
    """
    with write(ctx.engine, f"service add {name}", ctx.actor) as w:
        svc = add_service(w, name, protocol, port, list(labels))
        identity = get_mesh(w.conn).service_identity(svc.name)
    click.echo(f'service "{svc.name}" added (revision {w.revision}): {identity}')


def _listing(svc: Service, identity: str, instances: int) -> dict[str, Any]:
    return {**service_to_dict(svc), "instances": instances, "identity": identity}


@service.command("list")
@output_option
@pass_ctx
def list_(ctx: CliContext, output: str) -> None:
    """List services with their instance counts.

    \b
    Examples:
        meshgate service list
        meshgate service list --output json
    """
    with reading(ctx.engine) as conn:
        mesh = get_mesh(conn)
        counts = instance_counts(conn)
        rows = [
            _listing(s, mesh.service_identity(s.name), counts.get(s.name, 0))
            for s in list_services(conn)
        ]
    emit(rows, output, columns=LIST_COLUMNS)


@service.command("show")
@click.argument("name")
@output_option
@pass_ctx
def show(ctx: CliContext, name: str, output: str) -> None:
    """Show one service, its instances and what refers to it.

    \b
    Examples:
        meshgate service show orders
        meshgate service show orders --output yaml
    """
    with reading(ctx.engine) as conn:
        svc = get_service(conn, name)
        identity = get_mesh(conn).service_identity(name)
        instances = list_instances(conn, name)
        used_by = dependents(conn, name)
    record: dict[str, Any] = {**service_to_dict(svc), "identity": identity, "used_by": used_by}
    if output == "table":
        record["instances"] = [
            f"{instance_key(i)} (id {i.id}, app port {i.app_port}, weight {i.weight})"
            for i in instances
        ]
        emit(record, output, title=f"service {name}")
    else:
        record["instances"] = [
            {k: v for k, v in instance_to_dict(i).items() if k != "service"} for i in instances
        ]
        emit(record, output)


@service.command("update")
@click.argument("name")
@click.option("--protocol", type=LenientChoice(PROTOCOLS), help="New protocol.")
@click.option("--port", type=INT, help="New port (1-65535).")
@click.option(
    "--label",
    "labels",
    multiple=True,
    metavar="KEY=VALUE",
    help="Add or overwrite a label; repeat for several.",
)
@click.option(
    "--unset-label", "unset", multiple=True, metavar="KEY", help="Remove a label; repeatable."
)
@pass_ctx
def update(
    ctx: CliContext,
    name: str,
    protocol: str | None,
    port: int | None,
    labels: tuple[str, ...],
    unset: tuple[str, ...],
) -> None:
    """Change a service's protocol, port or labels; the rest stay.

    \b
    Examples:
        meshgate service update orders --port 8081
        meshgate service update orders --label tier=2 --unset-label team
    """
    require_any(protocol=protocol, port=port, label=labels, unset_label=unset)
    with write(ctx.engine, f"service update {name}", ctx.actor) as w:
        before = get_service(w.conn, name)
        after = update_service(
            w, name, protocol=protocol, port=port, set_labels=list(labels), unset_labels=unset
        )
    echo_update(f'service "{name}"', w.revision is not None, w.revision,
                describe_update(service_to_dict(before), service_to_dict(after)))


@service.command("remove")
@click.argument("name")
@pass_ctx
def remove(ctx: CliContext, name: str) -> None:
    """Remove a service and its instances.

    Refused (exit 1) while proxies, policies or edge routes refer to the
    service; the error names each of them. Remove or change those first:
    there is no --force, so no allow rule or route disappears by accident.

    \b
    Examples:
        meshgate service remove orders
    """
    with write(ctx.engine, f"service remove {name}", ctx.actor) as w:
        remove_service(w, name)
        gone = sum(1 for c in w.changes if c["kind"] == "instances")
    extra = f", with {gone} instance{'s' if gone != 1 else ''}" if gone else ""
    click.echo(f'service "{name}" removed (revision {w.revision}){extra}')
