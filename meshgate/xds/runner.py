"""Running the control plane: `meshgate serve` in one asyncio process.

TLS on the xDS port with a certificate from the mesh CA (SPIFFE id
spiffe://<td>/control-plane, DNS/IP SANs of the listen host and
--server-name), reissued when the CA's signer changes (rotation). Plaintext
only with an explicit flag, and only on a loopback address.
"""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import logging
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from sqlalchemy import Engine

from meshgate.validation import split_host_port
from meshgate.xds.admin import make_admin_app, start_admin
from meshgate.xds.errors import XdsError
from meshgate.xds.logs import event
from meshgate.xds.registration import Registrar
from meshgate.xds.secrets import IssuerSecretProvider, NoSecrets, SecretProvider
from meshgate.xds.server import XdsServer

log = logging.getLogger("meshgate.xds.serve")

# Translation allocates many small objects that live a little while (messages, tuples,
# resources); with Python's default gen0 threshold (700) the collector runs so often
# that it took about a fifth of a full translate at 10,000 services. 10,000 cut the
# CPU of that translate by 13% with the same peak RSS (bench/xds_scale.py, 2026-11-29).
GC_GEN0_THRESHOLD = 10_000


def tune_gc() -> None:
    """Raise the collector's gen0 threshold to GC_GEN0_THRESHOLD (never lower it)."""
    gen0, gen1, gen2 = gc.get_threshold()
    if gen0 < GC_GEN0_THRESHOLD:
        gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)
LOOPBACK_NAMES = ("localhost",)


@dataclass(frozen=True)
class ServeConfig:
    listen: str = "127.0.0.1:18000"
    insecure_plaintext_loopback: bool = False
    admin: str | None = None
    server_names: tuple[str, ...] = ()
    replica: str | None = None
    server_kwargs: dict[str, Any] = field(default_factory=dict)
    telemetry: bool = True  # stats + access-log receivers, /metrics, dashboard (meshgate.telemetry)


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def replica_name(cfg: ServeConfig) -> str:
    """--replica, else HOST:PORT of --listen, with this machine's name for a wildcard
    host: replicas on several machines all listening on 0.0.0.0:18000 stay distinct
    in proxy_status and in the replicas table."""
    if cfg.replica:
        return cfg.replica
    host, port = split_host_port(cfg.listen) or (cfg.listen, 0)
    try:
        wildcard = ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        wildcard = False
    return f"{socket.gethostname() if wildcard else host}:{port}"


def check_listen(cfg: ServeConfig) -> str:
    hp = split_host_port(cfg.listen)
    if hp is None:
        raise XdsError(f"--listen: not HOST:PORT: {cfg.listen!r}")
    if cfg.insecure_plaintext_loopback and not is_loopback(hp[0]):
        raise XdsError(f"--insecure-plaintext-loopback serves without TLS, so only on a loopback address "
                       f"(127.0.0.1, ::1), not {hp[0]!r}")
    if cfg.admin is not None and split_host_port(cfg.admin) is None:
        raise XdsError(f"--admin: not HOST:PORT: {cfg.admin!r}")
    return hp[0]


def load_issuer(engine: Engine, db_url: str) -> Any:
    from meshgate.ca.identity import IdentityIssuer
    from meshgate.ca.keys import load_keybox

    return IdentityIssuer(engine, load_keybox(db_url))


def tls_credentials(issuer: Any, hostnames: list[str]) -> grpc.ServerCredentials:
    """TLS for the xDS port; a new certificate once the CA's signer changed."""
    issued_by = [issuer.signer_fingerprint()]

    def config() -> Any:
        chain, key = issuer.server_credentials(hostnames, time.time())
        return grpc.ssl_server_certificate_configuration([(key.encode(), chain.encode())])

    def fetch() -> Any:
        current = issuer.signer_fingerprint()
        if current == issued_by[0]:
            return None
        issued_by[0] = current
        event(log, "server-certificate-reissued", signer=current)
        return config()

    return grpc.dynamic_ssl_server_credentials(config(), fetch, require_client_authentication=False)


def rotation_step(issuer: Any) -> Callable[[Engine, float], Any]:
    """Every tick (in a thread): advance a CA rotation, then re-read the CA rows.

    The reload matters when the signer changes but the trust roots do not
    (reissuing; an intermediate under the same root): nothing in the World
    moves, yet every identity from the old signer must be renewed. After the
    reload the issuer's `next_refresh` is due at once, so the next tick pushes
    new identities; the xDS port's certificate follows the signer too.
    """
    from meshgate.ca import rotation

    def step(engine: Engine, now: float) -> Any:
        phase = rotation.advance(engine, now, actor="meshgate serve")
        issuer.reload()
        return phase

    return step


async def serve(engine: Engine, db_url: str, cfg: ServeConfig,
                on_ready: Callable[[XdsServer], None] | None = None,
                stop: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM/SIGINT (or `stop` is set); then close streams and flush the ledger."""
    host = check_listen(cfg)
    tune_gc()
    secrets: SecretProvider
    credentials = None
    try:
        issuer = await asyncio.to_thread(load_issuer, engine, db_url)
    except Exception as exc:  # noqa: BLE001 - CaError, key problems: say what is missing
        if not cfg.insecure_plaintext_loopback:
            raise XdsError(f"cannot serve TLS without the mesh CA: {exc}") from exc
        event(log, "no-ca", level=logging.WARNING, error=str(exc),
              note="sidecars get no certificates; mTLS listeners and clusters will not work")
        secrets, issuer = NoSecrets(), None
    else:
        secrets = IssuerSecretProvider(issuer)
        if not cfg.insecure_plaintext_loopback:
            credentials = tls_credentials(issuer, [host, *cfg.server_names])
    kwargs = dict(cfg.server_kwargs)
    telemetry = None
    if cfg.telemetry:
        from meshgate.telemetry.service import Telemetry

        telemetry = Telemetry(engine)
        kwargs.setdefault("options", telemetry.server_options())
        kwargs.setdefault("metrics", telemetry.metrics)
        kwargs["servicers"] = [*kwargs.get("servicers", ()), telemetry.register]
    server = XdsServer(engine, secrets=secrets, replica=replica_name(cfg),
                       rotation=rotation_step(issuer) if issuer is not None else None, **kwargs)
    if telemetry is not None:
        telemetry.bind(server)
    registrar = Registrar(engine, replica=server.replica)  # sidecars register their instances
    server.hooks.append(registrar)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread (tests)
            pass
    await server.start(cfg.listen, credentials=credentials)
    await registrar.start()
    if telemetry is not None:
        await telemetry.start()
    extra = [telemetry.add_routes] if telemetry is not None else []
    runner = await start_admin(make_admin_app(server, extra=extra), cfg.admin) if cfg.admin else None
    if on_ready is not None:
        on_ready(server)
    try:
        await stop.wait()
        event(log, "shutting-down", replica=server.replica)
    finally:
        if runner is not None:
            await runner.cleanup()
        await registrar.stop()  # before the streams close: a stopping server marks no instance gone
        await server.stop(1.0)
        if telemetry is not None:
            await telemetry.stop()  # writes the last denials
