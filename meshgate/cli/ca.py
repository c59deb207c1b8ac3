"""`meshgate ca show|import|rotate`: the mesh certificate authority."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from meshgate.ca import importing, rotation
from meshgate.ca.errors import CaError, RotationConflict
from meshgate.ca.keys import load_keybox
from meshgate.cli.context import CliContext, pass_ctx
from meshgate.cli.output import emit, output_option
from meshgate.store.ca import list_cas
from meshgate.store.db import reading, resolve_url

_FILE = click.Path(exists=True, dir_okay=False, readable=True, path_type=Path)
_POLL = 0.5


@click.group("ca")
def ca() -> None:
    """Manage the mesh certificate authority (CA).

    `meshgate init` creates a root CA; its private key is sealed with the key
    in MESHGATE_CA_KEY or the file <database>.key (mode 0600).

    \b
    Examples:
        meshgate ca show
        meshgate ca import --cert inter.pem --key inter.key --chain root.pem
        meshgate ca rotate --wait
    """


def _signing(ctx: CliContext, rows: list[Any]) -> str:
    """'ok (<key source>)' when the store key opens the active CA key, else why not."""
    try:
        box = load_keybox(resolve_url(ctx.db))
        for r in rows:
            if r.status == "active" and r.key_encrypted is not None:
                box.decrypt(r.key_encrypted)
                return f"ok ({box.source})"
        return "cannot sign: no active CA with a key"
    except CaError as exc:
        return str(exc)


@ca.command("show")
@output_option
@pass_ctx
def show(ctx: CliContext, output: str) -> None:
    """Show the CA certificates, their status, the rotation phase and whether signing works.

    Status: active (signs leaves), next (trusted, signs after rotation),
    trusted (in the trust bundle only), retired (out of the bundle).

    \b
    Examples:
        meshgate ca show
        meshgate ca show --output json
    """
    with reading(ctx.engine) as conn:
        rows = list_cas(conn)
    state = rotation.status(ctx.engine)
    certs = [r.view() for r in rows]
    bundle = sorted({r.root_fingerprint for r in rows if r.status != "retired"})
    data = {"phase": state["phase"], "signing": _signing(ctx, rows), "trust_bundle": bundle,
            "certificates": certs}
    if output != "table":
        emit(data, output)
        return
    emit([{**c, "fingerprint": c["fingerprint"][:16]} for c in certs], output,
         columns=["id", "status", "role", "fingerprint", "not_after", "subject"], title="CA")
    click.echo(f"rotation phase: {data['phase']}")
    click.echo(f"signing: {data['signing']}")


def _read(path: Path | None, option: str) -> str:
    if path is None:
        return ""
    try:
        return path.read_text()
    except UnicodeDecodeError as exc:
        raise click.BadParameter(f"{path} is not a PEM text file", param_hint=option) from exc


def _print_status(st: dict[str, Any]) -> None:
    click.echo(f"phase: {st['phase']}")
    if st["phase"] == "idle":
        return
    click.echo(f"new CA: {st['new'][:16]} (root {st['new_root'][:16]})")
    click.echo(f"old CA: {', '.join(f[:16] for f in st['old'])}")
    waiting = st["waiting_for"]
    if waiting:
        click.echo(f"waiting for {len(waiting)} of {st['connected_proxies']} connected proxies:")
        for w in waiting:
            click.echo(f"  {w['proxy']}: {w['needs']}")
    else:
        click.echo("waiting for no proxy: the next step happens on the next advance")


def _wait(ctx: CliContext, timeout: float) -> None:
    """Advance the rotation (as the server does) until idle; CaError on timeout."""
    deadline = time.monotonic() + timeout
    phase = rotation.status(ctx.engine)["phase"]
    while True:
        new = rotation.advance(ctx.engine, time.time(), actor=ctx.actor)
        if new != phase:
            click.echo(f"rotation: {phase} -> {new}", err=True)
            phase = new
        if phase == "idle":
            return
        if time.monotonic() >= deadline:
            st = rotation.status(ctx.engine)
            names = ", ".join(f"{w['proxy']} ({w['needs']})" for w in st["waiting_for"])
            raise CaError(f"rotation still in phase {phase} after {timeout:g}s; "
                          f"waiting for: {names or 'nothing (retry)'}; it resumes by itself "
                          "while `meshgate serve` runs")
        time.sleep(_POLL)


_wait_option = click.option("--wait", is_flag=True,
                             help="Stay until the rotation is done (every connected proxy ACKed).")
_timeout_option = click.option("--timeout", type=click.FloatRange(min=0), default=300.0,
                               show_default=True, help="Seconds --wait waits before giving up.")


@ca.command("import")
@click.option("--cert", "cert_file", type=_FILE, required=True,
              help="PEM CA certificate (root or intermediate) to sign with.")
@click.option("--key", "key_file", type=_FILE, required=True,
              help="Its unencrypted PEM ECDSA private key (P-256 or P-384).")
@click.option("--chain", "chain_file", type=_FILE, default=None,
              help="PEM certificates above --cert, up to the self-signed root.")
@_wait_option
@_timeout_option
@pass_ctx
def import_(ctx: CliContext, cert_file: Path, key_file: Path, chain_file: Path | None,
            wait: bool, timeout: float) -> None:
    """Sign with an existing CA (yours): a root, or an intermediate with its chain.

    The imported CA goes through the same phases as `ca rotate`: its root is
    added to every trust bundle first, then it signs every leaf, then the old
    CA is retired. The key is sealed with the store key before it is stored.

    \b
    Examples:
        meshgate ca import --cert root.pem --key root.key
        meshgate ca import --cert inter.pem --key inter.key --chain root.pem --wait
    """
    now = time.time()
    signer = importing.validate_import(_read(cert_file, "--cert"), _read(key_file, "--key"),
                                       _read(chain_file, "--chain"), now)
    box = load_keybox(resolve_url(ctx.db))
    rotation.start(ctx.engine, box, now, actor=ctx.actor, signer=signer)
    click.echo(f"imported CA {signer.fingerprint[:16]} ({signer.cert.subject.rfc4514_string()}); "
               "rotation started: phase trusting")
    if wait:
        _wait(ctx, timeout)
    _print_status(rotation.status(ctx.engine))


@ca.command("rotate")
@click.option("--status", "show_status", is_flag=True,
              help="Show the phase and the proxies it waits for; start nothing.")
@_wait_option
@_timeout_option
@output_option
@pass_ctx
def rotate(ctx: CliContext, show_status: bool, wait: bool, timeout: float, output: str) -> None:
    """Rotate to a new root CA without a failed request.

    Phases: trusting (new root added to every trust bundle; waits until every
    connected proxy ACKed it), reissuing (the new root signs; waits until every
    proxy ACKed a new certificate), retiring (old root leaves the bundle), idle.
    `meshgate serve` advances the phases; so does --wait. Each phase is a revision.

    \b
    Examples:
        meshgate ca rotate
        meshgate ca rotate --status
        meshgate ca rotate --status --wait --timeout 60
    """
    if not show_status:
        box = load_keybox(resolve_url(ctx.db))
        try:
            state = rotation.start(ctx.engine, box, time.time(), actor=ctx.actor)
        except RotationConflict as exc:
            raise RotationConflict(f"{exc}; `--status --wait` waits for it") from exc
        click.echo(f"rotation started: phase {state['phase']}", err=output != "table")
    if wait:
        _wait(ctx, timeout)
    st = rotation.status(ctx.engine)
    if output == "table":
        _print_status(st)
    else:
        emit(st, output)
