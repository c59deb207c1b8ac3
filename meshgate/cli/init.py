"""`meshgate init`: create the database and the mesh, in one revision."""

from __future__ import annotations

import time
from pathlib import Path

import click

from meshgate.ca import create_keybox, initialize_ca
from meshgate.ca.keys import key_file_path
from meshgate.cli.context import CliContext, pass_ctx
from meshgate.cli.params import LenientChoice
from meshgate.durations import format_duration
from meshgate.model import DEFAULT_ACTIONS, MTLS_MODES
from meshgate.store.db import open_store, resolve_url, sqlite_path
from meshgate.store.mesh import create_mesh, validate_mesh
from meshgate.store.txn import write


@click.command("init")
@click.option(
    "--trust-domain",
    required=True,
    help="SPIFFE trust domain of the mesh, a lowercase DNS name (e.g. example.org). "
    "Fixed for the life of the mesh.",
)
@click.option(
    "--mtls-mode",
    type=LenientChoice(MTLS_MODES),
    default="strict",
    show_default=True,
    help="strict: sidecars accept only mTLS; permissive: also plain text (for migration).",
)
@click.option(
    "--default-action",
    type=LenientChoice(DEFAULT_ACTIONS),
    default="deny",
    show_default=True,
    help="What happens to a call no policy allows.",
)
@click.option(
    "--cert-ttl",
    default="1h",
    show_default=True,
    metavar="DURATION",
    help="Lifetime of workload certificates (e.g. 90s, 30m, 1h; 1m to 365d); "
    "renewed at half-life.",
)
@click.option(
    "--instance-grace",
    default="30s",
    show_default=True,
    metavar="DURATION",
    help="How long a self-registered instance outlives its sidecar's disconnect (0s to 1d).",
)
@pass_ctx
def init(
    ctx: CliContext,
    trust_domain: str,
    mtls_mode: str,
    default_action: str,
    cert_ttl: str,
    instance_grace: str,
) -> None:
    """Create the database and the mesh.

    Refuses (exit 1) when the database already holds a mesh. The database is
    --db / MESHGATE_DB, else ./meshgate.db. Nothing is left behind on failure.

    \b
    Examples:
        meshgate init --trust-domain example.org
        meshgate --db /var/lib/meshgate/mesh.db init --trust-domain corp.example --cert-ttl 30m
    """
    # Check every field before anything touches the disk.
    validate_mesh(trust_domain, mtls_mode, default_action, cert_ttl, instance_grace)
    url = resolve_url(ctx.db)
    path = sqlite_path(url)
    created = path is not None and not path.exists()
    key_path = key_file_path(url)
    key_created = key_path is not None and not key_path.exists()
    try:
        engine = open_store(ctx.db, must_exist=False)
        try:
            keybox = create_keybox(url)
            with write(engine, f"init mesh {trust_domain}", ctx.actor) as w:
                mesh = create_mesh(
                    w, trust_domain, mtls_mode, default_action, cert_ttl, instance_grace
                )
                # The mesh root CA, in this same transaction (issue 4).
                root = initialize_ca(w, keybox, mesh.trust_domain, time.time())
        finally:
            engine.dispose()
    except BaseException:
        if created and path is not None:
            _remove_sqlite_files(path)
        if key_created and key_path is not None:
            key_path.unlink(missing_ok=True)
        raise
    where = str(path) if path is not None else "the database"
    click.echo(
        f"created mesh {mesh.trust_domain} in {where} (revision {w.revision}): "
        f"mtls {mesh.mtls_mode}, default {mesh.default_action}, "
        f"cert ttl {format_duration(mesh.cert_ttl_seconds)}"
    )
    click.echo(f"root CA {root.fingerprint[:16]} (SHA-256), key sealed with {keybox.source}")
    click.echo("next: meshgate service add <name> --protocol http --port 8080")


def _remove_sqlite_files(path: Path) -> None:
    """Remove a database file this command created (and its WAL side files)."""
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}-journal")):
        p.unlink(missing_ok=True)
