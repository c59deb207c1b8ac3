"""The store's config as documents: what `meshgate export` prints and `apply` reads back.

    docs = export_docs(conn)          # list of dicts, dependency order
    text = to_yaml(docs, revision)    # a YAML stream with a header comment

Export then apply to an empty database gives the same config (tests check it).
Never exported: join tokens (secrets; new proxies get new ones), revocation,
edge certificates and their keys, CA material, self-registered instances and
proxy status: runtime state, see docs/config.md.
"""

from __future__ import annotations

import json
from typing import Any

import yaml
from sqlalchemy import Connection

from meshgate.config.kinds import HANDLERS

HEADER = (
    "# meshgate config ({where}). Apply with `meshgate apply -f FILE [--prune]`.\n"
    "# Not included (runtime state or secrets): join tokens, revocation, edge\n"
    "# certificates, CA material, self-registered instances. See docs/config.md.\n"
)


def export_docs(conn: Connection) -> list[dict[str, Any]]:
    """Every config object as a document, kinds in dependency order."""
    return [h.to_doc(obj) for h in HANDLERS for obj in h.current(conn).values()]


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    if "\n" in value:  # PEM bundles read best as literal blocks
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", value)


_Dumper.add_representer(str, _str)


def to_yaml(docs: list[dict[str, Any]], where: str = "") -> str:
    body = yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                         explicit_start=True, allow_unicode=True)
    return HEADER.format(where=where or "export") + body


def to_json(docs: list[dict[str, Any]]) -> str:
    return json.dumps(docs, indent=2)
