"""Root (or intermediate) rotation without a failed request: a state machine in the store.

    idle ──start──▶ trusting ──▶ reissuing ──▶ retiring ──▶ idle

- trusting: the new CA is stored with status `next`; its root joins every
  trust bundle. Waits until every connected proxy ACKed a bundle holding the
  new root (proxy_status.acked_roots, SDS rows).
- reissuing: the new CA becomes `active` (it signs every new leaf; the issuer
  renews leaves of the old signer at once), the old one becomes `trusted`
  (still in the bundle). Waits until every connected proxy ACKed an identity
  signed by the new CA (proxy_status.acked_issuer).
- retiring: the old CA becomes `retired`, its root leaves the bundle (unless
  the new CA shares it). Waits until no connected proxy's ACKed bundle holds a
  retiring root.
- idle again.

Each phase change is one write with its own revision. The state lives in the
store (settings `ca.rotation`), so an interrupted rotation resumes from there,
whoever calls `advance` (the server's loop, or `meshgate ca rotate --wait`).
`advance` is a compare-and-set: two callers at once move the phase once.
"""

from __future__ import annotations

from typing import Any, Literal

from cryptography import x509
from sqlalchemy import Connection, Engine, select
from sqlalchemy.exc import IntegrityError

from meshgate.ca import authority
from meshgate.ca.errors import CaNotInitialized, RotationConflict
from meshgate.ca.keys import KeyBox
from meshgate.store import schema
from meshgate.store.ca import (
    IN_BUNDLE,
    CaRow,
    add_cross_cert,
    get_ca,
    insert_ca,
    list_cas,
    rotation_state,
    sds_status,
    set_rotation_state,
    set_status,
)
from meshgate.store.db import reading
from meshgate.store.txn import Write, write

Phase = Literal["idle", "trusting", "reissuing", "retiring"]
PHASES: tuple[Phase, ...] = ("idle", "trusting", "reissuing", "retiring")
_NEXT: dict[str, Phase] = {"trusting": "reissuing", "reissuing": "retiring", "retiring": "idle"}


def _trust_domain(conn: Connection) -> str:
    td = conn.execute(select(schema.mesh.c.trust_domain).where(schema.mesh.c.id == 1)).scalar()
    if td is None:
        raise CaNotInitialized("the database has no mesh yet: run `meshgate init`")
    return str(td)


def start(engine: Engine, keybox: KeyBox, now: float, *, actor: str | None = None,
          signer: authority.Signer | None = None) -> dict[str, Any]:
    """Begin a rotation to `signer` (an imported CA) or to a new generated root.

    The store key must open the current CA key (else CaKeyError, nothing stored):
    the new key is sealed with the same store key the server will use.
    """
    what = "imported CA" if signer else "new root"
    try:
        return _start(engine, keybox, now, actor, signer, what)
    except IntegrityError as exc:  # another `start` inserted the state row first
        raise RotationConflict("another CA rotation started at the same time; see "
                               "`meshgate ca rotate --status`") from exc


def _start(engine: Engine, keybox: KeyBox, now: float, actor: str | None,
           signer: authority.Signer | None, what: str) -> dict[str, Any]:
    with write(engine, f"ca rotate: start ({what})", actor) as w:
        state = rotation_state(w.conn, for_update=True)
        if state["phase"] != "idle":
            raise RotationConflict(
                f"a CA rotation is already in phase {state['phase']}: see "
                "`meshgate ca rotate --status` (it finishes when every connected proxy ACKed)"
            )
        active = list_cas(w.conn, ("active",))
        if not active:
            raise CaNotInitialized("the store has no active CA: run `meshgate init`")
        old_keys = {row.id: keybox.decrypt(row.key_encrypted)  # CaKeyError: wrong or damaged key
                    for row in active if row.key_encrypted is not None}
        if signer is None:
            cert, key = authority.create_root(_trust_domain(w.conn), now)
            signer = authority.Signer(cert, key)
        chain_pem = "".join(authority.cert_pem(c) for c in signer.chain)
        new_fp = signer.fingerprint
        if any(r.fingerprint == new_fp for r in list_cas(w.conn)):
            raise RotationConflict(f"CA {new_fp[:16]}... is in the store already")
        new = insert_ca(w, cert_pem=authority.cert_pem(signer.cert), chain_pem=chain_pem,
                        key_encrypted=keybox.encrypt(authority.key_pem(signer.key).encode()),
                        status="next", now=now)
        _cross_sign(w, active, old_keys, signer.root, now)
        state = {
            "phase": "trusting",
            "old": [r.id for r in active],
            "new": new.id,
            "started_at": now,
            "phase_since": now,
        }
        set_rotation_state(w, state, now)
    return state


def _cross_sign(w: Write, active: list[CaRow], old_keys: dict[int, bytes],
                new_root: x509.Certificate, now: float) -> None:
    """Re-issue the new root under each old root whose key we hold (see store.ca.cross_certs)."""
    for row in active:
        old_root = authority.load_certs(row.cert_pem)[0]
        if row.id not in old_keys or row.chain_pem.strip() or old_root.subject == new_root.subject:
            continue  # an imported intermediate (its root's key is not ours), or the same root
        cross = authority.cross_sign(new_root, old_root, authority.load_key(old_keys[row.id]))
        add_cross_cert(w, authority.cert_pem(cross), now)


def _rows(conn: Connection, state: dict[str, Any]) -> tuple[list[CaRow], CaRow]:
    old = [r for r in (get_ca(conn, i) for i in state["old"]) if r is not None]
    new = get_ca(conn, state["new"])
    if new is None:
        raise RotationConflict(f"rotation state names CA id {state['new']}, which is gone")
    return old, new


def _retiring_roots(conn: Connection, old: list[CaRow], new: CaRow) -> set[str]:
    """Fingerprints of old roots that no CA staying in the bundle shares."""
    staying = {r.root_fingerprint for r in list_cas(conn, IN_BUNDLE) if r.id not in {o.id for o in old}}
    staying.add(new.root_fingerprint)
    return {o.root_fingerprint for o in old} - staying


def waiting_for(conn: Connection, state: dict[str, Any]) -> list[dict[str, str]]:
    """Connected proxies that hold back the current phase, each with what it lacks."""
    phase = state["phase"]
    if phase == "idle":
        return []
    old, new = _rows(conn, state)
    retiring = _retiring_roots(conn, old, new)
    out: list[dict[str, str]] = []
    for st in sds_status(conn):
        if not st["connected"]:
            continue
        if phase == "trusting" and new.root_fingerprint not in st["acked_roots"]:
            out.append({"proxy": st["proxy"], "needs": "ACK of a trust bundle with the new root"})
        elif phase == "reissuing" and st["acked_issuer"] != new.fingerprint:
            out.append({"proxy": st["proxy"], "needs": "ACK of an identity signed by the new CA"})
        elif phase == "retiring" and retiring & set(st["acked_roots"]):
            out.append({"proxy": st["proxy"], "needs": "ACK of a trust bundle without the old root"})
    return out


def _apply(w: Write, state: dict[str, Any], target: Phase, now: float) -> dict[str, Any]:
    old, new = _rows(w.conn, state)
    if target == "reissuing":
        set_status(w, new, "active")
        for o in old:
            set_status(w, o, "trusted")
    elif target == "retiring":
        for o in old:
            set_status(w, o, "retired")
    if target == "idle":
        nxt: dict[str, Any] = {"phase": "idle", "last": {**state, "finished_at": now}}
        nxt["last"].pop("phase", None)
    else:
        nxt = {**state, "phase": target, "phase_since": now}
    set_rotation_state(w, nxt, now)
    return nxt


def advance(engine: Engine, now: float, *, actor: str | None = None) -> Phase:
    """Move to the next phase if its condition holds; return the phase after the call."""
    with reading(engine) as conn:  # most calls (the server's tick) end here: no lock
        state = rotation_state(conn)
        if state["phase"] == "idle" or waiting_for(conn, state):
            return state["phase"]  # type: ignore[no-any-return]
    target = _NEXT[state["phase"]]
    with write(engine, f"ca rotate: {state['phase']} -> {target}", actor or "meshgate") as w:
        current = rotation_state(w.conn, for_update=True)
        if current != state or waiting_for(w.conn, current):
            return current["phase"]  # type: ignore[no-any-return]  # someone else moved it
        _apply(w, state, target, now)
    return target


def status(engine: Engine) -> dict[str, Any]:
    """Phase, old/new CA fingerprints and roots, and the proxies the phase waits for."""
    with reading(engine) as conn:  # read-only: never waits for a writer (`ca show`)
        state = rotation_state(conn)
        out: dict[str, Any] = {"phase": state["phase"]}
        if state["phase"] == "idle":
            if "last" in state:
                out["last_rotation"] = state["last"]
            out["waiting_for"] = []
            return out
        old, new = _rows(conn, state)
        connected = [s["proxy"] for s in sds_status(conn) if s["connected"]]
        out.update(
            old=[o.fingerprint for o in old],
            old_roots=sorted({o.root_fingerprint for o in old}),
            new=new.fingerprint,
            new_root=new.root_fingerprint,
            retiring_roots=sorted(_retiring_roots(conn, old, new)),
            started_at=state["started_at"],
            phase_since=state["phase_since"],
            connected_proxies=len(connected),
            waiting_for=waiting_for(conn, state),
        )
        return out
