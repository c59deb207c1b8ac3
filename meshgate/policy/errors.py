"""Errors of the policy package.

    MeshgateError
    └── PolicyError           a policy cannot be compiled or evaluated
        └── UnsupportedRule   (evaluate.py) compiled RBAC holds a matcher `check` does not model
"""

from __future__ import annotations

from meshgate.errors import MeshgateError


class PolicyError(MeshgateError):
    pass
