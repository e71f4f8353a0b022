"""Crash safety with real processes: SIGKILL during SYNC ingest, restart, exact counts; torn tails."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import grpc
import pytest

from tests.process import start_serve
from tests.segment_files import records_length
from unimeter.v1 import ingest_service_pb2 as ing
from unimeter.v1 import (
    ingest_service_pb2_grpc,
    metrics_service_pb2,
    metrics_service_pb2_grpc,
    query_service_pb2_grpc,
)
from unimeter.v1 import query_service_pb2 as qs
from unimeter.v1 import types_pb2 as t

pytestmark = pytest.mark.crash

T0 = 20_000 * 86_400 * 1_000_000_000
END = T0 + 30 * 86_400 * 1_000_000_000
ACCOUNTS = [1, 2, 3, 42, 43, 44, 1000, 65535]


def batch(n: int) -> list[t.Event]:
    """Batch n: one event per account, unique ids, value n+1 so sums prove which batches counted."""
    return [
        t.Event(
            account_id=a,
            metric_code="calls",
            value=n + 1,
            time_unix_nano=T0 + n * 1000 + i,
            event_id=f"b{n}-a{a}",
        )
        for i, a in enumerate(ACCOUNTS)
    ]


async def totals(port: int) -> dict[int, tuple[int, int]]:
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
            out[a] = (r.value.count, r.value.sum)
        return out


async def test_sigkill_during_sync_ingest_loses_no_ack_and_resend_does_not_double(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = start_serve(data, "--partitions", "16")
    acked: set[int] = set()
    sent: set[int] = set()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as ch:
            metrics = metrics_service_pb2_grpc.MetricsServiceStub(ch)
            await metrics.CreateMetric(
                metrics_service_pb2.CreateMetricRequest(
                    metric=t.Metric(code="calls", agg_type=t.AGG_TYPE_SUM)
                ),
                timeout=10,
            )
            stub = ingest_service_pb2_grpc.IngestServiceStub(ch)

            async def writer(start: int) -> None:
                n = start
                while True:
                    sent.add(n)
                    await stub.Ingest(
                        ing.IngestRequest(events=batch(n), delivery=t.DELIVERY_MODE_SYNC), timeout=10
                    )
                    acked.add(n)
                    n += 4

            tasks = [asyncio.create_task(writer(k)) for k in range(4)]
            while len(acked) < 150:
                await asyncio.sleep(0.01)
            server.kill9()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            assert all(isinstance(r, grpc.aio.AioRpcError) for r in results)
    finally:
        if server.proc.poll() is None:
            server.kill9()

    restarted = start_serve(data)
    try:
        after_crash = await totals(restarted.grpc_port)
        acked_sum = sum(n + 1 for n in acked)
        sent_sum = sum(n + 1 for n in sent)
        for a in ACCOUNTS:
            count, total = after_crash[a]
            # Every acknowledged batch is there; only unacknowledged ones may be missing.
            assert len(acked) <= count <= len(sent)
            assert acked_sum <= total <= sent_sum
        # Re-sending everything not acknowledged (with the same ids) completes without doubling.
        async with grpc.aio.insecure_channel(f"127.0.0.1:{restarted.grpc_port}") as ch:
            stub = ingest_service_pb2_grpc.IngestServiceStub(ch)
            for n in sorted(sent - acked):
                await stub.Ingest(
                    ing.IngestRequest(events=batch(n), delivery=t.DELIVERY_MODE_SYNC), timeout=10
                )
            # And re-sending an acknowledged batch stores nothing.
            again = await stub.Ingest(ing.IngestRequest(events=batch(min(acked))), timeout=10)
            assert (again.n_stored, again.n_duplicates) == (0, len(ACCOUNTS))
        final = await totals(restarted.grpc_port)
        assert final == {a: (len(sent), sent_sum) for a in ACCOUNTS}
        # The same holds after a graceful restart (snapshot + replay).
        assert restarted.terminate() == 0
        again_up = start_serve(data)
        try:
            assert await totals(again_up.grpc_port) == final
        finally:
            again_up.kill9()
    finally:
        if restarted.proc.poll() is None:
            restarted.kill9()


def _last_segment(data: Path) -> Path:
    segments = sorted(p for p in data.glob("partitions/*/events/*.seg") if p.stat().st_size > 0)
    assert segments, "no event segments written"
    return max(segments, key=lambda p: p.stat().st_mtime_ns)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "flip"])
async def test_torn_last_record_is_cut_and_the_node_starts(tmp_path: Path, damage: str) -> None:
    data = tmp_path / "data"
    server = start_serve(data, "--partitions", "1")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as ch:
            await metrics_service_pb2_grpc.MetricsServiceStub(ch).CreateMetric(
                metrics_service_pb2.CreateMetricRequest(
                    metric=t.Metric(code="calls", agg_type=t.AGG_TYPE_SUM)
                ),
                timeout=10,
            )
            stub = ingest_service_pb2_grpc.IngestServiceStub(ch)
            for n in range(5):
                await stub.Ingest(
                    ing.IngestRequest(events=batch(n), delivery=t.DELIVERY_MODE_SYNC), timeout=10
                )
    finally:
        server.kill9()
    seg = _last_segment(data)
    end = records_length(seg)  # the log reserves space past its records: damage goes where they end
    if damage == "truncate":
        os.truncate(seg, end - 7)
    elif damage == "garbage":
        with open(seg, "r+b") as f:
            f.seek(end)
            f.write(b"\x40\x00\x00\x00garbage-that-is-not-a-record")
    else:
        with open(seg, "r+b") as f:
            f.seek(end - 3)
            byte = f.read(1)
            f.seek(end - 3)
            f.write(bytes([byte[0] ^ 0xFF]))
    restarted = start_serve(data)
    try:
        got = await totals(restarted.grpc_port)
        lost_last = damage != "garbage"
        n_batches = 4 if lost_last else 5
        expected_sum = sum(n + 1 for n in range(n_batches))
        assert got == {a: (n_batches, expected_sum) for a in ACCOUNTS}
        # The node keeps working after the cut: new writes land and survive another restart.
        async with grpc.aio.insecure_channel(f"127.0.0.1:{restarted.grpc_port}") as ch:
            stub = ingest_service_pb2_grpc.IngestServiceStub(ch)
            r = await stub.Ingest(
                ing.IngestRequest(events=batch(9), delivery=t.DELIVERY_MODE_SYNC), timeout=10
            )
            assert r.n_stored == len(ACCOUNTS)
    finally:
        restarted.kill9()
    final = start_serve(data)
    try:
        got = await totals(final.grpc_port)
        assert got == {a: (n_batches + 1, expected_sum + 10) for a in ACCOUNTS}
    finally:
        final.kill9()
