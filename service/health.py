"""The standard ``grpc.health.v1.Health`` service, with the ``List`` method grpc's own leaves out.

grpcio-health-checking's asyncio servicer answers ``Check`` and ``Watch``; its ``List`` is the
generated placeholder that raises ``NotImplementedError``, although reflection lists the method and
tools such as grpcurl call it. This adds ``List``: every service the server registered a status
for (``""`` is the server as a whole) and that status; ``set_all``: the server's services are
served or not together, following its readiness (when is decided by ``server``, docs/operations.md,
"Health endpoints"); and a ``Watch`` that ends once a graceful shutdown has told its watcher.
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

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext) -> None:
        """The status of ``request.service`` now and at every change, as grpc's ``Watch`` sends it,
        but ended (OK) once a graceful shutdown has begun and the watcher has its NOT_SERVING.

        grpc's own never ends: an idle watcher (gRPC client-side health checking keeps one open on
        every connection) would hold a shutdown's whole grace period, as an alert stream would, so
        that the calls in flight could no longer decide how long it lasts. Written over grpc's
        loop (its bookkeeping of ``_server_watchers`` kept as it is) to add the one ``return``.
        """
        service = request.service
        condition = self._server_watchers[service]
        self._watcher_count_by_service[service] += 1
        try:
            async with condition:
                sent = None
                while True:
                    status = self._server_status.get(service, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)
                    if status != sent:
                        await context.write(health_pb2.HealthCheckResponse(status=status))
                        sent = status
                    # A shutdown that began while the write above was in flight has not set the
                    # status yet (it waits for this lock): end only once the last status sent is
                    # one a shutdown leaves, so that the watcher always hears NOT_SERVING.
                    if self._gracefully_shutting_down and sent != health_pb2.HealthCheckResponse.SERVING:
                        return
                    await condition.wait()
        finally:
            self._watcher_count_by_service[service] -= 1
            if self._watcher_count_by_service[service] == 0:
                del self._server_watchers[service]
                del self._watcher_count_by_service[service]

    async def enter_graceful_shutdown(self) -> None:
        """Every status NOT_SERVING for good (grpc's), then wake every watcher, so that each
        ends: also those whose status does not change (already NOT_SERVING, or unknown)."""
        await super().enter_graceful_shutdown()
        for condition in list(self._server_watchers.values()):
            async with condition:
                condition.notify_all()

    async def List(
        self, request: health_pb2.HealthListRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthListResponse:
        # ``_server_status`` is the parent's one map of statuses, kept current by ``set`` and by
        # graceful shutdown; a copy of it here could only drift.
        statuses = dict(self._server_status)
        return health_pb2.HealthListResponse(
            statuses={name: health_pb2.HealthCheckResponse(status=s) for name, s in statuses.items()}
        )
