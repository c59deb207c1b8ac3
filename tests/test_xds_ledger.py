"""The ACK/NACK ledger: batched writes, what rows say, and NACK reasons from real Envoy text."""

from __future__ import annotations

import pytest
from sqlalchemy import event

from meshgate.store import status as store_status
from meshgate.xds.ledger import Ledger
from meshgate.xds.nacks import named_in, reason
from tests.xds_support import new_mesh, service, sidecar


@pytest.fixture
def engine(store_url: str):  # type: ignore[no-untyped-def]
    """SQLite, and PostgreSQL when MESHGATE_TEST_PG is set."""
    e = new_mesh(store_url)
    service(e, "web")
    for i in range(10):
        sidecar(e, f"web-{i}", "web")
    return e


def test_many_messages_one_transaction(engine) -> None:  # type: ignore[no-untyped-def]
    commits = []
    event.listen(engine, "commit", lambda conn: commits.append(1))
    ledger = Ledger(engine, "test-replica")
    for i in range(10):
        p = f"web-{i}"
        for t in ("cds", "eds", "sds", "lds", "rds"):
            ledger.seen(p, t)
            ledger.sent(p, t, "v1", f"{p}-1")
            ledger.acked(p, t, "v1")
            ledger.sent(p, t, "v2", f"{p}-2")
    ledger.nacked("web-3", "cds", "v2", "bad cluster", ["svc/x"], ["service:x"])
    assert ledger.flush() == 50
    assert len(commits) == 1
    assert ledger.flush() == 0 and len(commits) == 1  # nothing changed: no write at all
    with engine.connect() as conn:
        rows = {(r["proxy"], r["type"]): r for r in store_status.status_rows(conn)}
    assert len(rows) == 50
    r = rows[("web-3", "cds")]
    assert (r["sent_version"], r["acked_version"], r["nack_version"]) == ("v2", "v1", "v2")
    assert r["nack_resources"] == ["svc/x"] and r["nack_sources"] == ["service:x"]
    assert store_status.nack_open(r) and not store_status.in_sync(r)
    assert r["replica"] == "test-replica" and r["connected"]
    ledger.acked("web-3", "cds", "v2")
    ledger.disconnected("web-3")
    assert ledger.flush() == 5
    with engine.connect() as conn:
        rows = {r["type"]: r for r in store_status.status_rows(conn, "web-3")}
    assert store_status.in_sync(rows["cds"]) and not store_status.nack_open(rows["cds"])
    assert not any(r["connected"] for r in rows.values())


def test_sds_rows_record_acked_roots_and_issuer(engine) -> None:  # type: ignore[no-untyped-def]
    ledger = Ledger(engine, "r")
    ledger.acked("web-0", "sds", "v1", acked_roots=["aa", "bb"], acked_issuer="aa")
    ledger.flush()
    with engine.connect() as conn:
        (row,) = store_status.status_rows(conn, "web-0")
    assert row["acked_roots"] == ["aa", "bb"] and row["acked_issuer"] == "aa"


def test_rows_of_a_removed_proxy_are_not_written(engine) -> None:  # type: ignore[no-untyped-def]
    ledger = Ledger(engine, "r")
    ledger.sent("ghost", "cds", "v1", "n")
    ledger.flush()
    with engine.connect() as conn:
        assert store_status.status_rows(conn, "ghost") == []


def test_replica_restart_marks_its_rows_disconnected(engine) -> None:  # type: ignore[no-untyped-def]
    led = Ledger(engine, "a")
    led.seen("web-0", "cds")
    led.flush()
    other = Ledger(engine, "b")
    other.seen("web-1", "cds")
    other.flush()
    store_status.mark_replica_disconnected(engine, "a")
    with engine.connect() as conn:
        rows = {r["proxy"]: r["connected"] for r in store_status.status_rows(conn)}
    assert rows == {"web-0": False, "web-1": True}


@pytest.mark.parametrize(
    "message, expected",
    [  # recorded from Envoy 1.40
        ("Error adding/updating listener(s) dup: error adding listener '127.0.0.1:48605': no filter chains "
         "specified\n", "Error adding/updating listener(s) dup: error adding listener '127.0.0.1:48605': no "
         "filter chains specified"),
        ('Error adding/updating cluster(s) svc/bad: goo.gle/debugproto   \nsni: "xxxx"\n: Proto constraint '
         "validation failed (UpstreamTlsContextValidationError.Sni: value length must be at most 255 bytes)",
         "Proto constraint validation failed (UpstreamTlsContextValidationError.Sni: value length must be at "
         "most 255 bytes)"),
        ("Invalid duration: Expected positive duration: goo.gle/debugonly   \nseconds: -1\n",
         "Invalid duration: Expected positive duration"),
        ("malformed IP address: orders.invalid. Consider setting resolver_name or setting cluster type to "
         "'STRICT_DNS' or 'LOGICAL_DNS'", "malformed IP address: orders.invalid. Consider setting resolver_name "
         "or setting cluster type to 'STRICT_DNS' or 'LOGICAL_DNS'"),
    ],
)
def test_nack_reason_is_the_human_part(message: str, expected: str) -> None:
    assert reason(message) == expected


def test_named_in_matches_whole_names() -> None:
    msg = "Error adding/updating cluster(s) svc/ab: x"
    assert named_in(msg, ["svc/a", "svc/ab", "svc/b"]) == ["svc/ab"]
