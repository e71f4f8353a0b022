"""Alerts are a pure function of the stored events: SIGKILL at random points, recover, compare.

Every account's COUNT metric has a recurring threshold of 3, so after recovery the alert log must hold,
for every account with n stored events, exactly the multiples 1..n//3 in offset order, each once;
and every alert a subscriber saw before a crash must still be there with the same offset.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import grpc
import pytest

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

pytestmark = pytest.mark.crash

T0 = 19_980 * 86_400 * 1_000_000_000
END = T0 + 30 * 86_400 * 1_000_000_000
ACCOUNTS = list(range(1, 25))
EVERY = 3


async def stored_counts(port: int) -> dict[int, int]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = query_service_pb2_grpc.QueryServiceStub(ch)
        out = {}
        for a in ACCOUNTS:
            r = await stub.Query(
                qs.QueryRequest(
                    account_id=a, metric_code="calls", period=t.Period(start_unix_nano=T0, end_unix_nano=END)
                ),
                timeout=10,
            )
            out[a] = r.value.count
        return out


async def all_alerts(port: int) -> dict[int, list[t.Alert]]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = alert_service_pb2_grpc.AlertServiceStub(ch)
        out: dict[int, list[t.Alert]] = {}
        for a in ACCOUNTS:
            r = await stub.ListAlerts(als.ListAlertsRequest(account_id=a, page_size=1000), timeout=10)
            out[a] = list(r.alerts)
        return out


async def _load(port: int, seen: list[t.Alert], seq: list[int]) -> None:
    """Ingest until killed (mixed ASYNC/SYNC), while a subscriber records every alert it gets."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = ingest_service_pb2_grpc.IngestServiceStub(ch)
        sub = alert_service_pb2_grpc.AlertServiceStub(ch).AlertSubscribe(
            als.AlertSubscribeRequest(from_beginning=True)
        )

        async def watch() -> None:
            async for msg in sub:
                if msg.WhichOneof("kind") == "alert":
                    seen.append(msg.alert)

        watcher = asyncio.create_task(watch())
        rng = random.Random(seq[0])
        try:
            while True:
                n = seq[0]
                seq[0] += 1
                events = [
                    t.Event(
                        account_id=rng.choice(ACCOUNTS),
                        metric_code="calls",
                        time_unix_nano=T0 + n * 100 + i,
                        event_id=f"{n}-{i}",
                    )
                    for i in range(rng.randint(1, 6))
                ]
                delivery = t.DELIVERY_MODE_SYNC if n % 3 == 0 else t.DELIVERY_MODE_ASYNC
                await stub.Ingest(ing.IngestRequest(events=events, delivery=delivery), timeout=10)
        except grpc.aio.AioRpcError:
            pass
        finally:
            watcher.cancel()


def check(counts: dict[int, int], alerts: dict[int, list[t.Alert]]) -> None:
    per_partition: dict[int, list[int]] = {}
    for a in ACCOUNTS:
        got = [(x.threshold_code, x.multiple, x.value_at_cross) for x in alerts[a]]
        assert got == [("every_3", k, k * EVERY) for k in range(1, counts[a] // EVERY + 1)], a
        for x in alerts[a]:
            per_partition.setdefault(x.partition, []).append(x.offset)
    for offsets in per_partition.values():
        assert sorted(offsets) == list(range(1, len(offsets) + 1))  # no gaps, none twice


async def test_alert_log_is_exactly_what_the_stored_events_imply_after_crashes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    seen: list[t.Alert] = []
    seq = [0]
    rng = random.Random(7)
    for round_ in range(3):
        server = start_serve(data, "--partitions", "4", "--snapshot-interval-seconds", "1")
        try:
            if round_ == 0:
                async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as ch:
                    await metrics_service_pb2_grpc.MetricsServiceStub(ch).CreateMetric(
                        metrics_service_pb2.CreateMetricRequest(
                            metric=t.Metric(
                                code="calls",
                                thresholds=[t.AlertThreshold(code="every_3", value=EVERY, recurring=True)],
                            )
                        ),
                        timeout=10,
                    )
            load = asyncio.create_task(_load(server.grpc_port, seen, seq))
            await asyncio.sleep(rng.uniform(0.5, 2.0))
            server.kill9()
            await asyncio.wait_for(load, 10)
        finally:
            if server.proc.poll() is None:
                server.kill9()
        restarted = start_serve(data)
        try:
            counts = await stored_counts(restarted.grpc_port)
            alerts = await all_alerts(restarted.grpc_port)
            check(counts, alerts)
            stored = {(x.partition, x.offset): x for xs in alerts.values() for x in xs}
            for alert in seen:  # nothing a subscriber was told is invented or renumbered
                assert stored[(alert.partition, alert.offset)] == alert
        finally:
            restarted.kill9()
    assert sum(counts.values()) > 50
