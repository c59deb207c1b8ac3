"""Root rotation state machine on a real SQLite store, with simulated proxy_status rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select

from meshgate.ca import authority, importing, rotation
from meshgate.ca.errors import CaKeyError, RotationConflict
from meshgate.ca.identity import IdentityIssuer
from meshgate.ca.keys import KeyBox, generate_key
from meshgate.store import schema
from meshgate.store.ca import list_cas
from meshgate.store.db import open_store
from tests import ca_factory as f
from tests.ca_store import TD, dump, new_store, set_sds

NOW = 1_800_000_000.0
SPIFFE = f"spiffe://{TD}/svc/a"


def _statuses(engine) -> dict[str, str]:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return {r.fingerprint: r.status for r in list_cas(conn)}


def _rotation_revisions(engine) -> list[dict]:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        rows = conn.execute(select(schema.revisions).order_by(schema.revisions.c.id)).all()
    out = []
    for r in rows:
        for c in json.loads(r.changes):
            if c["kind"] == "settings" and c["key"] == "ca.rotation":
                # full rows (revision convention); no row yet means the idle phase
                phase = {
                    side: json.loads(c[side]["value"]) if c[side] else {"phase": "idle"}
                    for side in ("before", "after")
                }
                out.append({"summary": r.summary, **c, **phase})
    return out


def test_full_rotation_waits_for_every_connected_proxy(tmp_path: Path) -> None:
    engine, box = new_store(tmp_path / "m.db", NOW)
    issuer = IdentityIssuer(engine, box)
    old_fp = issuer.signer_fingerprint()
    assert old_fp is not None and issuer.bundle_fingerprints() == [old_fp]
    first = issuer.identity_for("a-1", SPIFFE, 3600, NOW)
    assert first.issuer_fingerprint == old_fp

    set_sds(engine, "a-1", roots=[old_fp], issuer=old_fp)
    set_sds(engine, "gone", connected=False, roots=[old_fp], issuer=old_fp)  # never waited for

    state = rotation.start(engine, box, NOW)
    assert state["phase"] == "trusting"
    assert issuer.reload() is True
    new_fp = [fp for fp, s in _statuses(engine).items() if s == "next"][0]
    assert issuer.bundle_fingerprints() == [old_fp, new_fp]  # new root is trusted first...
    assert issuer.identity_for("a-1", SPIFFE, 3600, NOW) is first  # ...but does not sign yet
    with pytest.raises(RotationConflict, match="already in phase trusting"):
        rotation.start(engine, box, NOW)

    # trusting: a-1 has not ACKed the new bundle
    assert rotation.advance(engine, NOW) == "trusting"
    st = rotation.status(engine)
    assert st["new_root"] == new_fp and st["old_roots"] == [old_fp]
    assert [w["proxy"] for w in st["waiting_for"]] == ["a-1"]
    set_sds(engine, "a-1", roots=[old_fp, new_fp], issuer=old_fp)
    assert rotation.advance(engine, NOW + 1) == "reissuing"
    assert _statuses(engine) == {old_fp: "trusted", new_fp: "active"}

    # reissuing: the issuer renews leaves of the old signer at once
    assert issuer.reload() is True
    assert issuer.next_refresh(NOW + 1) == NOW + 1
    assert issuer.due(NOW + 1) == ["a-1"]
    second = issuer.identity_for("a-1", SPIFFE, 3600, NOW + 1)
    assert second.issuer_fingerprint == new_fp and second.serial != first.serial
    assert issuer.bundle_fingerprints() == [old_fp, new_fp]
    assert rotation.advance(engine, NOW + 2) == "reissuing"  # a-1 still ACKs the old leaf
    assert rotation.status(engine)["waiting_for"][0]["needs"].startswith("ACK of an identity")
    set_sds(engine, "a-1", roots=[old_fp, new_fp], issuer=new_fp)
    assert rotation.advance(engine, NOW + 2) == "retiring"
    assert _statuses(engine) == {old_fp: "retired", new_fp: "active"}

    # retiring: the old root leaves the bundle; wait until a-1 ACKed that bundle
    issuer.reload()
    assert issuer.bundle_fingerprints() == [new_fp]
    assert rotation.advance(engine, NOW + 3) == "retiring"
    set_sds(engine, "a-1", roots=[new_fp], issuer=new_fp)
    assert rotation.advance(engine, NOW + 3) == "idle"
    assert rotation.advance(engine, NOW + 4) == "idle"
    st = rotation.status(engine)
    assert st["phase"] == "idle" and st["last_rotation"]["finished_at"] == NOW + 3

    phases = [(r["before"]["phase"], r["after"]["phase"]) for r in _rotation_revisions(engine)]
    assert phases == [("idle", "trusting"), ("trusting", "reissuing"),
                      ("reissuing", "retiring"), ("retiring", "idle")]


def test_no_connected_proxy_means_nothing_to_wait_for(tmp_path: Path) -> None:
    engine, box = new_store(tmp_path / "m.db", NOW)
    rotation.start(engine, box, NOW)
    assert [rotation.advance(engine, NOW) for _ in range(4)] == [
        "reissuing", "retiring", "idle", "idle"]


def test_an_interrupted_rotation_resumes_from_the_store(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    engine, box = new_store(path, NOW)
    set_sds(engine, "a-1", roots=[])
    rotation.start(engine, box, NOW)
    assert rotation.advance(engine, NOW) == "trusting"
    engine.dispose()  # "the server stopped"

    again = open_store(str(path))
    st = rotation.status(again)
    assert st["phase"] == "trusting"
    set_sds(again, "a-1", roots=[st["new_root"]])
    assert rotation.advance(again, NOW) == "reissuing"


def test_a_second_caller_does_not_move_the_phase_twice(tmp_path: Path) -> None:
    engine, box = new_store(tmp_path / "m.db", NOW)
    set_sds(engine, "a-1", roots=[])
    rotation.start(engine, box, NOW)
    new_root = rotation.status(engine)["new_root"]
    set_sds(engine, "a-1", roots=[new_root])
    other = open_store(str(tmp_path / "m.db"))
    assert rotation.advance(engine, NOW) == "reissuing"
    assert rotation.advance(other, NOW) == "reissuing"  # a-1 has not ACKed the new leaf
    assert len(_rotation_revisions(engine)) == 2


def test_rotation_with_a_wrong_store_key_stores_nothing(tmp_path: Path) -> None:
    engine, _ = new_store(tmp_path / "m.db", NOW)
    before = dump(tmp_path / "m.db")
    with pytest.raises(CaKeyError, match="^cannot sign: wrong encryption key"):
        rotation.start(engine, KeyBox(generate_key(), "MESHGATE_CA_KEY"), NOW)
    assert dump(tmp_path / "m.db") == before


def test_importing_an_intermediate_of_the_same_root_needs_no_new_trust(tmp_path: Path) -> None:
    """The old signer (an imported intermediate) and the new one share a root: only leaves move."""
    import datetime as dt

    engine, box = new_store(tmp_path / "m.db", NOW)
    at = dt.datetime.fromtimestamp(NOW, dt.UTC)
    rk, i1, i2 = f.key(), f.key(), f.key()
    root = f.cert("corp root", rk, now=at)
    inter1 = f.cert("inter 1", i1, issuer=(root, rk), now=at)
    inter2 = f.cert("inter 2", i2, issuer=(root, rk), now=at)
    root_fp = authority.fingerprint(root)

    # switch from the generated root to inter1 (a new root: the full dance)
    rotation.start(engine, box, NOW, signer=importing.validate_import(
        f.pem(inter1), f.key_pem(i1), f.pem(root), NOW))
    assert rotation.status(engine)["new_root"] == root_fp
    while rotation.advance(engine, NOW) != "idle":
        pass
    issuer = IdentityIssuer(engine, box)
    assert issuer.bundle_fingerprints() == [root_fp]
    leaf = issuer.identity_for("a-1", SPIFFE, 600, NOW)
    assert len(authority.split_pems(leaf.cert_chain_pem)) == 2  # leaf + inter1, no root

    # inter1 -> inter2: the root stays, nothing retires from the bundle
    set_sds(engine, "a-1", roots=[root_fp], issuer=authority.fingerprint(inter1))
    rotation.start(engine, box, NOW, signer=importing.validate_import(
        f.pem(inter2), f.key_pem(i2), f.pem(root), NOW))
    assert rotation.advance(engine, NOW) == "reissuing"  # every proxy trusts the root already
    assert rotation.status(engine)["retiring_roots"] == []
    set_sds(engine, "a-1", roots=[root_fp], issuer=authority.fingerprint(inter2))
    assert rotation.advance(engine, NOW) == "retiring"
    assert rotation.advance(engine, NOW) == "idle"
    issuer.reload()
    assert issuer.bundle_fingerprints() == [root_fp]


def test_rotation_and_issuer_on_both_backends(store_url: str) -> None:
    """The same rotation on SQLite and PostgreSQL (skipped without MESHGATE_TEST_PG)."""
    engine, box = new_store(store_url, NOW)
    try:
        issuer = IdentityIssuer(engine, box)
        old_fp = issuer.signer_fingerprint()
        assert issuer.identity_for("a-1", SPIFFE, 60, NOW).issuer_fingerprint == old_fp
        set_sds(engine, "a-1", roots=[old_fp], issuer=old_fp)
        rotation.start(engine, box, NOW)
        new_fp = rotation.status(engine)["new"]
        assert rotation.advance(engine, NOW) == "trusting"
        set_sds(engine, "a-1", roots=[old_fp, new_fp], issuer=old_fp)
        assert rotation.advance(engine, NOW) == "reissuing"
        issuer.reload()
        assert issuer.identity_for("a-1", SPIFFE, 60, NOW).issuer_fingerprint == new_fp
        set_sds(engine, "a-1", roots=[old_fp, new_fp], issuer=new_fp)
        assert rotation.advance(engine, NOW) == "retiring"
        set_sds(engine, "a-1", roots=[new_fp], issuer=new_fp)
        assert rotation.advance(engine, NOW) == "idle"
        assert _statuses(engine) == {old_fp: "retired", new_fp: "active"}
    finally:
        engine.dispose()


def test_after_rotations_the_server_certificate_still_verifies_under_the_first_root(tmp_path: Path) -> None:
    import datetime as dt

    from cryptography import x509
    from cryptography.x509.verification import PolicyBuilder, Store

    engine, box = new_store(tmp_path / "m.db", NOW)
    issuer = IdentityIssuer(engine, box)
    first_root = authority.load_certs(issuer.trust_bundle_pem())[0]
    for _ in range(2):
        rotation.start(engine, box, NOW)
        while rotation.advance(engine, NOW) != "idle":
            pass
    assert issuer.reload()
    [newest] = authority.load_certs(issuer.trust_bundle_pem())
    chain_pem, _ = issuer.server_credentials(["cp.local"], NOW)
    leaf, *rest = authority.load_certs(chain_pem)
    assert len(rest) == 2  # the newest root under the middle one, the middle under the first
    for trusted in (first_root, newest):
        verifier = PolicyBuilder().store(Store([trusted])).time(
            dt.datetime.fromtimestamp(NOW, dt.UTC)).build_server_verifier(x509.DNSName("cp.local"))
        assert verifier.verify(leaf, rest)[-1] == trusted
    # workload identities do not carry them: their peers get the bundle over SDS
    ident = issuer.identity_for("a-1", SPIFFE, 60, NOW)
    assert len(authority.split_pems(ident.cert_chain_pem)) == 1
