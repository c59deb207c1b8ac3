"""Helpers for the reliability and attack tests: a restartable `meshgate serve`
subprocess, counted traffic, a CLI runner on a file, proxy status reads.

Every process started here is stopped by its PID (never by name).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from meshgate.cli import cli as meshgate_cli
from meshgate.fleet.envoy import free_port

MESHGATE = str(Path(sys.executable).parent / "meshgate")


def wait_for(what: str, check: Callable[[], Any], timeout: float = 20.0, interval: float = 0.1) -> Any:
    """Poll `check()` until truthy (errors of a process still starting count as 'not yet')."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (urllib.error.URLError, OSError, KeyError, ValueError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def cli(db: Path | str, *args: str) -> str:
    """`meshgate --db DB ARGS` in process; asserts success, returns the output."""
    r = CliRunner().invoke(meshgate_cli, ["--db", str(db), *args], catch_exceptions=False)
    assert r.exit_code == 0, (args, r.output)
    return r.output


def cli_json(db: Path | str, *args: str) -> Any:
    return json.loads(cli(db, *args, "-o", "json"))


class Serve:
    """`meshgate serve` as a subprocess on fixed ports, so it can be killed and started
    again where the Envoys' bootstraps point."""

    def __init__(self, db: Path, workdir: Path, name: str = "serve") -> None:
        self.db = db
        self.port, self.admin = free_port(), free_port()
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Serve:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        try:
            self.proc = subprocess.Popen(
                [MESHGATE, "serve", "--listen", f"127.0.0.1:{self.port}",
                 "--admin", f"127.0.0.1:{self.admin}", "--log-level", "debug"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, "MESHGATE_DB": str(self.db)},
            )
        finally:
            log.close()
        return self

    def healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"meshgate serve exited {self.proc.returncode}: {self.tail()}")
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/healthz", timeout=1) as r:  # noqa: S310
            return bool(r.status == 200)

    def wait_ready(self, timeout: float = 30.0) -> None:
        wait_for("meshgate serve /healthz", self.healthy, timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def get(port: int, host: str, path: str = "/hello", timeout: float = 5.0) -> tuple[int, str]:
    """One plain HTTP GET to 127.0.0.1:port with a Host header: (status, body)."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Host": host})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310 - loopback
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


class Traffic:
    """Requests made one after another in a thread until stopped, every one counted.

    `one()` makes one request and returns None when it passed, else what went wrong.
    `Traffic.http(port, host, expect)` is a GET through a sidecar's outbound port.
    """

    def __init__(self, one: Callable[[], str | None], name: str = "traffic") -> None:
        self.one = one
        self.ok = 0
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    @staticmethod
    def http(port: int, host: str, expect: str) -> Traffic:
        def one() -> str | None:
            status, body = get(port, host)
            return None if status == 200 and expect in body else f"{status} {body[:200]}"

        return Traffic(one, f"traffic-{host}")

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                problem = self.one()
            except (urllib.error.URLError, OSError) as exc:
                problem = repr(exc)
            if problem is None:
                self.ok += 1
            else:
                self.failed.append(f"{time.time():.3f} {problem}")
            self._stop.wait(0.01)

    def more(self, n: int, timeout: float = 20.0) -> None:
        """Wait for `n` more successful requests (returns early on a failure)."""
        target = self.ok + n
        wait_for(f"{n} more requests", lambda: self.ok >= target or self.failed, timeout)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def status_rows(db: Path) -> list[dict[str, Any]]:
    from meshgate.store import status as store_status
    from meshgate.store.db import open_store

    engine = open_store(str(db))
    try:
        with engine.connect() as conn:
            return store_status.status_rows(conn)
    finally:
        engine.dispose()


def in_sync(db: Path, proxies: set[str]) -> bool:
    """Every xDS type each proxy was sent (at least CDS, LDS, SDS): connected, and the
    version sent is the version ACKed."""
    by_proxy: dict[str, list[dict[str, Any]]] = {}
    for r in status_rows(db):
        if r["proxy"] in proxies:
            by_proxy.setdefault(r["proxy"], []).append(r)
    return set(by_proxy) == proxies and all(
        {"cds", "lds", "sds"} <= {r["type"] for r in rs}
        and all(r["connected"] and r["sent_version"] is not None
                and r["sent_version"] == r["acked_version"] for r in rs)
        for rs in by_proxy.values()
    )


def identity_serials(envoy: Any) -> set[str]:
    """Serial numbers of the leaf certificates an Envoy holds (admin /certs)."""
    certs = json.loads(envoy.admin("/certs"))["certificates"]
    return {c["serial_number"] for cert in certs for c in cert.get("cert_chain", [])}
