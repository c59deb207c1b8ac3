"""Errors of the CA package.

    MeshgateError
    └── CaError                  the CA cannot do what was asked
        ├── CaKeyError           the CA key cannot be used: the encryption key is missing or wrong
        ├── CaNotInitialized     the store holds no signing CA
        ├── RotationConflict     a rotation is already running (or none is, for --status/advance)
        └── InvalidCaMaterial    imported certificate/key/chain breaks a rule (also a ValidationError,
                                 so it lists every violation with its field and exits 2)
"""

from __future__ import annotations

from collections.abc import Iterable

from meshgate.errors import MeshgateError, ValidationError, Violation


class CaError(MeshgateError):
    pass


class CaKeyError(CaError):
    """Raised with a message starting "cannot sign: ..." (or "cannot encrypt: ...")."""


class CaNotInitialized(CaError):
    pass


class RotationConflict(CaError):
    pass


class InvalidCaMaterial(ValidationError, CaError):
    exit_code = 2

    def __init__(self, violations: Iterable[Violation], subject: str = "CA import") -> None:
        ValidationError.__init__(self, violations, subject)
