"""A config file in, checked documents out: YAML syntax, then the shape of each document.

    docs = load_path("mesh.yaml")     # or "-" for stdin; ConfigError lists every problem

A file is a YAML stream of documents (`---` between them), each a mapping with
a `kind`. A document that is a list of such mappings (for example the output of
`meshgate export --output json`) counts as one document per item.
"""

from __future__ import annotations

import sys
from pathlib import Path

from meshgate.config.errors import ConfigError, Problem
from meshgate.config.schema import shape_problems
from meshgate.config.source import Document, read_documents


def _expand(doc: Document) -> list[Document]:
    if not isinstance(doc.value, list):
        return [doc]
    out = []
    for i, item in enumerate(doc.value):
        sub = Document(source=doc.source, index=doc.index * 1000 + i, value=item)
        for marks, into in ((doc.marks, sub.marks), (doc.key_marks, sub.key_marks)):
            for path, mark in marks.items():
                if path[:1] == (i,):
                    into[path[1:]] = mark
        out.append(sub)
    return out


def load_text(text: str, source: str = "<input>") -> list[Document]:
    docs = [d for raw in read_documents(text, source) for d in _expand(raw)]
    problems = [p for d in docs for p in shape_problems(d)]
    if problems:
        raise ConfigError(problems)
    return docs


def read_source(path: str) -> tuple[str, str]:
    """(text, name) of a file, or of stdin for "-"; ConfigError when unreadable."""
    if path == "-":
        return sys.stdin.read(), "<stdin>"
    p = Path(path)
    try:
        return p.read_text(encoding="utf-8"), path
    except FileNotFoundError:
        raise ConfigError([Problem(path, "no such file")]) from None
    except IsADirectoryError:
        raise ConfigError([Problem(path, "is a directory, not a YAML file")]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([Problem(path, f"not UTF-8 text ({exc.reason} at byte {exc.start})")]) from None
    except OSError as exc:
        raise ConfigError([Problem(path, f"cannot read ({exc.strerror})")]) from None


def load_path(path: str) -> list[Document]:
    text, name = read_source(path)
    return load_text(text, name)
