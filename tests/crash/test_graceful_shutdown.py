"""SIGTERM: a server with an open alert stream stops promptly, flushes, and the stream ends cleanly;
a partition that cannot snapshot fails the shutdown without leaving the others unflushed."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc

from tests.process import start_serve
from unimeter.v1 import alert_service_pb2 as als
from unimeter.v1 import (
    alert_service_pb2_grpc,
    ingest_service_pb2_grpc,
    metrics_service_pb2,
    metrics_service_pb2_grpc,
    query_service_pb2_grpc,
)
from unimeter.v1 import ingest_service_pb2 as ing
from unimeter.v1 import query_service_pb2 as qs
from unimeter.v1 import types_pb2 as t

T0 = 20_000 * 86_400 * 1_000_000_000


async def test_sigterm_with_an_open_subscription_exits_promptly(tmp_path: Path) -> None:
    server = start_serve(tmp_path / "data", "--partitions", "2")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as ch:
            stream = alert_service_pb2_grpc.AlertServiceStub(ch).AlertSubscribe(als.AlertSubscribeRequest())
            async with asyncio.timeout(5):
                first = await stream.read()
            assert first.WhichOneof("kind") == "heartbeat"
            started = time.monotonic()
            code = await asyncio.to_thread(server.terminate, 30)
            assert code == 0
            assert time.monotonic() - started < 5  # not the 10 s grace period
            async with asyncio.timeout(5):
                end = await stream.read()
            assert end is grpc.aio.EOF
    finally:
        if server.proc.poll() is None:
            server.kill9()


def event(account: int) -> t.Event:
    return t.Event(account_id=account, metric_code="calls", value=account, time_unix_nano=T0 + account)


async def test_sigterm_with_a_partition_that_cannot_snapshot_flushes_all_and_exits_1(tmp_path: Path) -> None:
    """A partition whose snapshot cannot be written (its temp path is a directory: even root
    cannot open it for writing) makes the shutdown fail with exit code 1, but every partition's
    ASYNC events are durable: a restart counts each of them once."""
    data = tmp_path / "data"
    server = start_serve(data, "--partitions", "4", "--flush-interval-ms", "60000")
    accounts = list(range(1, 41))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as ch:
            metric = t.Metric(code="calls", agg_type=t.AGG_TYPE_SUM)
            await metrics_service_pb2_grpc.MetricsServiceStub(ch).CreateMetric(
                metrics_service_pb2.CreateMetricRequest(metric=metric)
            )
            request = ing.IngestRequest(events=[event(a) for a in accounts])
            await ingest_service_pb2_grpc.IngestServiceStub(ch).Ingest(request, timeout=10)
        (data / "partitions" / "0000" / "snapshot.msgpack.tmp").mkdir()
        assert await asyncio.to_thread(server.terminate, 30) == 1
    finally:
        if server.proc.poll() is None:
            server.kill9()
    again = start_serve(data, "--partitions", "4")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{again.grpc_port}") as ch:
            stub = query_service_pb2_grpc.QueryServiceStub(ch)
            for a in accounts:
                r = await stub.Query(
                    qs.QueryRequest(
                        account_id=a,
                        metric_code="calls",
                        period=t.Period(start_unix_nano=T0, end_unix_nano=T0 + 86_400 * 10**9),
                    ),
                    timeout=10,
                )
                assert (r.value.count, r.value.sum) == (1, a)
    finally:
        await asyncio.to_thread(again.terminate, 30)
