"""Shared fixtures: a fresh SQLite store per test and a CLI runner bound to it."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from meshgate.cli import cli

Invoke = Callable[..., Result]


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test reads the developer's MESHGATE_* settings or writes to the cwd."""
    for k in list(os.environ):
        if k.startswith("MESHGATE_") and k not in ("MESHGATE_ENVOY", "MESHGATE_TEST_PG"):
            monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("MESHGATE_ACTOR", "test@meshgate")
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "meshgate.db"


@pytest.fixture
def run(db_path: Path) -> Invoke:
    """Run `meshgate --db <tmp db> ARGS...`; returns click's Result."""
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None) -> Result:
        return runner.invoke(cli, ["--db", str(db_path), *args], input=input, catch_exceptions=False)

    return invoke
