"""Running one Envoy in the foreground (`meshgate proxy run`): signals forwarded, its exit code returned.

    argv = envoy_command("orders-1.json", concurrency=1, log_level="info")
    code = run_foreground(argv, on_start=lambda pid: print("envoy pid", pid))

Several Envoys on one host each need `--disable-hot-restart` (or a distinct
`--base-id`), their own admin port and `--concurrency` kept small
(ENVOY_NOTES.md); `envoy_command` adds those flags.

The parent stays, so that a supervisor signalling it (systemd, a terminal's
Ctrl-C, a test) reaches Envoy: SIGTERM, SIGINT, SIGHUP, SIGUSR1 and SIGUSR2
are forwarded, and the exit code is Envoy's (128 + N when Envoy died of
signal N, as a shell reports it).
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

from meshgate.fleet.envoy import find_envoy

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
LOG_LEVELS = ("trace", "debug", "info", "warning", "error", "critical", "off")


def envoy_command(config: str | Path, *, concurrency: int = 1, log_level: str = "info",
                  base_id: int | None = None, extra: Sequence[str] = (), envoy: str | None = None) -> list[str]:
    """Envoy's argv for one proxy on a shared host: hot restart off (or its own base id)."""
    hot_restart = ["--base-id", str(base_id)] if base_id is not None else ["--disable-hot-restart"]
    return [envoy or find_envoy(), "-c", str(config), *hot_restart,
            "--concurrency", str(concurrency), "-l", log_level, *extra]


def exit_code(returncode: int) -> int:
    """A child's return code as a shell shows it (killed by signal N -> 128 + N)."""
    return 128 - returncode if returncode < 0 else returncode


def run_foreground(argv: Sequence[str], *, on_start: Callable[[int], None] | None = None) -> int:
    """Run `argv` with this process's stdin/stdout/stderr, forwarding signals; its exit code.

    Handlers are installed before the child starts: a signal arriving in
    between is delivered to it as soon as it exists. If this process fails
    (an exception), the child is stopped too: no Envoy outlives its runner.
    """
    proc: subprocess.Popen[bytes] | None = None
    pending: list[int] = []

    def forward(signum: int, frame: FrameType | None) -> None:
        if proc is None:
            pending.append(signum)
        elif proc.poll() is None:
            proc.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in FORWARDED}
    try:
        proc = subprocess.Popen(list(argv))
        for signum in pending:
            proc.send_signal(signum)
        if on_start is not None:
            on_start(proc.pid)
        return exit_code(proc.wait())
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for s, handler in previous.items():
            signal.signal(s, handler)
