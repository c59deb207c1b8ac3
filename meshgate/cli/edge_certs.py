"""`meshgate edge cert import|issue|list|remove`: the certificates gateways present per host."""

from __future__ import annotations

import time
from pathlib import Path

import click

from meshgate.ca.keys import load_keybox
from meshgate.cli.context import CliContext, pass_ctx
from meshgate.cli.output import emit, output_option
from meshgate.cli.params import INT, read_text_file
from meshgate.errors import ValidationError, Violation
from meshgate.store.db import reading, resolve_url
from meshgate.store.edge_certs import (
    DEV_CERT_DAYS,
    import_cert,
    issue_dev_cert,
    list_certs,
    remove_cert,
)
from meshgate.store.txn import write
from meshgate.store.world import trust_roots

CERT_COLUMNS = ("gateway", "host", "not_after", "expires_in_days", "issuer", "dns_names")


@click.group("cert")
def cert() -> None:
    """Server certificates, one per host (TLS SNI); keys are stored encrypted.

    \b
    Examples:
        meshgate edge cert import --gateway public --host api.example.com \\
            --cert fullchain.pem --key privkey.pem
        meshgate edge cert issue --gateway public --host api.example.com
        meshgate edge cert list
    """


def _read(path: str | None, field: str, what: str) -> str:
    if path is None:
        raise ValidationError([Violation(field, f"required: the {what} file (PEM)")])
    return read_text_file(path, field) or ""


@cert.command("import")
@click.option("--gateway", required=True, help="The edge gateway that presents it.")
@click.option("--host", required=True, help="Host name it is for (must be one of its DNS names).")
@click.option("--cert", "cert_file", metavar="FILE",
              help="PEM certificate chain: the server certificate first, then intermediates.")
@click.option("--key", "key_file", metavar="FILE", help="Its unencrypted PEM private key (RSA or ECDSA).")
@pass_ctx
def import_(ctx: CliContext, gateway: str, host: str, cert_file: str | None,
            key_file: str | None) -> None:
    """Import (or replace) the certificate for a host.

    Refused, with every reason, when the chain does not parse or is out of
    order, the key does not match, the certificate expired or is not valid
    yet, is a CA, or does not name the host.

    \b
    Examples:
        meshgate edge cert import --gateway public --host api.example.com \\
            --cert fullchain.pem --key privkey.pem
    """
    problems: list[Violation] = []
    texts: dict[str, str] = {}
    for field, path, what in (("cert", cert_file, "certificate"), ("key", key_file, "private key")):
        try:
            texts[field] = _read(path, field, what)
        except ValidationError as exc:
            problems += exc.violations
    if problems:
        raise ValidationError(problems, f'certificate for host "{host}"')
    box = load_keybox(resolve_url(ctx.db))
    with write(ctx.engine, f"edge cert import {gateway} {host}", ctx.actor) as w:
        info = import_cert(w, box, gateway, host, texts["cert"], texts["key"], time.time())
    click.echo(f'certificate for {info.host} on "{gateway}" stored (revision {w.revision}), '
               f"expires {info.view()['not_after']}")


@cert.command("issue")
@click.option("--gateway", required=True, help="The edge gateway that presents it.")
@click.option("--host", required=True, help="Host name (DNS name of the certificate).")
@click.option("--days", type=INT, default=DEV_CERT_DAYS, show_default=True,
              help="Lifetime in days (1-397).")
@click.option("--ca-out", metavar="FILE",
              help="Also write the mesh root certificate(s) here, for clients (curl --cacert FILE).")
@pass_ctx
def issue(ctx: CliContext, gateway: str, host: str, days: int, ca_out: str | None) -> None:
    """Issue a development certificate for a host from the mesh CA.

    Clients trust it only with the mesh root (`--ca-out`); use `edge cert
    import` with a publicly trusted certificate in production.

    \b
    Examples:
        meshgate edge cert issue --gateway public --host api.example.com --ca-out mesh-root.pem
        curl --cacert mesh-root.pem https://api.example.com:8443/orders
    """
    if not isinstance(days, int) or not 1 <= days <= 397:
        raise ValidationError([Violation("days", f"{days!r} is not a whole number 1-397")])
    box = load_keybox(resolve_url(ctx.db))
    with write(ctx.engine, f"edge cert issue {gateway} {host}", ctx.actor) as w:
        info = issue_dev_cert(w, box, gateway, host, time.time(), days)
        roots = "".join(trust_roots(w.conn))
    if ca_out is not None:
        Path(ca_out).write_text(roots)
    click.echo(f'development certificate for {info.host} on "{gateway}" issued by the mesh CA '
               f"(revision {w.revision}), expires {info.view()['not_after']}")


@cert.command("list")
@click.option("--gateway", help="Only this gateway's certificates.")
@output_option
@pass_ctx
def list_(ctx: CliContext, gateway: str | None, output: str) -> None:
    """List certificates with their expiry.

    \b
    Examples:
        meshgate edge cert list
        meshgate edge cert list --gateway public --output json
    """
    now = time.time()
    with reading(ctx.engine) as conn:
        rows = [c.view(now) for c in list_certs(conn, gateway)]
    emit(rows, output, columns=CERT_COLUMNS)


@cert.command("remove")
@click.option("--gateway", required=True, help="The edge gateway.")
@click.option("--host", required=True, help="The host whose certificate goes.")
@pass_ctx
def remove(ctx: CliContext, gateway: str, host: str) -> None:
    """Remove a host's certificate (the gateway stops serving that host).

    \b
    Examples:
        meshgate edge cert remove --gateway public --host old.example.com
    """
    with write(ctx.engine, f"edge cert remove {gateway} {host}", ctx.actor) as w:
        info = remove_cert(w, gateway, host)
    click.echo(f'certificate for {info.host} on "{gateway}" removed (revision {w.revision})')
