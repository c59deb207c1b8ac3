"""SDS over ADS: each proxy gets only its own identity (real mesh CA), ACKed roots and
issuer are recorded for root rotation, and identities are re-pushed when they renew."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from cryptography import x509
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2

from meshgate.ca.authority import fingerprint
from meshgate.store import status as store_status
from meshgate.store.world import load_world
from meshgate.xds import server as server_mod
from tests.xds_support import SDS, AdsClient, FakeSecrets, issuer_secrets, mesh_fixture, serving


@pytest.fixture
def mesh(tmp_path: Path):  # type: ignore[no-untyped-def]
    return mesh_fixture(tmp_path)


def _secrets(resp) -> dict[str, secret_pb2.Secret]:  # type: ignore[no-untyped-def]
    out = {}
    for a in resp.resources:
        s = secret_pb2.Secret.FromString(a.value)
        out[s.name] = s
    return out


async def test_own_identity_only_and_acked_roots_recorded(mesh, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    engine, tokens = mesh
    caplog.set_level(logging.WARNING, logger="meshgate.xds.stream")
    async with serving(engine, secrets=issuer_secrets(engine)) as srv, AdsClient(srv.port, tokens["web-1"]) as c:
        await c.send(c.sotw(SDS, ["identity", "trust-bundle", "orders-1", "spiffe://example.org/svc/orders"],
                            node="web-1"))
        resp = await c.recv()
        got = _secrets(resp)
        assert set(got) == {"identity", "trust-bundle"}
        leaf = x509.load_pem_x509_certificate(got["identity"].tls_certificate.certificate_chain.inline_string.encode())
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sans.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://example.org/svc/web"]
        assert "secret-refused" in caplog.text and "orders-1" in caplog.text
        await c.send(c.sotw(SDS, ["identity", "trust-bundle"], version=resp.version_info, nonce=resp.nonce))
        await asyncio.sleep(0.4)
    with engine.connect() as conn:
        (row,) = [r for r in store_status.status_rows(conn, "web-1") if r["type"] == "sds"]
    roots = load_world(engine).trust_roots_pem
    assert row["acked_roots"] == [fingerprint(r) for r in roots]
    assert row["acked_issuer"] == fingerprint(roots[0])  # the root signs leaves directly


class RenewingSecrets(FakeSecrets):
    """Renews every identity once it is told to (as the CA does at half-life)."""

    def __init__(self) -> None:
        super().__init__()
        self.generation = 0
        self.due = False

    def secrets_for(self, proxy, world, now):  # type: ignore[no-untyped-def]
        from meshgate.xds.translate.tls import identity_secret, trust_bundle_secret

        self.calls.append(proxy.name)
        return {"identity": identity_secret(f"cert {self.generation}", "key"), "trust-bundle": trust_bundle_secret("r")}

    def next_refresh(self, now: float) -> float:
        return now if self.due else float("inf")


async def test_identities_are_repushed_when_they_renew(mesh, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    engine, tokens = mesh
    monkeypatch.setattr(server_mod, "TICK_INTERVAL", 0.05)
    secrets = RenewingSecrets()
    async with serving(engine, secrets=secrets) as srv, AdsClient(srv.port, tokens["web-1"]) as c:
        await c.send(c.sotw(SDS, ["identity", "trust-bundle"], node="web-1"))
        first = await c.recv()
        await c.send(c.sotw(SDS, ["identity", "trust-bundle"], version=first.version_info, nonce=first.nonce))
        await c.nothing(0.3)  # not due: the tick asks nothing new
        secrets.generation, secrets.due = 1, True
        renewed = await c.recv()
        assert _secrets(renewed)["identity"].tls_certificate.certificate_chain.inline_string == "cert 1"
        assert renewed.version_info != first.version_info
