"""The standard ``grpc.health.v1.Health`` service, with the ``List`` method grpc's own leaves out.

grpcio-health-checking's asyncio servicer answers ``Check`` and ``Watch``; its ``List`` is the
generated placeholder that raises ``NotImplementedError``, although reflection lists the method and
tools such as grpcurl call it. This adds ``List``: every service the server registered a status
for (``""`` is the server as a whole) and that status; and ``set_all``: the server's services are
served or not together, following its readiness. When is decided by ``server`` (docs/operations.md,
"Health endpoints").
"""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2

__all__ = ["HealthServicer"]


class HealthServicer(health.aio.HealthServicer):  # type: ignore[misc]  # grpc_health is untyped
    """Check, Watch and List of the services' serving statuses."""

    async def set_all(self, status: health_pb2.HealthCheckResponse.ServingStatus) -> None:
        """Give every service with a status (``""``, the server as a whole, included) ``status``.
        Ignored once graceful shutdown has begun, as ``set`` is: from then on all are NOT_SERVING."""
        for name in list(self._server_status):
            await self.set(name, status)

    async def List(
        self, request: health_pb2.HealthListRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthListResponse:
        # ``_server_status`` is the parent's one map of statuses, kept current by ``set`` and by
        # graceful shutdown; a copy of it here could only drift.
        statuses = dict(self._server_status)
        return health_pb2.HealthListResponse(
            statuses={name: health_pb2.HealthCheckResponse(status=s) for name, s in statuses.items()}
        )
