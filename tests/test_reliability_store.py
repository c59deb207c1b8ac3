"""The store under faults: a full disk, and the CLI killed with SIGKILL in the middle of writes.

Disk full is a real ENOSPC: the database lives on a small tmpfs mounted for the
test (root only; skipped otherwise), filled up by other files. A second test
forces SQLITE_FULL with `PRAGMA max_page_count` on every connection, so the
same path is covered where mounting is not allowed.

Crash consistency: CLI processes run writes one after another (the real click
entry point, `meshgate.cli.main`, in a loop: service and policy adds, instance
adds, applies of 40 objects in one transaction, updates, removals, mesh
settings) and are killed with SIGKILL after a random delay, 30 times. After each kill the database must open, pass
`PRAGMA integrity_check` and `foreign_key_check`, and hold exactly the state
its revision log describes: every row a revision recorded is in the table as
recorded (the last `after`), and no row exists that no revision recorded.
Each write is one transaction with its revision, so this is "the old or the
new state, never a mix".
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from meshgate.cli import cli
from meshgate.store import schema
from meshgate.store.db import open_store
from meshgate.store.rows import read_row, row_key
from tests.conftest import dump_database
from tests.mesh_kit import MESHGATE

SMALL_FS_KB = 3072


def _big_file(path: Path, n: int = 600) -> Path:
    """`n` services with labels: a few hundred KB of pages in one transaction."""
    docs = [f"kind: Service\nname: big-{i}\nport: 8080\nlabels: {{team: t{'x' * 50}, owner: o{'y' * 50}}}\n"
            for i in range(n)]
    path.write_text("---\n".join(docs))
    return path


def _fill(directory: Path, leave_kb: int) -> None:
    """Fill the file system holding `directory` with filler-* files, then free about `leave_kb`."""
    files: list[Path] = []
    start = len(list(directory.glob("filler-*")))
    try:
        while True:
            p = directory / f"filler-{start + len(files):05d}"
            files.append(p)
            with open(p, "wb") as f:
                f.write(b"\0" * 16384)
    except OSError:
        pass
    for p in files[: leave_kb // 16]:
        p.unlink()


def _integrity(db: Path) -> list[str]:
    conn = sqlite3.connect(db)
    try:
        return [r[0] for r in conn.execute("PRAGMA integrity_check")] + \
               [repr(r) for r in conn.execute("PRAGMA foreign_key_check")]
    finally:
        conn.close()


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB tmpfs mounted under tmp_path (unmounted after the test)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root; test_sqlite_full_* covers the same path")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SMALL_FS_KB}k", "tmpfs", str(mount)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def _meshgate(db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MESHGATE, "--db", str(db), *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "MESHGATE_ACTOR": "test@meshgate"})


def test_disk_full_during_a_write_is_a_clear_error_and_the_database_intact(
    small_fs: Path, tmp_path: Path
) -> None:
    db = small_fs / "mesh.db"
    assert _meshgate(db, "init", "--trust-domain", "example.org").returncode == 0
    assert _meshgate(db, "service", "add", "orders", "--port", "8080").returncode == 0
    before = dump_database(db)
    big = _big_file(tmp_path / "big.yaml")
    _fill(small_fs, leave_kb=256)  # room to open the database, not for the write

    r = _meshgate(db, "apply", "-f", str(big))
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert r.stderr.splitlines() == [
        "error: the database could not be written (database or disk is full); nothing was changed"
    ]
    assert "Traceback" not in r.stderr + r.stdout

    # not even room to open it (WAL and shared-memory files): still one clear line
    _fill(small_fs, leave_kb=0)
    r = _meshgate(db, "service", "add", "billing")
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1, r.stderr
    assert r.stderr.startswith("error: cannot open database") and "disk I/O error" in r.stderr

    for p in small_fs.glob("filler-*"):
        p.unlink()
    assert _integrity(db) == ["ok"]
    assert dump_database(db) == before
    # with space again, the very same write goes through
    r = _meshgate(db, "apply", "-f", str(big))
    assert r.returncode == 0, r.stderr
    assert _integrity(db) == ["ok"]


def test_sqlite_full_during_a_write_is_a_clear_error_and_the_database_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLITE_FULL without a small file system: every connection may not grow the file."""
    from meshgate.store import db as store_db

    db = tmp_path / "mesh.db"
    runner = CliRunner()

    def run(*args: str) -> object:
        return runner.invoke(cli, ["--db", str(db), *args], catch_exceptions=False)

    assert run("init", "--trust-domain", "example.org").exit_code == 0  # type: ignore[attr-defined]
    before = dump_database(db)
    pages = sqlite3.connect(db).execute("PRAGMA page_count").fetchone()[0]
    original = store_db._sqlite_pragmas

    def capped(dbapi_conn, record) -> None:  # type: ignore[no-untyped-def]
        original(dbapi_conn, record)
        dbapi_conn.execute(f"PRAGMA max_page_count = {pages + 2}")

    monkeypatch.setattr(store_db, "_sqlite_pragmas", capped)
    r = run("apply", "-f", str(_big_file(tmp_path / "big.yaml")))
    assert r.exit_code == 1, r.output  # type: ignore[attr-defined]
    assert r.stderr.splitlines() == [  # type: ignore[attr-defined]
        "error: the database could not be written (database or disk is full); nothing was changed"
    ]
    monkeypatch.setattr(store_db, "_sqlite_pragmas", original)
    assert _integrity(db) == ["ok"]
    assert dump_database(db) == before


# -- crash consistency -------------------------------------------------------------------

# A process that has imported the CLI forks one writer per round (fork is cheap; the
# parent never opens the database, so no connection crosses a fork). The writer runs
# the click entry point again and again; the test kills it with SIGKILL, and the
# parent reports how it ended.
WRITERS = r"""
import os, sys
from meshgate.cli import main

def write_forever(db, tag, batch_a, batch_b):
    ops = [  # "@" is the round: every round writes again
        ["service", "add", f"{tag}-s@", "--port", "8080", "--label", "team=crash"],
        ["apply", "-f", batch_a],
        ["policy", "allow", "--from", f"{tag}-s@", "--to", "orders", "--path", "/api/**", "--id", f"{tag}-p@"],
        ["instance", "add", f"{tag}-s@", "--address", "127.0.0.7", "--inbound-port", "2000@", "--app-port", "9"],
        ["apply", "-f", batch_b],
        ["service", "update", f"{tag}-s@", "--port", "9090"],
        ["policy", "remove", f"{tag}-p@"],
        ["mesh", "set", "--cert-ttl", "2h"],
        ["mesh", "set", "--cert-ttl", "1h"],
    ]
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    for round_ in range(10**6):
        for op in ops:
            sys.argv = ["meshgate", "--db", db, *[a.replace("@", str(round_ % 9)) for a in op]]
            try:
                main()
            except SystemExit:
                pass

print("ready", flush=True)
for line in sys.stdin:
    args = line.split()
    pid = os.fork()
    if pid == 0:
        try:
            write_forever(*args)
        finally:
            os._exit(3)
    print("pid", pid, flush=True)
    _, status = os.waitpid(pid, 0)
    print("ended", pid, os.WIFSIGNALED(status) and os.WTERMSIG(status), flush=True)
"""

KILLS = 30
REVISIONED = ("mesh", "services", "jwt_providers", "proxies", "instances", "policies", "edge_routes",
              "edge_certs")


def _batch(path: Path, tag: str, label: str, n: int = 20) -> Path:
    """One apply: `n` services and a policy each, all in one transaction; the same
    file with another `label` changes all `n` services at once."""
    docs = []
    for i in range(n):
        docs.append(f"kind: Service\nname: {tag}-b{i}\nport: 8080\nlabels: {{batch: {label}}}\n")
        docs.append(f"kind: Policy\nid: {tag}-b{i}\naction: allow\nsources: [orders]\ntarget: {tag}-b{i}\n"
                    "methods: [GET]\npaths: [{prefix: /x}]\n")
    path.write_text("---\n".join(docs))
    return path


def _state_matches_revisions(db: Path) -> tuple[int, int]:
    """Every row equals the last `after` the revision log recorded for it; no row is
    unrecorded. Returns (revisions, rows checked)."""
    assert _integrity(db) == ["ok"]
    engine = open_store(str(db))
    try:
        with engine.connect() as conn:
            last: dict[tuple[str, str], object] = {}
            revs = conn.execute(schema.revisions.select().order_by(schema.revisions.c.id)).all()
            for rev in revs:
                for c in json.loads(rev.changes):
                    last[(c["kind"], c["key"])] = c["after"]
            checked = 0
            for (kind, key), after in last.items():
                if kind not in REVISIONED:
                    continue
                table = schema.metadata.tables[kind]
                assert read_row(conn, table, key) == after, (kind, key)
                checked += 1
            for kind in REVISIONED:
                table = schema.metadata.tables[kind]
                for row in conn.execute(table.select()).mappings():
                    key = row_key(table, row)
                    assert last.get((kind, key)) is not None, f"{kind} {key} has no revision"
            return len(revs), checked
    finally:
        engine.dispose()


def test_killing_the_cli_during_writes_never_leaves_a_mixed_state(tmp_path: Path) -> None:
    db = tmp_path / "mesh.db"
    runner = CliRunner()
    for args in (("init", "--trust-domain", "example.org"), ("service", "add", "orders", "--port", "8080")):
        assert runner.invoke(cli, ["--db", str(db), *args]).exit_code == 0
    rng = random.Random(12)
    parent = subprocess.Popen([sys.executable, "-c", WRITERS], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "MESHGATE_ACTOR": "crash@meshgate"})
    assert parent.stdin is not None and parent.stdout is not None
    revisions, checked = _state_matches_revisions(db)
    grew = 0
    try:
        assert parent.stdout.readline().strip() == "ready"
        for i in range(KILLS):
            tag = f"c{i}"
            batches = [str(_batch(tmp_path / f"{tag}-{x}.yaml", tag, x)) for x in ("a", "b")]
            parent.stdin.write(f"{db} {tag} {' '.join(batches)}\n")
            parent.stdin.flush()
            word, pid = parent.stdout.readline().split()
            assert word == "pid"
            time.sleep(rng.uniform(0.02, 0.5))
            os.kill(int(pid), signal.SIGKILL)
            # killed while it was still writing (a writer never stops on its own)
            assert parent.stdout.readline().split() == ["ended", pid, str(int(signal.SIGKILL))]
            now, checked = _state_matches_revisions(db)
            assert now >= revisions
            grew += now > revisions
            revisions = now
    finally:
        parent.stdin.close()
        parent.wait(10)
        parent.stdout.close()
    assert grew >= KILLS // 3, f"only {grew} of {KILLS} writers committed anything before being killed"
    assert checked > KILLS
