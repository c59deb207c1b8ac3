"""What every command shares: the store (opened lazily) and the actor."""

from __future__ import annotations

from dataclasses import dataclass, field

import click
from sqlalchemy import Engine

from meshgate.store.db import open_store


@dataclass
class CliContext:
    db: str | None = None
    actor: str | None = None
    _engine: Engine | None = field(default=None, repr=False)

    @property
    def engine(self) -> Engine:
        """The store, opened (and upgraded) on first use; it must exist."""
        if self._engine is None:
            self._engine = open_store(self.db)
        return self._engine

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


pass_ctx = click.make_pass_decorator(CliContext)
