"""Observability of a real server on 127.0.0.1: /metrics (ingest, storage, alerts, RPCs), /readyz
during recovery, request ids in metadata and in log records."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

import service.server
from cluster_client.node_api import AlertStreamItem
from node.node import Node, NodeConfig
from service.logging_setup import configure_logging
from service.server import UnimeterServer
from tests.conftest import Api, open_api, serve_config
from tests.engines import ENGINES
from tests.grpc_errors import details
from tests.integration.helpers import T0, create_metric, ev, ingest
from tests.integration.ops_helpers import http_get, sample, scrape, total
from unimeter.v1 import alert_service_pb2 as als
from unimeter.v1 import metrics_service_pb2 as ms
from unimeter.v1 import types_pb2 as t

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def ops(tmp_path: Path, api_engine: str) -> AsyncIterator[Api]:
    """A server with the HTTP endpoint on, and stubs to it."""
    server = UnimeterServer(serve_config(tmp_path / "data", http_addr="127.0.0.1:0", engine=api_engine))
    await server.start()
    stubs = await open_api(server)
    try:
        yield stubs
    finally:
        await stubs.channel.close()
        await server.stop(grace=1.0)


def partition_of(api: Api, account: int) -> str:
    assert api.server.client is not None
    return str(api.server.client.partition_of(account))


@pytest.mark.parametrize("api_engine", ENGINES)
async def test_metrics_count_ingest_by_mode_duplicates_rejects_and_rpc_codes(
    ops: Api, api_engine: str
) -> None:
    await create_metric(ops, "calls", thresholds=[t.AlertThreshold(code="two", value=2)])
    # ASYNC: three events, one of them a duplicate of another in the same batch.
    await ingest(ops, ev(7, "calls", event_id="a"), ev(7, "calls", event_id="a"), ev(8, "calls"))
    await ingest(ops, ev(7, "calls", time=T0), sync=True)
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await ingest(ops, ev(7, "calls"), ev(7, "no_such_metric"), ev(0, "calls"))
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    m = await scrape(ops.server.http_port)
    assert sample(m, "unimeter_ingest_batches_total", delivery="async") == 1
    assert sample(m, "unimeter_ingest_batches_total", delivery="sync") == 1
    assert sample(m, "unimeter_ingest_events_total", delivery="async") == 3
    assert sample(m, "unimeter_ingest_events_total", delivery="sync") == 1
    assert sample(m, "unimeter_ingest_duplicates_total") == 1
    assert sample(m, "unimeter_ingest_rejected_batches_total", reason="INVALID_ARGUMENT") == 1
    assert sample(m, "unimeter_ingest_rejected_events_total", reason="INVALID_ARGUMENT") == 3
    assert sample(m, "unimeter_ingest_invalid_fields_total", field="metric_code") == 1
    assert sample(m, "unimeter_ingest_invalid_fields_total", field="account_id") == 1
    assert sample(m, "unimeter_ingest_inflight_events") == 0
    assert sample(m, "unimeter_ingest_inflight_events_limit") == 1_000_000

    ingest_rpc = {"service": "unimeter.v1.IngestService", "method": "Ingest"}
    assert sample(m, "unimeter_grpc_requests_total", code="OK", **ingest_rpc) == 2
    assert sample(m, "unimeter_grpc_requests_total", code="INVALID_ARGUMENT", **ingest_rpc) == 1
    assert sample(m, "unimeter_grpc_request_duration_seconds_count", **ingest_rpc) == 3
    assert sample(m, "unimeter_grpc_request_duration_seconds_bucket", le="+Inf", **ingest_rpc) == 3
    assert (sample(m, "unimeter_grpc_request_duration_seconds_sum", **ingest_rpc) or 0) > 0
    assert sample(m, "unimeter_ready") == 1
    assert sample(m, "unimeter_ingest_engine_info", engine=api_engine) == 1
    # The standard process metrics come along in the server's own registry.
    assert sample(m, "process_resident_memory_bytes") is not None


async def test_metrics_show_log_sizes_fsyncs_offsets_and_snapshot_age(ops: Api) -> None:
    await create_metric(ops, "calls", thresholds=[t.AlertThreshold(code="two", value=2)])
    await ingest(ops, ev(7, "calls", time=T0), ev(7, "calls", time=T0 + 1), sync=True)
    p = partition_of(ops, 7)
    m = await scrape(ops.server.http_port)
    assert (sample(m, "unimeter_log_bytes", partition=p, log="events") or 0) > 0
    assert (sample(m, "unimeter_log_bytes", partition=p, log="alerts") or 0) > 0
    assert sample(m, "unimeter_log_segments", partition=p, log="events") == 1
    assert sample(m, "unimeter_partition_last_offset", partition=p) == 2
    assert sample(m, "unimeter_alert_log_alerts", partition=p) == 1
    assert sample(m, "unimeter_alerts_in_memory", partition=p) == 1  # under the default bound
    assert sample(m, "unimeter_partitions") == 8
    # Both events carry their own time: two derived dedup keys in a table of 1024 slots of 12 B.
    assert sample(m, "unimeter_dedup_keys", partition=p) == 2
    assert 12 * 1024 <= (sample(m, "unimeter_dedup_bytes", partition=p) or 0) < 14 * 1024
    # Every SYNC ingest waited on at least one events fsync and one alerts fsync.
    assert (sample(m, "unimeter_log_fsync_seconds_count", log="events") or 0) >= 1
    assert (sample(m, "unimeter_log_fsync_seconds_count", log="alerts") or 0) >= 1
    assert sample(m, "unimeter_log_fsync_seconds_bucket", log="events", le="+Inf") == sample(
        m, "unimeter_log_fsync_seconds_count", log="events"
    )
    # The SYNC call published its alert, with the delay since its batch arrived.
    assert sample(m, "unimeter_alert_publish_delay_seconds_count") == 1
    assert sample(m, "unimeter_alert_publish_delay_seconds_bucket", le="+Inf") == 1
    assert 0 <= (sample(m, "unimeter_alert_publish_delay_seconds_sum") or 0) < 5
    # No snapshot yet: no age sample, one record pending.
    assert sample(m, "unimeter_snapshot_age_seconds", partition=p) is None
    assert sample(m, "unimeter_snapshot_pending_records", partition=p) == 1

    assert ops.server.node is not None
    await ops.server.node.partitions[int(p)].snapshot()
    m = await scrape(ops.server.http_port)
    age = sample(m, "unimeter_snapshot_age_seconds", partition=p)
    assert age is not None and 0 <= age < 5
    assert sample(m, "unimeter_snapshot_pending_records", partition=p) == 0


async def test_subscriber_count_and_lag(ops: Api) -> None:
    await create_metric(ops, "calls", thresholds=[t.AlertThreshold(code="each", value=1, recurring=True)])
    m = await scrape(ops.server.http_port)
    assert sample(m, "unimeter_alert_subscribers") == 0

    # A gRPC subscriber counts while its stream is open.
    call = ops.alerts.AlertSubscribe(als.AlertSubscribeRequest(from_beginning=True), timeout=10)
    first = await call.read()
    assert isinstance(first, als.AlertSubscribeResponse)
    m = await scrape(ops.server.http_port)
    assert sample(m, "unimeter_alert_subscribers") == 1
    call.cancel()

    # A subscriber that stops reading falls behind by exactly the alerts published since.
    node = ops.server.node
    assert node is not None
    stream: AsyncIterator[AlertStreamItem] = node.subscribe_alerts([], {}, True, [], [], [])
    start = await anext(stream)
    assert start.alert is None
    await ingest(ops, *[ev(7, "calls", value=1, time=T0 + i) for i in range(3)], sync=True)
    p = partition_of(ops, 7)
    async with asyncio.timeout(5):
        while (
            sample(
                m := await scrape(ops.server.http_port), "unimeter_alert_subscriber_lag_alerts", partition=p
            )
            != 3
        ):
            await asyncio.sleep(0.02)
    assert total(m, "unimeter_alert_subscriber_lag_alerts") == 3
    item = await anext(stream)
    assert item.alert is not None
    m = await scrape(ops.server.http_port)
    assert sample(m, "unimeter_alert_subscriber_lag_alerts", partition=p) == 2
    await stream.aclose()  # type: ignore[attr-defined]
    async with asyncio.timeout(5):
        while sample(await scrape(ops.server.http_port), "unimeter_alert_subscribers") != 0:
            await asyncio.sleep(0.02)


async def test_two_servers_in_one_process_keep_separate_metrics(tmp_path: Path) -> None:
    a = UnimeterServer(serve_config(tmp_path / "a", http_addr="127.0.0.1:0"))
    b = UnimeterServer(serve_config(tmp_path / "b", http_addr="127.0.0.1:0"))
    await a.start()
    await b.start()
    api_a = await open_api(a)
    try:
        await create_metric(api_a, "calls")
        await ingest(api_a, ev(1, "calls"), ev(2, "calls"))
        ma, mb = await scrape(a.http_port), await scrape(b.http_port)
        assert sample(ma, "unimeter_ingest_events_total", delivery="async") == 2
        assert sample(mb, "unimeter_ingest_events_total", delivery="async") == 0
    finally:
        await api_a.channel.close()
        await a.stop(grace=1.0)
        await b.stop(grace=1.0)


async def test_readyz_is_503_while_recovering_and_200_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()

    class SlowNode(Node):
        def __init__(self, config: NodeConfig) -> None:
            release.wait(10)  # recovery of a big data directory, held open by the test
            super().__init__(config)

    monkeypatch.setattr(service.server, "Node", SlowNode)
    server = UnimeterServer(serve_config(tmp_path / "data", http_addr="127.0.0.1:0"))
    starting = asyncio.create_task(server.start())
    try:
        async with asyncio.timeout(5):
            while not server.http_port:
                await asyncio.sleep(0.01)
        assert await http_get(server.http_port, "/readyz") == (503, "recovering\n")
        assert await http_get(server.http_port, "/healthz") == (200, "ok\n")
        assert sample(await scrape(server.http_port), "unimeter_ready") == 0
    finally:
        release.set()
        await asyncio.wait_for(starting, 10)
    assert await http_get(server.http_port, "/readyz") == (200, "ready\n")
    assert sample(await scrape(server.http_port), "unimeter_ready") == 1
    await server.stop(grace=1.0)
    assert not server.ready


async def test_request_id_is_echoed_or_generated_and_survives_errors(ops: Api) -> None:
    call = ops.metrics.ListMetrics(ms.ListMetricsRequest(), metadata=(("x-request-id", "req-42"),), timeout=5)
    await call
    assert ("x-request-id", "req-42") in tuple(await call.trailing_metadata())

    call = ops.metrics.ListMetrics(ms.ListMetricsRequest(), timeout=5)
    await call
    generated = dict(tuple(await call.trailing_metadata()))["x-request-id"]
    assert len(generated) == 16 and int(generated, 16) >= 0

    # An id that could forge or bloat log lines is replaced, not echoed.
    for bad in ('a b" level="ERROR', "x" * 200):
        call = ops.metrics.ListMetrics(ms.ListMetricsRequest(), metadata=(("x-request-id", bad),), timeout=5)
        await call
        assert dict(tuple(await call.trailing_metadata()))["x-request-id"] != bad

    # On an error the id travels with the rich status details.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await ops.metrics.GetMetric(
            ms.GetMetricRequest(code="missing"), metadata=(("x-request-id", "req-43"),)
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert ("x-request-id", "req-43") in tuple(err.value.trailing_metadata())
    assert details(err.value)[0] == "METRIC_NOT_FOUND"

    # ... and on a failing server stream.
    stream = ops.alerts.AlertSubscribe(
        als.AlertSubscribeRequest(metric_codes=["missing"]), metadata=(("x-request-id", "req-44"),), timeout=5
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stream.read()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert ("x-request-id", "req-44") in tuple(err.value.trailing_metadata())
    assert details(err.value)[0] == "INVALID_ARGUMENT"


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """Route every log record, as JSON, into a buffer (restoring the root logger afterwards)."""
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    buffer = io.StringIO()
    configure_logging("DEBUG", "json", buffer)
    try:
        yield buffer
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved_handlers:
            root.addHandler(handler)
        root.setLevel(saved_level)


def records(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]


async def test_log_records_emitted_while_handling_a_call_carry_its_request_id(
    ops: Api, json_log: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = ops.server.node
    assert node is not None
    original = node.list_metrics

    async def list_metrics_that_logs() -> list[Any]:
        # Deep below the servicer: the node, reached through the client core, in the same call.
        logging.getLogger("node.test").warning("listing metrics")
        return await original()

    monkeypatch.setattr(node, "list_metrics", list_metrics_that_logs)
    await ops.metrics.ListMetrics(ms.ListMetricsRequest(), metadata=(("x-request-id", "req-77"),), timeout=5)
    logged = records(json_log)
    deep = [r for r in logged if r["msg"] == "listing metrics"]
    assert len(deep) == 1
    assert deep[0]["request_id"] == "req-77"
    assert deep[0]["level"] == "WARNING" and deep[0]["logger"] == "node.test"
    assert deep[0]["ts"].endswith("Z")
    access = [r for r in logged if r.get("grpc_method") == "/unimeter.v1.MetricsService/ListMetrics"]
    assert len(access) == 1
    assert access[0]["request_id"] == "req-77" and access[0]["grpc_code"] == "OK"
    # Outside any call the id is "-".
    logging.getLogger("test").info("idle")
    assert records(json_log)[-1]["request_id"] == "-"


async def test_text_log_format_names_the_request_id(ops: Api) -> None:
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    buffer = io.StringIO()
    configure_logging("DEBUG", "text", buffer)
    try:
        await ops.metrics.ListMetrics(
            ms.ListMetricsRequest(), metadata=(("x-request-id", "req-9"),), timeout=5
        )
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved_handlers:
            root.addHandler(handler)
        root.setLevel(saved_level)
    line = next(x for x in buffer.getvalue().splitlines() if "ListMetrics" in x)
    assert "[req-9]" in line and "DEBUG unimeter.access" in line
