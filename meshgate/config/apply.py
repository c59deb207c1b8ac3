"""Applying documents: desired state, the changes to reach it, and running them.

    docs = load_path("mesh.yaml")
    outcome = apply(engine, docs, prune=True, actor="alice", summary="apply mesh.yaml")
    with dry_run(engine) as w:            # the same writes, rolled back (plan, --dry-run)
        changes, fx = run(w, docs, prune=False)

All of a file is one transaction and one revision (`txn.write`). Every change
goes through the repository functions, each in a savepoint, so a failing change
does not hide the next: every problem is collected, reported with its
document's place, and the whole transaction is rolled back.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import IntegrityError

from meshgate.config.errors import ConfigError, Problem
from meshgate.config.kinds import HANDLERS, Effects, Handler
from meshgate.config.schema import describe_doc
from meshgate.config.source import Document
from meshgate.errors import MeshgateError, ValidationError
from meshgate.store.ports import PortConflict
from meshgate.store.txn import Write, default_actor, write


@dataclass(frozen=True)
class Change:
    """One object to add, update or remove; `before`/`after` are document fields."""

    kind: str
    key: str
    op: str  # add | update | remove
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    where: str  # the document's place, or "(prune)"
    doc: Document | None = field(default=None, compare=False, repr=False)

    @property
    def order(self) -> int:
        """Position in the file (pruned objects last), for reporting in file order."""
        return self.doc.index if self.doc is not None else 1 << 30

    def changed_fields(self) -> list[str]:
        b, a = self.before or {}, self.after or {}
        return [k for k in dict.fromkeys([*b, *a]) if b.get(k) != a.get(k)]

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "key": self.key, "op": self.op, "before": self.before,
                "after": self.after, "fields": self.changed_fields() if self.op == "update" else []}


@dataclass
class Outcome:
    changes: list[Change]
    revision: int | None = None
    effects: Effects = field(default_factory=Effects)


@dataclass
class Desired:
    objects: dict[Handler, dict[str, tuple[Any, Document]]]


_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def field_path(name: str) -> tuple[str | int, ...]:
    """`paths[1].kind` -> ("paths", 1, "kind")."""
    return tuple(m.group(1) if m.group(1) is not None else int(m.group(2)) for m in _PART.finditer(name))


# CLI advice in repository messages that does not apply to a file
_CLI_ONLY = " (pass --allow-unknown to refer to it before it exists)"


def _doc_problems(doc: Document, exc: MeshgateError, label: str | None = None) -> list[Problem]:
    label = label or describe_doc(doc)
    if isinstance(exc, ValidationError) and exc.violations:
        return [Problem(f"{doc.where(field_path(v.field))} ({label})",
                        f"{v.field}: {v.message.replace(_CLI_ONLY, '')}")
                for v in exc.violations]
    if isinstance(exc, PortConflict):  # a store rule about one field: reported at that field
        return [Problem(f"{doc.where(field_path(exc.field))} ({label})", f"{exc.field}: {exc.reason}")]
    return [Problem(f"{doc.where()} ({label})", str(exc).replace(_CLI_ONLY, ""))]


def desired_state(docs: list[Document], conn: Connection) -> Desired:
    """Every document as a validated model object, keyed per kind; ConfigError
    listing every bad value and every object given twice."""
    by_kind = {h.spec.kind: h for h in HANDLERS}
    objects: dict[Handler, dict[str, tuple[Any, Document]]] = {h: {} for h in HANDLERS}
    problems: list[Problem] = []
    for doc in docs:
        handler = by_kind[doc.value["kind"]]
        try:
            obj = handler.desired(doc.value, conn)
        except MeshgateError as exc:
            problems += _doc_problems(doc, exc)
            continue
        key = handler.key(obj)
        seen = objects[handler].get(key)
        if seen is not None:
            problems.append(Problem(f"{doc.where()} ({describe_doc(doc)})",
                                    f"{handler.spec.kind} {key!r} is also given at {seen[1].where()}"
                                    + (" (give each one its own id)" if "id" in doc.value or
                                       handler.spec.field("id") else "")))
            continue
        objects[handler][key] = (obj, doc)
    if problems:
        raise ConfigError(problems)
    return Desired(objects)


def plan_changes(desired: Desired, conn: Connection, *, prune: bool) -> list[Change]:
    """The changes from the store's current state to `desired`, in no particular order."""
    out: list[Change] = []
    for h in HANDLERS:
        current = h.current(conn)
        wanted = desired.objects[h]
        kind = h.spec.kind
        for key, (obj, doc) in wanted.items():
            new = h.fields(obj)
            where = f"{doc.where()} ({describe_doc(doc)})"
            if key not in current:
                out.append(Change(kind, key, "add", None, new, where, doc))
            else:
                old = h.fields(current[key])
                if old != new:
                    out.append(Change(kind, key, "update", old, new, where, doc))
        if prune and h.prunable:
            for key, obj in current.items():
                if key not in wanted:
                    out.append(Change(kind, key, "remove", h.fields(obj), None, f"(prune) {kind} {key!r}"))
    return out


def _step(w: Write, change: Change, fn: Any, *args: Any) -> list[Problem]:
    """Run one repository call in a savepoint; its failure as problems at the change's place
    (each field of a ValidationError at the field's line)."""
    try:
        with w.conn.begin_nested():
            fn(w, *args)
    except MeshgateError as exc:
        if change.doc is not None:
            return _doc_problems(change.doc, exc, f'{change.kind} "{change.key}"')
        return [Problem(change.where, str(exc))]
    except IntegrityError as exc:
        return [Problem(change.where, f"the database refused it ({exc.orig})")]
    return []


def execute(w: Write, desired: Desired, changes: list[Change]) -> Effects:
    """Run `changes` through the repositories: removals (and replacements) in reverse
    dependency order, then updates and adds in dependency order. ConfigError when
    any fails (exit 1: the file is well formed but the store refused it)."""
    fx = Effects()
    problems: list[tuple[int, Problem]] = []
    by_kind = {h.spec.kind: h for h in HANDLERS}
    index = {h: i for i, h in enumerate(HANDLERS)}

    def obj_of(c: Change) -> Any:
        h = by_kind[c.kind]
        return desired.objects[h][c.key][0]

    current_cache: dict[Handler, dict[str, Any]] = {}

    def current_of(c: Change) -> Any:
        h = by_kind[c.kind]
        if h not in current_cache:
            current_cache[h] = h.current(w.conn)
        return current_cache[h][c.key]

    removing = [c for c in changes if c.op == "remove" or (c.op == "update" and by_kind[c.kind].replaces)]
    for c in sorted(removing, key=lambda c: -index[by_kind[c.kind]]):
        current_of(c)  # read before anything is removed
    for c in sorted(removing, key=lambda c: -index[by_kind[c.kind]]):
        h = by_kind[c.kind]
        problems += [(c.order, p) for p in _step(w, c, h.remove, current_of(c), fx)]
    for c in sorted((c for c in changes if c.op != "remove"), key=lambda c: index[by_kind[c.kind]]):
        h = by_kind[c.kind]
        if c.op == "add" or h.replaces:
            found = _step(w, c, h.add, obj_of(c), fx)
        else:
            found = _step(w, c, h.update, current_of(c), obj_of(c), fx)
        problems += [(c.order, p) for p in found]
    if problems:
        problems.sort(key=lambda item: item[0])  # stable: file order, then execution order
        raise ConfigError([p for _, p in problems], exit_code=1)
    return fx


def run(w: Write, docs: list[Document], *, prune: bool) -> Outcome:
    """Desired state, changes, and their execution on `w` (the caller commits or not)."""
    desired = desired_state(docs, w.conn)
    changes = plan_changes(desired, w.conn, prune=prune)
    fx = execute(w, desired, changes) if changes else Effects()
    return Outcome(changes=changes, effects=fx)


def counts(changes: list[Change]) -> str:
    n = {op: sum(1 for c in changes if c.op == op) for op in ("add", "update", "remove")}
    return f"{n['add']} added, {n['update']} changed, {n['remove']} removed"


def summary_of(source: str, changes: list[Change], prune: bool) -> str:
    return f"apply {source}{' --prune' if prune else ''}: {counts(changes)}"


def apply(engine: Engine, docs: list[Document], *, prune: bool = False, actor: str | None = None,
          source: str = "config", expect: Any = None) -> Outcome:
    """Apply `docs` in one transaction and one revision (none when nothing changes).

    `expect(conn)`, when given, runs after the writes and before commit; raising
    from it rolls everything back (apply --validate checks that the store still
    gives the World Envoy validated).
    """
    with write(engine, f"apply {source}", actor) as w:
        outcome = run(w, docs, prune=prune)
        w.summary = summary_of(source, outcome.changes, prune)
        if expect is not None and outcome.changes:
            expect(w.conn)
    outcome.revision = w.revision
    return outcome


@contextmanager
def dry_run(engine: Engine, actor: str | None = None) -> Iterator[Write]:
    """A `Write` whose transaction is always rolled back: the real writes, never kept."""
    with engine.connect() as conn:
        trans = conn.begin()
        try:
            yield Write(conn=conn, summary="dry run", actor=actor or default_actor())
        finally:
            trans.rollback()
