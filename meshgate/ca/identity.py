"""Workload identities for the xDS server: SPIFFE SVIDs held in memory only.

    issuer = IdentityIssuer(engine, load_keybox(db_url))
    ident = issuer.identity_for("orders-1", "spiffe://example.org/svc/orders", 3600, now)
    issuer.trust_bundle_pem()      # every root in the bundle (active, next, trusted)
    issuer.next_refresh(now)       # when the next cached identity reaches half-life
    issuer.reload()                # after a revision touched the CA rows (rotation)

Each proxy gets a fresh ECDSA P-256 key generated here, never written to the
store. The identity is cached per proxy and returned again until its
half-life; after that, or when the signing CA changed (rotation), or the
SPIFFE id or TTL changed, a new key and certificate are made.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, select

from meshgate.ca import authority
from meshgate.ca.errors import CaNotInitialized
from meshgate.ca.keys import KeyBox
from meshgate.store import schema
from meshgate.store.ca import IN_BUNDLE, CaRow, cross_certs, list_cas
from meshgate.store.db import reading

CONTROL_PLANE_PATH = "/control-plane"
SERVER_CERT_TTL = 90 * 86400
LOOPBACK_IPS = ("127.0.0.1", "::1")


@dataclass(frozen=True)
class CaState:
    """What the issuer needs from the store: the signer row and the bundle roots."""

    trust_domain: str
    signer: CaRow | None  # the newest 'active' row that holds a key
    roots_pem: tuple[str, ...]  # unique roots of every row in the bundle, oldest first
    cross_pems: tuple[str, ...] = ()  # newer roots re-issued by older ones (store.ca.cross_certs)

    @property
    def digest(self) -> str:
        h = hashlib.sha256(self.trust_domain.encode())
        h.update((self.signer.fingerprint if self.signer else "-").encode())
        for r in (*self.roots_pem, *self.cross_pems):
            h.update(r.encode())
        return h.hexdigest()


def load_ca_state(conn: Connection) -> CaState:
    td = conn.execute(select(schema.mesh.c.trust_domain).where(schema.mesh.c.id == 1)).scalar()
    if td is None:
        raise CaNotInitialized("the database has no mesh yet: run `meshgate init`")
    rows = list_cas(conn, IN_BUNDLE)
    signers = [r for r in rows if r.status == "active" and r.key_encrypted is not None]
    roots: list[str] = []
    for r in rows:
        if r.root_pem not in roots:
            roots.append(r.root_pem)
    return CaState(trust_domain=str(td), signer=signers[-1] if signers else None,
                   roots_pem=tuple(roots), cross_pems=tuple(cross_certs(conn)))


@dataclass(frozen=True)
class Identity:
    """One proxy's SVID: the chain (leaf first, no root), its key, and when to renew it."""

    spiffe_id: str
    cert_chain_pem: str
    key_pem: str
    not_before: float
    not_after: float
    serial: int
    issuer_fingerprint: str  # SHA-256 of the signing CA certificate (root or intermediate)
    issued_at: float
    ttl_seconds: int

    @property
    def refresh_at(self) -> float:
        """Half-life: the moment a new identity replaces this one."""
        return self.issued_at + self.ttl_seconds / 2


Loader = Callable[[], CaState]


class IdentityIssuer:
    """Issues and caches per-proxy identities; thread-safe."""

    def __init__(self, engine_or_loader: Engine | Loader, keybox: KeyBox | None,
                 clock: Callable[[], float] = time.time) -> None:
        if isinstance(engine_or_loader, Engine):
            engine = engine_or_loader

            def load() -> CaState:
                with reading(engine) as conn:
                    return load_ca_state(conn)

            self._load: Loader = load
        else:
            self._load = engine_or_loader
        self._keybox = keybox
        self._clock = clock
        self._lock = threading.RLock()
        self._cache: dict[str, Identity] = {}
        self._signer: authority.Signer | None = None
        self._state = self._load()

    # -- store changes -------------------------------------------------
    def reload(self) -> bool:
        """Re-read the CA rows; True when the signer or the bundle changed."""
        state = self._load()
        with self._lock:
            if state.digest == self._state.digest:
                return False
            old_signer = self._state.signer.fingerprint if self._state.signer else None
            self._state = state
            if (state.signer.fingerprint if state.signer else None) != old_signer:
                self._signer = None  # identities from the old signer renew at next_refresh
            return True

    @property
    def trust_domain(self) -> str:
        return self._state.trust_domain

    def signer_fingerprint(self) -> str | None:
        s = self._state.signer
        return s.fingerprint if s else None

    def _current_signer(self) -> authority.Signer:
        if self._signer is not None:
            return self._signer
        row = self._state.signer
        if row is None or row.key_encrypted is None:
            raise CaNotInitialized("cannot sign: the store has no active CA with a key "
                                   "(run `meshgate init` or `meshgate ca import`)")
        if self._keybox is None:
            raise CaNotInitialized("cannot sign: no CA encryption key was loaded")
        key = authority.load_key(self._keybox.decrypt(row.key_encrypted))
        chain = tuple(authority.load_certs(row.chain_pem)) if row.chain_pem.strip() else ()
        self._signer = authority.Signer(authority.load_certs(row.cert_pem)[0], key, chain)
        return self._signer

    # -- trust bundle --------------------------------------------------
    def trust_bundle_pem(self) -> str:
        return "".join(self._state.roots_pem)

    def bundle_fingerprints(self) -> list[str]:
        """SHA-256 of each root in the bundle (what proxy_status.acked_roots records)."""
        return [authority.fingerprint(p) for p in self._state.roots_pem]

    # -- identities ----------------------------------------------------
    def identity_for(self, proxy_name: str, spiffe_id: str, ttl_seconds: int,
                     now: float | None = None) -> Identity:
        now = self._clock() if now is None else now
        with self._lock:
            signer = self._current_signer()
            cached = self._cache.get(proxy_name)
            if (cached is not None and cached.spiffe_id == spiffe_id
                    and cached.ttl_seconds == ttl_seconds
                    and cached.issuer_fingerprint == signer.fingerprint
                    and now < cached.refresh_at):
                return cached
            ident = self._issue(signer, spiffe_id, ttl_seconds, now)
            self._cache[proxy_name] = ident
            return ident

    def _issue(self, signer: authority.Signer, spiffe_id: str, ttl_seconds: int, now: float,
               dns_names: Sequence[str] = (), ips: Sequence[str] = ()) -> Identity:
        key = authority.new_key()
        cert = authority.issue_leaf(signer.cert, signer.key, key.public_key(),
                                    spiffe_id=spiffe_id, now=now, ttl_seconds=ttl_seconds,
                                    dns_names=dns_names, ips=ips)
        return Identity(
            spiffe_id=spiffe_id,
            cert_chain_pem=authority.cert_pem(cert) + signer.chain_pem_for_leaf(),
            key_pem=authority.key_pem(key),
            not_before=cert.not_valid_before_utc.timestamp(),
            not_after=cert.not_valid_after_utc.timestamp(),
            serial=cert.serial_number,
            issuer_fingerprint=signer.fingerprint,
            issued_at=now,
            ttl_seconds=ttl_seconds,
        )

    def cached(self, proxy_name: str) -> Identity | None:
        with self._lock:
            return self._cache.get(proxy_name)

    def forget(self, proxy_name: str) -> None:
        """Drop a proxy's identity (its stream ended); its key is gone with it."""
        with self._lock:
            self._cache.pop(proxy_name, None)

    def next_refresh(self, now: float | None = None) -> float:
        """Earliest half-life among cached identities (`now` if one is from an old signer).

        math.inf when nothing is cached.
        """
        now = self._clock() if now is None else now
        with self._lock:
            if not self._cache:
                return math.inf
            current = self.signer_fingerprint()
            if any(i.issuer_fingerprint != current for i in self._cache.values()):
                return now
            return min(i.refresh_at for i in self._cache.values())

    def due(self, now: float | None = None) -> list[str]:
        """Proxies whose cached identity is past half-life or from an old signer."""
        now = self._clock() if now is None else now
        with self._lock:
            current = self.signer_fingerprint()
            return sorted(p for p, i in self._cache.items()
                          if now >= i.refresh_at or i.issuer_fingerprint != current)

    # -- the control plane's own certificate -----------------------------
    def server_credentials(self, hostnames: Sequence[str], now: float | None = None,
                           ttl_seconds: int = SERVER_CERT_TTL) -> tuple[str, str]:
        """(cert chain PEM, key PEM) for the xDS port: DNS/IP SANs + spiffe://<td>/control-plane.

        After root rotations the chain also carries the cross-certificates back to
        every older root, so Envoys bootstrapped before a rotation still verify it.
        """
        now = self._clock() if now is None else now
        dns: list[str] = []
        ips: list[str] = list(LOOPBACK_IPS)
        for h in hostnames:
            try:
                ip = str(ipaddress.ip_address(h))
            except ValueError:
                if h not in dns:
                    dns.append(h)
            else:
                if ip not in ips:
                    ips.append(ip)
        with self._lock:
            signer = self._current_signer()
        spiffe = f"spiffe://{self.trust_domain}{CONTROL_PLANE_PATH}"
        ident = self._issue(signer, spiffe, ttl_seconds, now, dns_names=dns, ips=ips)
        crosses = [c for p in self._state.cross_pems for c in authority.load_certs(p)]
        back = authority.cross_chain(signer.root, crosses)
        return ident.cert_chain_pem + "".join(authority.cert_pem(c) for c in back), ident.key_pem
