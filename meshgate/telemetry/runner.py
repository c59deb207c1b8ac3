"""The telemetry receivers and admin HTTP on their own loop, in a background thread.

`meshgate serve` mounts the same parts on its own loop next to ADS; this
runner is for running them without the xDS server: tests, benchmarks, and
debugging a fleet's telemetry alone.

    with TelemetryServer(engine=engine) as ts:     # gRPC on ts.grpc_port, HTTP on ts.admin_port
        ...
        edges = ts.call(ts.hub.edges)              # read hub state on its own loop
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from sqlalchemy import Engine

from meshgate.telemetry.admin import make_app, start_admin
from meshgate.telemetry.denials import DenialWriter, Retention
from meshgate.telemetry.hub import TelemetryHub
from meshgate.telemetry.metrics import ControlPlaneMetrics
from meshgate.telemetry.receivers import register

T = TypeVar("T")


class TelemetryServer:
    def __init__(self, *, engine: Engine | None = None, host: str = "127.0.0.1",
                 grpc_port: int = 0, admin_port: int | None = 0,
                 retention: Retention = Retention(), writer_interval: float = 0.5,
                 **hub_options: Any) -> None:
        self.engine = engine
        self.host = host
        self.grpc_port = grpc_port
        self.admin_port = admin_port
        self.writer = DenialWriter(engine, retention, interval=writer_interval) \
            if engine is not None else None
        self.hub = TelemetryHub(denial_writer=self.writer, **hub_options)
        self.metrics = ControlPlaneMetrics(self.hub)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="telemetry",
                                        daemon=True)
        self._server: grpc.aio.Server | None = None
        self._runner: Any = None
        self._writer_task: asyncio.Task[None] | None = None

    async def _start(self) -> None:
        self._server = grpc.aio.server()
        register(self._server, self.hub)
        self.grpc_port = self._server.add_insecure_port(f"{self.host}:{self.grpc_port}")
        await self._server.start()
        if self.admin_port is not None:
            self._runner = await start_admin(make_app(self.hub, self.engine, self.metrics),
                                             self.host, self.admin_port)
            self.admin_port = int(self._runner.addresses[0][1])
        if self.writer is not None:
            self._writer_task = asyncio.get_running_loop().create_task(self.writer.run())

    async def _stop(self) -> None:
        if self._writer_task is not None:
            self._writer_task.cancel()
            try:
                await self._writer_task
            except asyncio.CancelledError:
                pass
        if self._runner is not None:
            await self._runner.cleanup()
        if self._server is not None:
            await self._server.stop(0.5)

    def start(self) -> TelemetryServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        try:
            asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()

    def call(self, fn: Callable[..., T], *args: Any, timeout: float = 10, **kwargs: Any) -> T:
        """Run `fn` on the server's loop (the hub is not thread-safe) and return its result."""
        async def _run() -> T:
            return fn(*args, **kwargs)
        return asyncio.run_coroutine_threadsafe(_run(), self.loop).result(timeout)

    def flush_denials(self, timeout: float = 10) -> int:
        if self.writer is None:
            return 0
        return asyncio.run_coroutine_threadsafe(self.writer.flush(), self.loop).result(timeout)

    @property
    def admin_url(self) -> str:
        return f"http://{self.host}:{self.admin_port}"

    def __enter__(self) -> TelemetryServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
