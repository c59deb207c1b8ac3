"""`meshgate jwt add|update|list|show|remove`: JWT providers edge routes authenticate with."""

from __future__ import annotations

from typing import Any

import click

from meshgate.cli.context import CliContext, pass_ctx
from meshgate.cli.output import emit, output_option
from meshgate.cli.params import echo_update, read_text_file, require_any
from meshgate.model import JwtProvider
from meshgate.store.db import reading
from meshgate.store.jwt import (
    add_jwt_provider,
    get_jwt_provider,
    key_ids,
    list_jwt_providers,
    provider_to_dict,
    remove_jwt_provider,
    routes_using,
    update_jwt_provider,
)
from meshgate.store.txn import write

LIST_COLUMNS = ("name", "issuer", "audiences", "keys", "routes")


@click.group("jwt")
def jwt() -> None:
    """JWT providers: issuers whose tokens edge routes accept (`--auth jwt:<provider>`).

    Envoy verifies each token (signature against the provider's JWKS, `iss`,
    `aud`, `exp`/`nbf`) before a request reaches any service. See docs/edge.md.

    \b
    Examples:
        meshgate jwt add auth0 --issuer https://example.auth0.com/ --audience orders-api \\
            --jwks-file jwks.json
        meshgate jwt add okta --issuer https://example.okta.com --audience api \\
            --jwks-uri https://example.okta.com/oauth2/v1/keys
        meshgate jwt list
    """


def _jwks_options(f: Any) -> Any:
    f = click.option("--jwks-uri", metavar="URL",
                     help="Fetch the JWKS from this https URL (Envoy caches it for 5 minutes).")(f)
    f = click.option("--jwks-file", metavar="FILE",
                     help="A JSON Web Key Set file (public keys), sent to gateways inline.")(f)
    return f


def _listing(p: JwtProvider, routes: list[str]) -> dict[str, Any]:
    return {
        "name": p.name,
        "issuer": p.issuer,
        "audiences": list(p.audiences),
        "keys": key_ids(p) if p.jwks else f"remote: {p.jwks_uri}",
        "routes": routes,
    }


@jwt.command("add")
@click.argument("name")
@click.option("--issuer", help="The `iss` claim tokens must carry, exactly.")
@click.option("--audience", "audiences", multiple=True,
              help="An accepted `aud` value; repeat for several (at least one).")
@_jwks_options
@pass_ctx
def add(ctx: CliContext, name: str, issuer: str | None, audiences: tuple[str, ...],
        jwks_file: str | None, jwks_uri: str | None) -> None:
    """Add a JWT provider. NAME is a DNS label, used as `--auth jwt:NAME` on routes.

    \b
    Examples:
        meshgate jwt add auth0 --issuer https://example.auth0.com/ --audience orders-api \\
            --jwks-file jwks.json
        meshgate jwt add local --issuer http://127.0.0.1:9000 --audience api \\
            --jwks-uri http://127.0.0.1:9000/jwks.json
    """
    jwks = read_text_file(jwks_file, "jwks")
    with write(ctx.engine, f"jwt add {name}", ctx.actor) as w:
        p = add_jwt_provider(w, name, issuer, list(audiences), jwks, jwks_uri)
    keys = f"{len(key_ids(p))} key(s)" if p.jwks else f"keys from {p.jwks_uri}"
    click.echo(f'JWT provider "{p.name}" added (revision {w.revision}): issuer {p.issuer}, {keys}')


@jwt.command("update")
@click.argument("name")
@click.option("--issuer", help="New `iss` value.")
@click.option("--audience", "audiences", multiple=True,
              help="Replace the accepted audiences; repeat for several.")
@_jwks_options
@pass_ctx
def update(ctx: CliContext, name: str, issuer: str | None, audiences: tuple[str, ...],
           jwks_file: str | None, jwks_uri: str | None) -> None:
    """Change a provider, e.g. publish new keys (key rotation).

    \b
    Examples:
        meshgate jwt update auth0 --jwks-file jwks-2025.json
        meshgate jwt update auth0 --audience orders-api --audience admin-api
    """
    require_any(issuer=issuer, audience=audiences or None, jwks_file=jwks_file, jwks_uri=jwks_uri)
    jwks = read_text_file(jwks_file, "jwks")
    with write(ctx.engine, f"jwt update {name}", ctx.actor) as w:
        before = get_jwt_provider(w.conn, name)
        p = update_jwt_provider(w, name, issuer=issuer, audiences=list(audiences) or None,
                                jwks=jwks, jwks_uri=jwks_uri)
    echo_update(f'JWT provider "{name}"', p != before, w.revision)


@jwt.command("list")
@output_option
@pass_ctx
def list_(ctx: CliContext, output: str) -> None:
    """List JWT providers and the routes that use them.

    \b
    Examples:
        meshgate jwt list
        meshgate jwt list --output json
    """
    with reading(ctx.engine) as conn:
        rows = [_listing(p, routes_using(conn, p.name)) for p in list_jwt_providers(conn)]
    emit(rows, output, columns=LIST_COLUMNS)


@jwt.command("show")
@click.argument("name")
@output_option
@pass_ctx
def show(ctx: CliContext, name: str, output: str) -> None:
    """Show one provider, with its JWKS.

    \b
    Examples:
        meshgate jwt show auth0 --output json
    """
    with reading(ctx.engine) as conn:
        p = get_jwt_provider(conn, name)
        record = {**provider_to_dict(p), "routes": routes_using(conn, name)}
    if output == "table":
        record["jwks"] = ", ".join(key_ids(p)) if p.jwks else None
    emit(record, output, title=f"JWT provider {name}")


@jwt.command("remove")
@click.argument("name")
@pass_ctx
def remove(ctx: CliContext, name: str) -> None:
    """Remove a provider (refused while edge routes use it).

    \b
    Examples:
        meshgate jwt remove auth0
    """
    with write(ctx.engine, f"jwt remove {name}", ctx.actor) as w:
        remove_jwt_provider(w, name)
    click.echo(f'JWT provider "{name}" removed (revision {w.revision})')
