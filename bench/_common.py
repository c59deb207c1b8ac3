"""Helpers shared by the benchmarks in bench/ (not a benchmark itself: the runner skips `_` files).

    with ServeProcess(db, workdir, plaintext=True) as serve:   # `meshgate serve`, stopped by PID
        ...serve.port, serve.admin_port, serve.pid
    cli(db, "service", "add", "orders", "--port", "8080")      # the real CLI, in process
    cpu_seconds(pid), rss_mb(pid), anon_mb(pid), pct(values, 99), machine()
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from meshgate.fleet.envoy import find_envoy, free_port  # noqa: E402

MESHGATE = str(Path(sys.executable).parent / "meshgate")


def cli(db: Path, *args: str) -> str:
    """One `meshgate` command, in process (click's runner); its output. Raises on a non-zero exit."""
    from click.testing import CliRunner

    from meshgate.cli import cli as group

    r = CliRunner().invoke(group, ["--db", str(db), *args], catch_exceptions=False)
    if r.exit_code != 0:
        raise RuntimeError(f"meshgate {' '.join(args)}: exit {r.exit_code}: {r.output}")
    return r.output


def token_of(output: str) -> str:
    """The join token in `proxy add` / `edge add` output."""
    for word in output.split():
        if word.startswith("mgt_"):
            return word
    raise RuntimeError(f"no join token in {output!r}")


class ServeProcess:
    """`meshgate serve` as a subprocess (what users run), ready when /healthz answers;
    stopped by its PID (SIGTERM, then SIGKILL after 15 s)."""

    def __init__(self, db: Path, workdir: Path, *, plaintext: bool = False, log_level: str = "warning") -> None:
        self.db = db
        self.workdir = workdir
        self.plaintext = plaintext
        self.log_level = log_level
        self.port = free_port()
        self.admin_port = free_port()
        self.log_path = workdir / "serve.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> ServeProcess:
        cmd = [MESHGATE, "--db", str(self.db), "serve", "--listen", self.address,
               "--admin", f"127.0.0.1:{self.admin_port}", "--log-level", self.log_level]
        if self.plaintext:
            cmd.append("--insecure-plaintext-loopback")
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.admin("/healthz", 1.0)
                return self
            except OSError as exc:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"meshgate serve did not start: {self.tail()}") from exc
                time.sleep(0.1)

    def admin(self, path: str, timeout: float = 5.0) -> bytes:
        url = f"http://127.0.0.1:{self.admin_port}{path}"
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - loopback admin
            return bytes(r.read())

    def tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> ServeProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (fields 14 and 15 of /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def anon_mb(pid: int) -> float:
    """A process's private (anonymous) resident memory: RSS without shared binary and file pages."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank); NaN for no values."""
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(p / 100 * (len(s) - 1)))))]


def bootstrap_ci(rounds: int, statistic: Callable[[list[int]], float], level: float = 0.90,
                 resamples: int = 2000, seed: int = 11) -> tuple[float, float]:
    """A percentile-bootstrap confidence interval for `statistic` over rounds: `statistic(idx)`
    gets a resample of round indices (drawn with replacement, the same indices for every path,
    so paired comparisons stay paired). Fixed seed: the same figures give the same interval."""
    import random

    rng = random.Random(seed)
    values = sorted(statistic([rng.randrange(rounds) for _ in range(rounds)]) for _ in range(resamples))
    values = [v for v in values if math.isfinite(v)]
    if not values:
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    return pct(values, tail), pct(values, 100 - tail)


WRK_MISSING = "wrk is not installed: apt-get install -y wrk"


def wrk_missing() -> bool:
    """True, said on stderr, when wrk (the data-plane benchmarks' load generator) is missing."""
    if shutil.which("wrk") is None:
        print(WRK_MISSING, file=sys.stderr)
        return True
    return False


def publish(res: dict[str, Any], text: str, json_path: Path | None) -> None:
    """Print a benchmark's report; with `--json FILE`, keep every figure there too."""
    print()
    print(text)
    if json_path:
        json_path.write_text(json.dumps(res, indent=1, default=str))


def envoy_version() -> str:
    try:
        out = subprocess.run([find_envoy(), "--version"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    parts = out.split("version:", 1)[-1].strip().split("/")
    return parts[1] if len(parts) > 1 else out.strip()


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    info = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((ln.split(":", 1)[1].strip() for ln in info if ln.startswith("model name")), platform.processor())
    mem = next((int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines()
                if ln.startswith("MemTotal:")), 0)
    return {"nproc": os.cpu_count(), "cpu": cpu, "mem_gib": mem / 1024 / 1024, "python": platform.python_version(),
            "kernel": platform.release(), "envoy": envoy_version(), "load": os.getloadavg()}


def machine_line(m: dict[str, Any]) -> str:
    load = ", ".join(f"{x:.1f}" for x in m["load"])
    return (f"{m['nproc']} cores ({m['cpu']}), {m['mem_gib']:.0f} GiB, Envoy {m['envoy']}, Python {m['python']}, "
            f"Linux {m['kernel']}; load average at start {load} (machine shared with other work)")


def url_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout):  # noqa: S310 - loopback only
            return True
    except (urllib.error.URLError, OSError):
        return False
