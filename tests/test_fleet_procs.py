"""Children: a Ctrl-C while a child is being started never orphans it."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from meshgate.fleet import procs
from meshgate.fleet.procs import Children, alive


def test_interrupt_during_spawn_is_held_until_the_child_is_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    children = Children(tmp_path)
    real_popen = subprocess.Popen

    def popen_then_ctrl_c(*args, **kwargs):  # type: ignore[no-untyped-def]
        p = real_popen(*args, **kwargs)
        signal.raise_signal(signal.SIGINT)  # lands after the fork, before Popen returns
        return p

    monkeypatch.setattr(procs.subprocess, "Popen", popen_then_ctrl_c)
    try:
        with pytest.raises(KeyboardInterrupt):
            children.start("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"])
        # the interrupt still arrives, but only once the child is known
        assert [c.name for c in children.items] == ["sleeper"]
        pid = children.items[0].pid
        assert alive(pid)
    finally:
        children.stop_all()
    assert not alive(pid)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
