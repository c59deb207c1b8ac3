"""Serialized resources: bytes, a version that is the hash of those bytes, and provenance.

A `Resource` is immutable and interned by content (see cache.py): two proxies
that get the same cluster hold the same `Resource` object, so its bytes and
its packed `Any` are made once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from google.protobuf import any_pb2

from meshgate.xds.translate.generated import Generated

VERSION_BYTES = 8  # 16 hex characters: plenty to tell apart versions of one resource


def content_version(body: bytes) -> str:
    return hashlib.blake2b(body, digest_size=VERSION_BYTES).hexdigest()


def combined_version(pairs: Iterable[tuple[str, str]]) -> str:
    """A type's version (SotW): the hash of its (name, version) pairs, in name order."""
    h = hashlib.blake2b(digest_size=VERSION_BYTES)
    for name, version in sorted(pairs):
        h.update(name.encode())
        h.update(b"\0")
        h.update(version.encode())
        h.update(b"\n")
    return h.hexdigest()


@dataclass(frozen=True, slots=True, eq=False, weakref_slot=True)
class Resource:
    type_url: str
    name: str
    body: bytes
    version: str
    sources: tuple[str, ...]
    refs: tuple[tuple[str, str], ...]
    any: any_pb2.Any

    @staticmethod
    def from_generated(g: Generated) -> Resource:
        body = g.message.SerializeToString(deterministic=True)
        return Resource.from_bytes(g.type_url, g.name, body, g.sources, g.refs)

    @staticmethod
    def from_bytes(
        type_url: str,
        name: str,
        body: bytes,
        sources: tuple[str, ...] = (),
        refs: tuple[tuple[str, str], ...] = (),
    ) -> Resource:
        return Resource(
            type_url=type_url,
            name=name,
            body=body,
            version=content_version(body),
            sources=sources,
            refs=refs,
            any=any_pb2.Any(type_url=type_url, value=body),
        )
