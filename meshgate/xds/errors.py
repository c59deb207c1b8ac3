"""Errors of the xds package.

    MeshgateError
    └── XdsError              the control plane cannot serve (bad listen address, TLS setup)
        ├── TranslateError    a generator failed for one proxy (names both)
        └── StreamRefused     a stream hook refuses a proxy's stream (gRPC status + message)
"""

from __future__ import annotations

from meshgate.errors import MeshgateError


class XdsError(MeshgateError):
    pass


class TranslateError(XdsError):
    def __init__(self, proxy: str, generator: str, cause: BaseException) -> None:
        self.proxy = proxy
        self.generator = generator
        super().__init__(f'proxy "{proxy}": {generator} failed: {type(cause).__name__}: {cause}')


class StreamRefused(XdsError):
    """Raised by a stream hook's `connected`: the server ends the stream with this gRPC
    status (a `grpc.StatusCode` name) and message; Envoy logs it and retries."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)
