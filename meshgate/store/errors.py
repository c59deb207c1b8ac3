"""Errors of the store package.

    MeshgateError
    └── StoreError            the database cannot be opened, is locked, or is not meshgate's
        └── LockedError       another writer held the database past the busy timeout
"""

from __future__ import annotations

from meshgate.errors import MeshgateError


class StoreError(MeshgateError):
    pass


class LockedError(StoreError):
    pass
