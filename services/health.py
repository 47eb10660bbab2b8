"""gRPC health checks of a node: SERVING / NOT_SERVING per service, and "" for the whole node.

grpc_health's own asyncio servicer keeps every `Watch` stream open until the client ends it, so
a client watching the node's health (grpc's client-side health checking does) held a shutdown
for the whole grace period. Here a Watch stream ends once the node is shutting down, right after
it has told the client NOT_SERVING. It also writes outside any lock: a watcher that does not
read cannot hold up `set`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.bounds import quote
from services.errors import NotFound

Context = aio.ServicerContext[Any, Any]

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class NodeHealth(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    """The health service; `enter_graceful_shutdown` turns every service NOT_SERVING for good."""

    def __init__(self) -> None:
        # NOT_SERVING until the node has started everything it serves (the WebSocket listener,
        # the delivery core, the ingestion sources): the gRPC server answers health checks
        # before those are up, and a balancer must not route to it yet.
        self._status: dict[str, int] = {"": NOT_SERVING}
        # Replaced (and the old one set) on every change: a watcher waits on the one it saw.
        self._changed = asyncio.Event()
        self.shutting_down = False

    def status(self, service: str) -> int | None:
        return self._status.get(service)

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: Context
    ) -> health_pb2.HealthCheckResponse:
        status = self._status.get(request.service)
        if status is None:
            raise NotFound(f"no service {quote(request.service)} on this server")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Context) -> None:
        last: int | None = None
        while True:
            changed = self._changed
            status = self._status.get(request.service, _UNKNOWN)
            if status != last:
                await context.write(health_pb2.HealthCheckResponse(status=status))
                last = status
            if self.shutting_down:
                return  # NOT_SERVING was written: the stream must not hold up the shutdown
            await changed.wait()

    async def set(self, service: str, status: int) -> None:
        """Sets a service's status; ignored once the node is shutting down."""
        if self.shutting_down:
            return
        self._status[service] = status
        self._notify()

    async def enter_graceful_shutdown(self) -> None:
        """Every service NOT_SERVING, for good; every Watch stream says so, then ends."""
        if self.shutting_down:
            return
        self.shutting_down = True
        for service in self._status:
            self._status[service] = NOT_SERVING
        self._notify()

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
