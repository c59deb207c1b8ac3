"""The base of a kind's handler (see kinds.py) and what writes produce besides rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from sqlalchemy import Connection

from meshgate.config import schema as S
from meshgate.store.txn import Write

MESH_KEY = "mesh"


@dataclass
class Effects:
    """What the writes produced besides rows: join tokens to show once, notes."""

    tokens: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class Handler:
    spec: ClassVar[S.KindSpec]
    prunable: ClassVar[bool] = True
    # True when the repository has no update: a change is a remove (in the removal
    # pass, before anything is added) and an add.
    replaces: ClassVar[bool] = False

    def key(self, obj: Any) -> str:
        """What identifies `obj` among its kind: its name, unless the kind says otherwise."""
        return str(obj.name)

    def current(self, conn: Connection) -> dict[str, Any]:
        """key -> model object, for every object of this kind that is config."""
        raise NotImplementedError

    def desired(self, doc: dict[str, Any], conn: Connection) -> Any:
        """The model object a document asks for; ValidationError naming each bad field."""
        raise NotImplementedError

    def fields(self, obj: Any) -> dict[str, Any]:
        """The document fields of `obj` (export; two objects are equal when these are)."""
        raise NotImplementedError

    def to_doc(self, obj: Any) -> dict[str, Any]:
        return {"kind": self.spec.kind, **self.fields(obj)}

    def add(self, w: Write, obj: Any, fx: Effects) -> None:
        raise NotImplementedError

    def update(self, w: Write, old: Any, new: Any, fx: Effects) -> None:
        raise NotImplementedError

    def remove(self, w: Write, obj: Any, fx: Effects) -> None:
        raise NotImplementedError


def drop_empty(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v not in (None, [], {}, "")}
