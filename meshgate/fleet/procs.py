"""Child processes of the demo: started with a log file each, stopped by PID.

    children = Children(logdir)
    server = children.start("meshgate serve", [...])
    ...
    children.stop_all()            # reverse start order; SIGTERM, then SIGKILL

Each child runs in a session (process group) of its own, so a terminal's
Ctrl-C reaches only the demo, which then stops them in order (sidecars before
the server). A child's own children (the Envoy that `meshgate proxy run`
starts) share its group: a child that ignores SIGTERM is killed with its whole
group, so no Envoy outlives the demo.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ENVOY_PID = re.compile(r"Envoy pid (\d+)")


def meshgate_argv() -> list[str]:
    """How to run the `meshgate` CLI in a child process (the console script of this
    interpreter's environment, else the module)."""
    script = Path(sys.executable).parent / "meshgate"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-c", "from meshgate.cli import main; main()"]


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (Linux /proc; elsewhere signal 0)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


@dataclass
class Child:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def envoy_pid(self) -> int | None:
        """The Envoy a `meshgate proxy run` child started (from its log line)."""
        try:
            m = ENVOY_PID.search(self.log.read_text(errors="replace"))
        except OSError:
            return None
        return int(m.group(1)) if m else None

    def signal(self, sig: int) -> None:
        if self.running():
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def wait(self, timeout: float) -> int | None:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill_group(self) -> None:
        """SIGKILL the child's whole process group (it and whatever it started)."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.wait(5)

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL to its group after `timeout`; its exit code."""
        self.signal(signal.SIGTERM)
        code = self.wait(timeout)
        if code is None:
            self.kill_group()
            code = self.popen.poll()
        return code


@contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Hold SIGINT (a real one, or `_thread.interrupt_main`) until the block is
    done, then raise KeyboardInterrupt. Only the main thread handles signals."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, _frame: held.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if held:
        raise KeyboardInterrupt


class Children:
    def __init__(self, logdir: Path) -> None:
        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.items: list[Child] = []

    def start(self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None) -> Child:
        log = self.logdir / (re.sub(r"[^A-Za-z0-9_.-]+", "-", name) + ".log")
        # A Ctrl-C between fork and being recorded here would orphan the child
        # (stop_all cannot stop what it never saw): it is held until then.
        with _sigint_deferred(), open(log, "ab") as out:
            popen = subprocess.Popen(
                list(argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, env=dict(env) if env is not None else None,
            )
            child = Child(name, popen, log)
            self.items.append(child)
        return child

    def pids(self) -> list[int]:
        """Every process started, with the Envoys of `proxy run` children."""
        out = []
        for c in self.items:
            out.append(c.pid)
            envoy = c.envoy_pid()
            if envoy is not None:
                out.append(envoy)
        return out

    def stop_all(self, timeout: float = 5.0) -> None:
        """Stop every child still running, newest first: signal them all, then wait."""
        running = [c for c in reversed(self.items) if c.running()]
        for c in running:
            c.signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for c in running:
            if c.wait(max(0.1, deadline - time.monotonic())) is None:
                c.kill_group()
        for c in self.items:  # a proxy run killed above may have left its Envoy: its group goes too
            envoy = c.envoy_pid()
            if envoy is not None and alive(envoy):
                c.kill_group()
