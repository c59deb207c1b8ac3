"""Reading YAML documents while remembering where each value was written.

    docs = read_documents(text, "mesh.yaml")    # ConfigError with line:column on bad YAML
    docs[0].value                              # plain Python values (safe_load semantics)
    docs[0].where(("paths", 1, "glob"))        # "mesh.yaml:14:9"

Values are built by PyYAML's SafeLoader (no Python object tags), one document
at a time; every mapping key and value keeps its mark, so a validation error
on `paths[1]` can name the line it came from. Duplicate keys in one mapping
are an error (PyYAML would silently keep the last one).

Hostile files are bounded: at most MAX_BYTES of text, nesting at most
MAX_DEPTH levels, and aliases (`*name`, which repeat an anchor's content) may
not make the documents hold more values than the text has characters (plus
ALIAS_SLACK): a "billion laughs" file is refused after that many values
instead of being expanded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from meshgate.config.errors import ConfigError, Problem

Path = tuple[str | int, ...]
MAX_BYTES = 8 * 1024 * 1024
MAX_DEPTH = 64
ALIAS_SLACK = 10_000


class _Refused(Exception):
    """The stream is too deep or expands too far; reading stops at `where`."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(message)
        self.problem = Problem(where, message)


@dataclass(frozen=True)
class Mark:
    line: int  # 1-based
    column: int  # 1-based

    @staticmethod
    def of(node: yaml.Node) -> Mark:
        return Mark(node.start_mark.line + 1, node.start_mark.column + 1)


@dataclass
class Document:
    """One YAML document: its value and the mark of every path in it."""

    source: str  # file name as the user gave it ("-" for stdin)
    index: int  # 0-based position in the stream
    value: Any
    marks: dict[Path, Mark] = field(default_factory=dict)
    key_marks: dict[Path, Mark] = field(default_factory=dict)

    def mark(self, path: Path) -> Mark:
        """The mark of `path`, else of its nearest written parent."""
        p = tuple(path)
        while p:
            if p in self.marks:
                return self.marks[p]
            p = p[:-1]
        return self.marks.get((), Mark(1, 1))

    def where(self, path: Path = (), *, key: bool = False) -> str:
        m = (self.key_marks.get(tuple(path)) if key else None) or self.mark(path)
        return f"{self.source}:{m.line}:{m.column}"


def _walk(
    node: yaml.Node, path: Path, doc: Document, loader: yaml.SafeLoader, problems: list[Problem],
    budget: list[int],
) -> Any:
    doc.marks[path] = Mark.of(node)
    budget[0] -= 1
    if budget[0] < 0:
        raise _Refused(doc.where(path), "the file expands to more values than it has characters: "
                       "YAML aliases (*name) repeat their anchor too often (refused, not expanded)")
    if len(path) > MAX_DEPTH:
        raise _Refused(doc.where(path), f"nested more than {MAX_DEPTH} levels deep")
    if isinstance(node, yaml.MappingNode):
        explicit = sum(1 for k, _ in node.value if k.tag != "tag:yaml.org,2002:merge")
        loader.flatten_mapping(node)  # resolve `<<` merge keys like safe_load does
        # merged pairs come first, in the order safe_load assigns them (the last one
        # wins); explicit keys override them, but one explicit key twice is an error
        merged = len(node.value) - explicit
        out: dict[Any, Any] = {}
        own: set[Any] = set()
        for n, (key_node, value_node) in enumerate(node.value):
            key = _scalar(key_node, doc, path, loader)
            if isinstance(key, (list, dict)):
                m = Mark.of(key_node)
                problems.append(Problem(f"{doc.source}:{m.line}:{m.column}", "a mapping key must be a scalar"))
                continue
            if n >= merged:
                if key in own:
                    m = Mark.of(key_node)
                    problems.append(Problem(f"{doc.source}:{m.line}:{m.column}",
                                            f"key {key!r} is given twice in one mapping"))
                    continue
                own.add(key)
            child = (*path, key)
            doc.key_marks[child] = Mark.of(key_node)
            out[key] = _walk(value_node, child, doc, loader, problems, budget)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_walk(item, (*path, i), doc, loader, problems, budget) for i, item in enumerate(node.value)]
    return _scalar(node, doc, path, loader)


def _scalar(node: yaml.Node, doc: Document, path: Path, loader: yaml.SafeLoader) -> Any:
    try:
        return loader.construct_object(node, deep=True)
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise _Refused(doc.where(path), f"cannot read this value: {exc}") from None


def read_documents(text: str, source: str = "<input>") -> list[Document]:
    """Every non-empty document of a YAML stream; ConfigError listing YAML errors with
    line and column (a syntax error stops reading: nothing after it can be trusted)."""
    if len(text.encode("utf-8", "replace")) > MAX_BYTES:
        raise ConfigError([Problem(source, f"larger than {MAX_BYTES // (1024 * 1024)} MiB")])
    docs: list[Document] = []
    problems: list[Problem] = []
    loader = yaml.SafeLoader("")
    budget = [len(text) + ALIAS_SLACK]
    try:
        for index, node in enumerate(yaml.compose_all(text, Loader=yaml.SafeLoader)):
            if node is None:
                continue
            doc = Document(source=source, index=index, value=None)
            doc.value = _walk(node, (), doc, loader, problems, budget)
            if doc.value is None:
                continue
            docs.append(doc)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        what = " ".join(str(x) for x in (exc.context, exc.problem) if x)
        problems.append(Problem(where, f"YAML syntax: {what}"))
    except yaml.YAMLError as exc:  # e.g. a reader error on control characters
        problems.append(Problem(source, f"YAML: {exc}"))
    except _Refused as exc:
        problems.append(exc.problem)
    except RecursionError:  # PyYAML's composer recurses once per level, before _walk's check
        problems.append(Problem(source, f"nested more than {MAX_DEPTH} levels deep"))
    if problems:
        raise ConfigError(problems)
    return docs
