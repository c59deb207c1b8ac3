"""`meshgate mesh show|set`: mesh-wide settings."""

from __future__ import annotations

import click

from meshgate.cli.context import CliContext, pass_ctx
from meshgate.cli.output import emit, output_option
from meshgate.cli.params import LenientChoice, describe_update, echo_update, require_any
from meshgate.model import DEFAULT_ACTIONS, MTLS_MODES
from meshgate.store.db import reading
from meshgate.store.mesh import get_mesh, mesh_settings, mesh_to_dict, update_mesh
from meshgate.store.txn import current_revision, write


@click.group("mesh")
def mesh() -> None:
    """Show and change mesh-wide settings.

    \b
    Examples:
        meshgate mesh show
        meshgate mesh set --mtls-mode permissive
    """


@mesh.command("show")
@output_option
@pass_ctx
def show(ctx: CliContext, output: str) -> None:
    """Show the mesh settings.

    JSON and YAML give durations in seconds (cert_ttl_seconds).

    \b
    Examples:
        meshgate mesh show
        meshgate mesh show --output json
    """
    with reading(ctx.engine) as conn:
        m = get_mesh(conn)
        revision = current_revision(conn)
    if output == "table":
        emit({**mesh_settings(m), "revision": revision}, output, title="mesh")
    else:
        emit({**mesh_to_dict(m), "revision": revision}, output)


@mesh.command("set")
@click.option(
    "--mtls-mode",
    type=LenientChoice(MTLS_MODES),
    help="strict: sidecars accept only mTLS; permissive: also plain text.",
)
@click.option(
    "--default-action",
    type=LenientChoice(DEFAULT_ACTIONS),
    help="What happens to a call no policy allows.",
)
@click.option(
    "--cert-ttl",
    metavar="DURATION",
    help="Lifetime of workload certificates (e.g. 90s, 30m, 1h; 1m to 365d).",
)
@click.option(
    "--instance-grace",
    metavar="DURATION",
    help="How long a self-registered instance outlives its sidecar's disconnect (0s to 1d).",
)
@pass_ctx
def set_(
    ctx: CliContext,
    mtls_mode: str | None,
    default_action: str | None,
    cert_ttl: str | None,
    instance_grace: str | None,
) -> None:
    """Change mesh settings; the others keep their values.

    The trust domain cannot change (every identity is made under it).

    \b
    Examples:
        meshgate mesh set --mtls-mode permissive
        meshgate mesh set --default-action deny --cert-ttl 30m
    """
    require_any(
        mtls_mode=mtls_mode,
        default_action=default_action,
        cert_ttl=cert_ttl,
        instance_grace=instance_grace,
    )
    with write(ctx.engine, "mesh set", ctx.actor) as w:
        before = get_mesh(w.conn)
        after = update_mesh(
            w,
            mtls_mode=mtls_mode,
            default_action=default_action,
            cert_ttl=cert_ttl,
            instance_grace=instance_grace,
        )
    echo_update("mesh", w.revision is not None, w.revision,
                describe_update(mesh_settings(before), mesh_settings(after)))
