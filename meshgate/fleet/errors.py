"""Errors of the fleet package (bootstraps, running Envoy, the demo).

    MeshgateError
    └── FleetError            Envoy missing, failed to start, or a bootstrap cannot be made
"""

from __future__ import annotations

from meshgate.errors import MeshgateError


class FleetError(MeshgateError):
    pass
