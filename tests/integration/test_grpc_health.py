"""The standard gRPC health service of a real embedded server on 127.0.0.1 agrees with /readyz:
every service SERVING once the server is ready, NOT_SERVING from the moment a graceful stop begins,
when every Watch stream ends (docs/operations.md, "Health endpoints"). The cluster side
(NOT_SERVING until a node serves its share) is ``tests/cluster/test_grpc_health.py``."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.server import UnimeterServer
from tests.conftest import serve_config
from tests.integration.ops_helpers import http_get
from tests.integration.test_grpc_edges import UNIMETER_SERVICES

pytestmark = pytest.mark.timeout(60)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


async def test_every_service_is_serving_once_started_and_not_serving_from_the_start_of_a_stop(
    tmp_path: Path,
) -> None:
    server = UnimeterServer(serve_config(tmp_path / "data", http_addr="127.0.0.1:0"))
    await server.start()
    stopping: asyncio.Task[None] | None = None
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            assert await http_get(server.http_port, "/readyz") == (200, "ready\n")
            for name in ("", *UNIMETER_SERVICES):
                answer = await stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
                assert answer.status == SERVING, name
            # A balancer watching the server hears of the stop as soon as it begins (the listener
            # closes next, so a Check can no longer be asked), while /readyz already answers 503.
            # Then the watch ends: an idle watcher does not hold the grace period open.
            watches = [
                stub.Watch(health_pb2.HealthCheckRequest(service=name), timeout=30)
                for name in ("", UNIMETER_SERVICES[0], "unimeter.v1.NoSuchService")
            ]
            assert [(await w.read()).status for w in watches] == [SERVING, SERVING, SERVICE_UNKNOWN]
            stopping = asyncio.create_task(server.stop(grace=30))
            assert [(await w.read()).status for w in watches[:2]] == [NOT_SERVING, NOT_SERVING]
            assert not server.ready
            assert (await http_get(server.http_port, "/readyz"))[0] == 503
            for watch in watches:
                assert await watch.read() is grpc.aio.EOF
                assert await watch.code() == grpc.StatusCode.OK
            await stopping
    finally:
        await (stopping if stopping is not None else server.stop(grace=1.0))
