"""A node's partitions on the native engine (``node/partition_engine.py``) against the Python
reference, in process and in lock step: random workloads (every aggregation type of the hot path,
thresholds, corrections, duplicates by id and by content, events stamped with the arrival time,
retried batch ids, clock moves, expiry and snapshots (which fold the minute cells of hours past a
one-hour memory horizon); calendar, week, day and fixed periods in
time zones, dimension filters and groups, sums past 64 bits, late events) give the same outcomes,
the same log bytes, the same snapshot bytes, the same answers, event pages and alerts; then each
data directory is recovered by the other engine, which answers alike and goes on deduplicating
alike. A third node on the native engine takes each batch as the server's native decoder hands
it over (``unimeter_native.decode_ingest``: one ``EventBatch`` per partition, read in place by the
dedup step, the event index and the stores) and must match the other two in every one of those
respects. Collected only where the extension is built (tests/conftest.py)."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import unimeter_native
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cluster_client import AggType, AlertThreshold, DimensionFilter, Metric
from cluster_client.errors import OutOfRangeError
from cluster_client.partitioning import partition_of
from cluster_client.types import EventRow, OperationType, PeriodType, QueryResult
from node.aggregation import MetricSpec
from node.node import Node, NodeConfig
from unimeter.v1 import ingest_service_pb2, types_pb2

pytestmark = pytest.mark.timeout(300)

SEC = 1_000_000_000
HOUR = 3600 * SEC
T = 1_772_323_200 * SEC
WINDOW = 600 * SEC
PARTITIONS = 2
ACCOUNTS = (1, 2, 3, 1 << 40)
INT64_MAX = 2**63 - 1
DAY = 24 * HOUR
METRICS = (
    Metric("calls", AggType.COUNT, thresholds=(AlertThreshold("every_5", 5, recurring=True),)),
    Metric(
        "bytes",
        AggType.SUM,
        period_type=PeriodType.CALENDAR,
        time_zone="Asia/Kathmandu",
        filters=(DimensionFilter("region", ("eu", "us")), DimensionFilter("tier", ("free", "pro"))),
        # No threshold: an alert's value past 2^64 cannot be written to the alert log (on either
        # engine), and this metric's sums go there. The model test covers SUM thresholds.
    ),
    Metric(
        "peak",
        AggType.MAX,
        period_type=PeriodType.WEEK,
        time_zone="America/New_York",
        thresholds=(AlertThreshold("over_900", 900),),
    ),
    Metric("last", AggType.LATEST, period_type=PeriodType.DAY, time_zone="Australia/Lord_Howe"),
    Metric("seats", AggType.COUNT_UNIQUE),
    Metric(
        "members",
        AggType.COUNT_UNIQUE,
        period_type=PeriodType.CALENDAR,
        time_zone="Asia/Kathmandu",
        carry_over=True,
        filters=(DimensionFilter("region", ("eu", "us")),),
        thresholds=(AlertThreshold("three", 3),),
    ),
)
RANGES = (
    (0, INT64_MAX),
    (T, T + HOUR),
    (T + 5 * SEC, T + 3 * HOUR + 1),  # partial minutes at both edges
    (T - DAY + 3, T + DAY),  # across the month's start in Kathmandu
)
REMOVABLE = {"calls", "bytes", "seats", "members"}


def compile_metric(metric: Metric) -> MetricSpec:
    return MetricSpec.compile(metric, 1)


@dataclass
class SetClock:
    now: int

    def now_ns(self) -> int:
        return self.now


rows_st = st.lists(
    st.tuples(
        st.sampled_from(ACCOUNTS),
        st.sampled_from([m.code for m in METRICS]),
        st.sampled_from([1, 2, 7, 1000, 2**62]),  # 2**62: sums past 64 bits, snapshot strings
        # 0: stamped on arrival; T - 6 h: a late event, in the previous month in Kathmandu
        st.sampled_from([0, 0, T, T + 5 * SEC, T + HOUR, T + 3 * HOUR, T - 6 * HOUR + 7 * SEC]),
        st.sampled_from([None, {"region": "eu"}, {"region": "us", "tier": "pro"}, {"tier": "free"}]),
        st.booleans(),  # a correction, where the metric allows one
        st.sampled_from(["", "", "a", "b", "c"]),
    ),
    min_size=1,
    max_size=30,
)
steps_st = st.lists(
    st.one_of(
        st.tuples(st.just("ingest"), rows_st, st.sampled_from(["", "", "batch-1", "batch-2"])),
        st.tuples(st.just("clock"), st.sampled_from([1, SEC, WINDOW // 2, WINDOW + 1, -HOUR, 2 * HOUR])),
        st.tuples(st.just("expire")),
        st.tuples(st.just("snapshot")),
    ),
    min_size=1,
    max_size=25,
)


def _row(raw: tuple[Any, ...]) -> EventRow:
    account, code, value, t, props, correction, event_id = raw
    op = OperationType.REMOVE if correction and code in REMOVABLE else OperationType.ADD
    return (account, code, value, t, props, int(op), event_id)


def _event(row: EventRow) -> types_pb2.Event:
    account, code, value, t, props, op, event_id = row
    return types_pb2.Event(
        account_id=account,
        metric_code=code,
        value=value,
        time_unix_nano=t,
        properties=props or {},
        operation=op,  # type: ignore[arg-type]
        event_id=event_id,
    )


async def _answer(query: Awaitable[QueryResult]) -> object:
    """A query's result, or the reason of its OUT_OF_RANGE error (a sum past int64 is one)."""
    try:
        return await query
    except OutOfRangeError as exc:
        return exc.reason


class _Node:
    """One node on one engine, driven by the test (no background loops)."""

    def __init__(self, data_dir: Path, engine: str, clock: SetClock) -> None:
        self.node = Node(
            NodeConfig(
                data_dir,
                partitions=PARTITIONS,
                dedup_window_seconds=WINDOW / SEC,
                clock=clock,
                engine=engine,
                memory_horizon_ns=HOUR,
            )
        )
        # The engine is the one asked for, down to the dedup index, the event index and the cell stores.
        partition = self.node.partitions[0]
        native = engine == "native"
        assert type(partition.dedup).__module__ == ("unimeter_native" if native else "node.dedup_index")
        store = partition.aggregates._kinds.new_series(compile_metric(METRICS[0]))
        assert type(store).__name__ == ("NativeSeriesStore" if native else "SeriesStore")
        unique = partition.aggregates._kinds.new_unique(compile_metric(METRICS[4]))
        assert type(unique).__name__ == ("NativeUniqueStore" if native else "UniqueStore")
        assert type(partition.index).__name__ == ("NativeEventIndex" if native else "EventIndex")

    async def ingest(self, rows: list[EventRow], batch_id: str) -> list[tuple[list[int], int]]:
        parts: dict[int, list[EventRow]] = {}
        for r in rows:
            parts.setdefault(partition_of(r[0], PARTITIONS), []).append(r)
        outcomes = await self.node.ingest(sorted(parts.items()), False, batch_id)
        return [(list(o.offsets), o.n_duplicates) for o in outcomes]

    async def ingest_request(self, rows: list[EventRow], batch_id: str) -> list[tuple[list[int], int]]:
        """``ingest`` of the rows as the server's native engine does it: the request's bytes
        decoded, validated and split natively into one ``EventBatch`` per partition."""
        request = ingest_service_pb2.IngestRequest(events=[_event(r) for r in rows])
        metric_of = self.node.registry.get
        _, _, by_partition, rejection = unimeter_native.decode_ingest(
            request.SerializeToString(), metric_of, PARTITIONS
        )
        assert rejection is None
        parts = sorted((p, batch) for p, (batch, _) in by_partition.items())
        assert all(type(batch).__name__ == "EventBatch" for _, batch in parts)
        outcomes = await self.node.ingest(parts, False, batch_id, validated=True)
        return [(list(o.offsets), o.n_duplicates) for o in outcomes]

    async def snapshot_bytes(self) -> list[bytes]:
        out = []
        for partition in self.node.partitions:
            await partition.snapshot()
            stored = partition._storage.read_snapshot()
            assert stored is not None
            out.append(stored[0])
        return out

    def log_bytes(self) -> list[list[bytes]]:
        return [[payload for _, payload in p.events.scan(0)] for p in self.node.partitions]

    async def answers(self) -> list[object]:
        node = self.node
        for partition in node.partitions:
            await partition.flush()  # alerts are listed once durable
        out: list[object] = []
        for account in ACCOUNTS:
            p = partition_of(account, PARTITIONS)
            for metric in METRICS:
                code = metric.code
                for start, end in RANGES:
                    groups = ["region"] if code in ("bytes", "members") else []
                    out.append(await _answer(node.query(p, account, code, start, end, 0, {}, groups)))
                    if code == "bytes":
                        pro, both = {"tier": "pro"}, ["region", "tier"]
                        out.append(await _answer(node.query(p, account, code, start, end, 0, pro, both)))
                for selector in (1, 2):  # the current and the previous period
                    out.append(await _answer(node.query(p, account, code, 0, 0, selector, {}, [])))
                out.append(await _answer(node.query_realtime(p, account, code)))
            out.append(await node.list_events(p, account, 0, INT64_MAX, "", 1000, ""))
            out.append(await node.list_alerts(p, account, 0, 1000))
        out.append([(len(p.dedup), p.last_offset) for p in node.partitions])
        return out


async def _run(steps: list[tuple[Any, ...]], root: Path) -> None:
    clock = SetClock(T)
    nodes = {engine: _Node(root / engine, engine, clock) for engine in ("python", "native")}
    batches = _Node(root / "native-batches", "native", clock)
    every = [*nodes.values(), batches]
    try:
        for node in every:  # the same clock: the same generations on all
            for metric in METRICS:
                await node.node.create_metric(metric)
        for step in steps:
            kind, *args = step
            if kind == "ingest":
                rows = [_row(r) for r in args[0]]
                python, native = [await n.ingest(rows, args[1]) for n in nodes.values()]
                assert python == native == await batches.ingest_request(rows, args[1])
            elif kind == "clock":
                clock.now += args[0]
            elif kind == "expire":
                for n in every:
                    n.node.expire()
            else:
                python_snap, native_snap, batches_snap = [await n.snapshot_bytes() for n in every]
                assert python_snap == native_snap == batches_snap
        python_log, native_log, batches_log = [n.log_bytes() for n in every]
        assert python_log == native_log == batches_log
        python_answers, native_answers, batches_answers = [await n.answers() for n in every]
        assert python_answers == native_answers == batches_answers
        last_rows = next((s[1] for s in reversed(steps) if s[0] == "ingest"), [])
    finally:
        for n in every:
            await n.node.close()
    # Each engine recovers the other's directory (snapshot + log tail) and answers alike; the
    # recovered dedup state answers a resend of the last batch alike.
    swapped = {
        "native": _Node(root / "python", "native", clock),
        "python": _Node(root / "native", "python", clock),
    }
    try:
        recovered = [await n.answers() for n in swapped.values()]
        assert recovered[0] == recovered[1] == python_answers
        resend = [_row(r) for r in last_rows]
        if resend:
            assert await swapped["native"].ingest(resend, "") == await swapped["python"].ingest(resend, "")
    finally:
        for n in swapped.values():
            await n.node.close()
    # And from the log alone: without their snapshots, each engine replays the other's whole log
    # (records decoded from msgpack, rows as tuples) into the same answers.
    for engine in ("python", "native"):
        for snapshot in (root / engine).glob("partitions/*/snapshot.msgpack"):
            snapshot.unlink()
    replayed = {
        "native": _Node(root / "python", "native", clock),
        "python": _Node(root / "native", "python", clock),
    }
    try:
        answers = [await n.answers() for n in replayed.values()]
        assert answers[0] == answers[1]
    finally:
        for n in replayed.values():
            await n.node.close()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps_st)
def test_random_workloads_run_alike_on_both_engines(steps: list[tuple[Any, ...]]) -> None:
    root = Path(tempfile.mkdtemp(prefix="native-partition-"))
    try:
        asyncio.run(_run(steps, root))
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def test_a_workload_that_grows_the_dedup_table_runs_alike(tmp_path: Path) -> None:
    batch = [(a, "calls", 1, T + i * SEC, None, False, f"id-{i}") for i in range(700) for a in ACCOUNTS[:1]]
    steps: list[tuple[Any, ...]] = [
        ("ingest", batch[:400], ""),
        ("snapshot",),
        ("ingest", batch[300:], "batch-1"),
        ("ingest", batch[300:], "batch-1"),
        ("clock", WINDOW + 1),
        ("expire",),
        ("ingest", batch[:50], ""),
        ("snapshot",),
    ]
    await _run(steps, tmp_path)
