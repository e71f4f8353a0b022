"""Shared fixtures: a real Unimeter server on 127.0.0.1 port 0 with its own data directory.

The ``api`` fixture serves with the engine ``api_engine`` names (default ``auto``); a module runs
its tests on every engine this machine has (``tests.engines.ENGINES``) with
``pytestmark = pytest.mark.parametrize("api_engine", ENGINES)``.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from service.config import ServeConfig
from service.server import UnimeterServer
from tests.engines import ENGINES
from unimeter.v1 import (
    alert_service_pb2_grpc,
    cluster_service_pb2_grpc,
    ingest_service_pb2_grpc,
    metrics_service_pb2_grpc,
    query_service_pb2_grpc,
)

# A shell without job control starts a background command (`.ci/run &`, a CI runner's step) with
# SIGINT ignored, and an ignored signal stays ignored across exec: the processes the tests start
# and stop with Ctrl-C's signal (`unimeter alerts tail`, the README tour's tail) would never see
# it. A handler of our own is reset to the default at exec, so they get Ctrl-C as from a terminal.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# Tests of the extension itself exist only where it is built.
collect_ignore = (
    []
    if "native" in ENGINES
    else [
        "unit/test_native_decoder.py",
        "unit/test_native_dedup_key.py",
        "unit/test_native_dedup_index.py",
        "unit/test_native_dedup_batch.py",
        "unit/test_tick_writes.py",
        "unit/test_native_segment_scan.py",
        "unit/test_log_tail.py",
        "unit/test_native_ingest_answer.py",
        "unit/test_decode_off_loop.py",
        "integration/test_native_partition.py",
        "integration/test_native_engine_end_to_end.py",
    ]
)


@dataclass
class Api:
    """Stubs of every service on one channel to a running server."""

    server: UnimeterServer
    channel: grpc.aio.Channel
    metrics: metrics_service_pb2_grpc.MetricsServiceStub
    ingest: ingest_service_pb2_grpc.IngestServiceStub
    query: query_service_pb2_grpc.QueryServiceStub
    alerts: alert_service_pb2_grpc.AlertServiceStub
    cluster: cluster_service_pb2_grpc.ClusterServiceStub


def serve_config(data_dir: Path, **overrides: object) -> ServeConfig:
    """A config for tests: loopback, port 0, small partition count unless overridden."""
    values: dict[str, object] = {
        "data_dir": data_dir,
        "grpc_addr": "127.0.0.1:0",
        "partitions": 8,
        "flush_interval_ms": 5.0,
    }
    values.update(overrides)
    return ServeConfig(**values)  # type: ignore[arg-type]


async def open_api(server: UnimeterServer) -> Api:
    """Stubs on a fresh channel to ``server``."""
    return api_on_port(server.grpc_port, server)


def api_on_port(port: int, server: UnimeterServer | None = None) -> Api:
    """Stubs on a fresh channel to 127.0.0.1:``port`` (``server``: the in-process server there, if
    any; None for a server in another process)."""
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    return Api(
        server,  # type: ignore[arg-type]
        channel,
        metrics_service_pb2_grpc.MetricsServiceStub(channel),
        ingest_service_pb2_grpc.IngestServiceStub(channel),
        query_service_pb2_grpc.QueryServiceStub(channel),
        alert_service_pb2_grpc.AlertServiceStub(channel),
        cluster_service_pb2_grpc.ClusterServiceStub(channel),
    )


@pytest.fixture
def api_engine() -> str:
    """The ingest engine of the ``api`` fixture's server."""
    return "auto"


@pytest.fixture
async def api(tmp_path: Path, api_engine: str) -> AsyncIterator[Api]:
    """A running in-process server with an empty data directory, and stubs to it."""
    server = UnimeterServer(serve_config(tmp_path / "data", engine=api_engine))
    await server.start()
    stubs = await open_api(server)
    try:
        yield stubs
    finally:
        await stubs.channel.close()
        await server.stop(grace=1.0)
