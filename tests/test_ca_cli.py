"""`meshgate init` CA, `ca show`, `ca import`, `ca rotate` through the CLI on a real SQLite file."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import stat
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from meshgate.ca import authority
from tests import ca_factory as f
from tests.ca_store import set_sds
from tests.conftest import Invoke


def _pem_files(tmp: Path, **texts: str) -> dict[str, str]:
    out = {}
    for name, text in texts.items():
        p = tmp / f"{name}.pem"
        p.write_text(text)
        out[name] = str(p)
    return out


def _show(run: Invoke) -> dict:
    r = run("ca", "show", "--output", "json")
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


def _engine(db_path: Path):  # type: ignore[no-untyped-def]
    return create_engine(f"sqlite:///{db_path}")


def test_init_creates_root_ca_and_a_private_key_file(initialized: Invoke, db_path: Path) -> None:
    key_file = Path(f"{db_path}.key")
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    data = _show(initialized)
    assert data["phase"] == "idle"
    assert data["signing"] == f"ok (key file {key_file})"
    [root] = data["certificates"]
    assert root["status"] == "active" and root["role"] == "root" and root["can_sign"]
    assert data["trust_bundle"] == [root["fingerprint"]]
    assert root["not_after"].startswith(str(dt.datetime.now(dt.UTC).year + 10))
    table = initialized("ca", "show")
    assert table.exit_code == 0, table.output
    assert root["fingerprint"][:16] in table.output and "rotation phase: idle" in table.output


def test_without_the_key_file_the_ca_says_it_cannot_sign(initialized: Invoke, db_path: Path) -> None:
    Path(f"{db_path}.key").unlink()
    data = _show(initialized)
    assert data["signing"].startswith("cannot sign: no CA encryption key")
    r = initialized("ca", "rotate")
    assert r.exit_code == 1
    assert r.output.startswith("error: cannot sign: no CA encryption key"), r.output


def test_init_with_env_key_writes_no_key_file(run: Invoke, db_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHGATE_CA_KEY", base64.b64encode(os.urandom(32)).decode())
    r = run("init", "--trust-domain", "example.org")
    assert r.exit_code == 0, r.output
    assert not Path(f"{db_path}.key").exists()
    assert _show(run)["signing"] == "ok (MESHGATE_CA_KEY)"
    monkeypatch.setenv("MESHGATE_CA_KEY", base64.b64encode(os.urandom(32)).decode())
    assert _show(run)["signing"].startswith("cannot sign: wrong encryption key (MESHGATE_CA_KEY)")


@pytest.mark.parametrize("case", ["not-ca", "mismatch", "expired", "no-chain"])
def test_import_bad_input_is_refused_and_changes_nothing(
    initialized: Invoke, db_dump, tmp_path: Path, case: str  # type: ignore[no-untyped-def]
) -> None:
    k, other = f.key(), f.key()
    root = f.cert("corp root", other)
    material = {
        "not-ca": (f.cert("leaf", k, ca=False), k, None, "--cert: CN=leaf is not a CA certificate"),
        "mismatch": (f.cert("ca", k), other, None, "--key: does not match the certificate CN=ca"),
        "expired": (f.cert("old", k, days_from=-20, days_to=-10), k, None, "--cert: CN=old expired on"),
        "no-chain": (f.cert("inter", k, issuer=(root, other)), k, None, "--chain: required"),
    }[case]
    cert, key, chain, message = material
    files = _pem_files(tmp_path, c=f.pem(cert), k=f.key_pem(key))
    before = db_dump()
    r = initialized("ca", "import", "--cert", files["c"], "--key", files["k"])
    assert r.exit_code == 2, r.output
    assert r.output.startswith("error: invalid CA import: ") and message in r.output, r.output
    assert "Traceback" not in r.output
    assert db_dump() == before


def test_import_with_missing_or_wrong_store_key_changes_nothing(
    initialized: Invoke, db_dump, db_path: Path, tmp_path: Path,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    k = f.key()
    files = _pem_files(tmp_path, c=f.pem(f.cert("corp root", k)), k=f.key_pem(k))
    before = db_dump()
    monkeypatch.setenv("MESHGATE_CA_KEY", base64.b64encode(os.urandom(32)).decode())
    r = initialized("ca", "import", "--cert", files["c"], "--key", files["k"])
    assert r.exit_code == 1, r.output
    assert r.output.startswith("error: cannot sign: wrong encryption key (MESHGATE_CA_KEY)"), r.output
    monkeypatch.delenv("MESHGATE_CA_KEY")
    Path(f"{db_path}.key").rename(tmp_path / "elsewhere.key")
    r = initialized("ca", "import", "--cert", files["c"], "--key", files["k"])
    assert r.exit_code == 1, r.output
    assert "cannot sign: no CA encryption key" in r.output
    assert db_dump() == before


def test_import_of_a_missing_file_is_a_usage_error(initialized: Invoke) -> None:
    r = initialized("ca", "import", "--cert", "nope.pem", "--key", "nope.key")
    assert r.exit_code == 2 and "nope.pem" in r.output


def test_import_intermediate_goes_through_the_phases(initialized: Invoke, db_path: Path,
                                                     tmp_path: Path) -> None:
    rk, ik = f.key(), f.key()
    root = f.cert("corp root", rk)
    inter = f.cert("corp mesh", ik, issuer=(root, rk))
    files = _pem_files(tmp_path, c=f.pem(inter), k=f.key_pem(ik), r=f.pem(root))
    old = _show(initialized)["certificates"][0]["fingerprint"]
    engine = _engine(db_path)
    set_sds(engine, "a-1", roots=[old], issuer=old)  # a connected proxy that has not ACKed yet
    r = initialized("ca", "import", "--cert", files["c"], "--key", files["k"], "--chain", files["r"])
    assert r.exit_code == 0, r.output
    assert "phase: trusting" in r.output and "a-1: ACK of a trust bundle with the new root" in r.output
    data = _show(initialized)
    assert data["phase"] == "trusting"
    assert sorted(data["trust_bundle"]) == sorted([old, authority.fingerprint(root)])

    r = initialized("ca", "rotate", "--status", "--wait", "--timeout", "0")
    assert r.exit_code == 1
    assert "still in phase trusting" in r.output and "a-1" in r.output

    set_sds(engine, "a-1", connected=False)  # the proxy left: nothing to wait for
    r = initialized("ca", "rotate", "--status", "--wait", "--timeout", "10")
    assert r.exit_code == 0, r.output
    assert "trusting -> reissuing" in r.output and "retiring -> idle" in r.output
    data = _show(initialized)
    assert data["trust_bundle"] == [authority.fingerprint(root)]
    by_status = {c["status"]: c for c in data["certificates"]}
    assert by_status["active"]["fingerprint"] == authority.fingerprint(inter)
    assert by_status["active"]["role"] == "intermediate"
    assert by_status["retired"]["fingerprint"] == old
    engine.dispose()


def test_rotate_status_shows_phase_and_a_second_rotate_is_refused(initialized: Invoke) -> None:
    r = initialized("ca", "rotate")
    assert r.exit_code == 0, r.output
    assert "rotation started: phase trusting" in r.output
    r = initialized("ca", "rotate", "--status", "--output", "json")
    assert r.exit_code == 0, r.output
    st = json.loads(r.output)
    assert st["phase"] == "trusting" and st["waiting_for"] == [] and st["connected_proxies"] == 0
    r = initialized("ca", "rotate")
    assert r.exit_code == 1 and "already in phase trusting" in r.output
    r = initialized("ca", "rotate", "--status", "--wait")
    assert r.exit_code == 0, r.output
    assert _show(initialized)["phase"] == "idle"
    history = [c for c in _show(initialized)["certificates"]]
    assert sorted(c["status"] for c in history) == ["active", "retired"]
