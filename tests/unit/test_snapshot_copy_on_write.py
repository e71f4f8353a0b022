"""Snapshots that copy almost nothing at capture: the aggregate cells and COUNT_UNIQUE accounts
(copy-on-write: ``SeriesStore.to_snapshot``, ``UniqueStore.to_snapshot``) and the event index
(cut back to the capture's log position).

A capture copies no cell: until its data is packed, ingestion saves a cell's value before changing
it, and the packer reads the saved value. Whatever is applied while the packer runs (here between
every chunk of 3 cells), the packed bytes must be exactly those of a store that only ever saw the
records before the capture, and once released the store goes on as if no snapshot had been taken.
It runs once per engine (``tests/engines.py``), the reference always on the Python stores: the
native cells' copy-on-write must give the Python store's bytes.
"""

from __future__ import annotations

import asyncio
from unittest import mock

import msgpack
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cluster_client.types import AggType, AlertThreshold, DimensionFilter, Metric, PeriodType
from node.aggregation import AppliedRow, MetricSpec, PartitionAggregates, snapshot_data
from node.aggregation.snapshot_data import pack, pack_in_slices
from node.event_index import HOUR_NS, EventIndex
from node.partition_engine import partition_engine
from tests.engines import ENGINES

NS = 1_000_000_000
MINUTE = 60 * NS
T0 = 1772323200 * NS  # 2026-03-01T00:00:00Z
ADD, REMOVE = 1, 2
HUGE = 2**63 - 1  # four of these in one cell pass 64 bits: the cell is packed as strings

METRICS = {
    "sum, dimensions, thresholds": Metric(
        "m",
        AggType.SUM,
        period_type=PeriodType.CALENDAR,
        filters=(DimensionFilter("region", ("eu", "us")),),
        thresholds=(AlertThreshold("cap", 50), AlertThreshold("each", 20, recurring=True)),
    ),
    "count, thresholds": Metric("m", AggType.COUNT, thresholds=(AlertThreshold("cap", 3),)),
    "latest, dimensions": Metric(
        "m",
        AggType.LATEST,
        period_type=PeriodType.CALENDAR,
        filters=(DimensionFilter("region", ("eu", "us")),),
    ),
    "count_unique, carry_over, dimensions, thresholds": Metric(
        "m",
        AggType.COUNT_UNIQUE,
        period_type=PeriodType.CALENDAR,
        carry_over=True,
        filters=(DimensionFilter("region", ("eu", "us")),),
        thresholds=(AlertThreshold("seats", 3),),
    ),
    "count_unique": Metric("m", AggType.COUNT_UNIQUE, period_type=PeriodType.DAY),
}

# (account, value, minute, remove, region): minutes over 40 days cross day, month and period edges.
_row = st.tuples(
    st.sampled_from([1, 2, 3]),
    st.one_of(st.integers(1, 1000), st.just(HUGE)),
    st.integers(0, 40 * 24 * 60),
    st.booleans(),
    st.sampled_from([None, "eu", "us"]),
)
_records = st.lists(st.lists(_row, min_size=1, max_size=6), max_size=12)


class Store:
    """PartitionAggregates of one metric fed records in order, with refs and offsets as a log
    would assign them (the same records give the same refs and offsets)."""

    def __init__(self, metric: Metric, engine: str = "python") -> None:
        self.spec = MetricSpec.compile(metric, 1)
        self.dimensioned = bool(metric.filters)
        self.aggregates = PartitionAggregates(lambda *_: [], partition_engine(engine).stores)
        self.offset = 0
        self.records = 0

    def apply(self, record: list[tuple[int, int, int, bool, str | None]]) -> None:
        rows: list[AppliedRow] = []
        for account, value, minute, remove, region in record:
            self.offset += 1
            op = REMOVE if remove and self.spec.agg_type is not AggType.LATEST else ADD
            if self.spec.agg_type is AggType.COUNT_UNIQUE:
                value %= 5  # a few members per account, each added and removed over time
            props = {"region": region} if region and self.dimensioned else None
            rows.append((account, value, T0 + minute * MINUTE + self.offset, props, op, self.offset))
        self.records += 1
        self.aggregates.apply(self.spec, rows, 100 + self.records)

    def packed(self) -> bytes:
        data = pack(self.aggregates.to_snapshot())
        self.aggregates.release_snapshot()
        return data


async def _pack_while_applying(
    store: Store, during: list[list[tuple[int, int, int, bool, str | None]]]
) -> tuple[bytes, int]:
    """Pack a capture of ``store`` in slices of 3 cells while ``during`` is applied between them;
    the bytes, and how many of those records were applied before the packing ended."""
    data = store.aggregates.to_snapshot()
    applied = 0

    async def ingest() -> None:
        nonlocal applied
        for record in during:
            store.apply(record)
            applied += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ingest())
    await asyncio.sleep(0)  # the first record goes in between the capture and the first chunk
    try:
        packed = b"".join(await pack_in_slices(data))
        return packed, applied
    finally:
        store.aggregates.release_snapshot()
        await task


@pytest.mark.parametrize("engine", ENGINES)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(METRICS)), _records, _records)
@example(  # sums past 64 bits in cells captured before and changed during the packing
    "sum, dimensions, thresholds",
    [[(1, HUGE, 5, False, "eu")] * 4, [(2, 7, 60 * 24 * 31, False, None)]],
    [[(1, HUGE, 5, False, "eu")], [(1, 3, 5, True, "eu")], [(2, 9, 60 * 24 * 31, False, "us")]],
)
def test_a_capture_packs_the_state_it_was_taken_at_while_ingestion_changes_the_cells(
    engine: str,
    name: str,
    before: list[list[tuple[int, int, int, bool, str | None]]],
    during: list[list[tuple[int, int, int, bool, str | None]]],
) -> None:
    metric = METRICS[name]
    live, reference, after = Store(metric, engine), Store(metric), Store(metric, engine)
    for record in before:
        live.apply(record)
        reference.apply(record)
    for record in [*before, *during]:
        after.apply(record)
    with (
        mock.patch.object(snapshot_data, "_CHUNK", 3),
        mock.patch.object(snapshot_data, "_SLICE_SECONDS", 0.0),
    ):
        packed, applied = asyncio.run(_pack_while_applying(live, during))
    assert packed == reference.packed()  # the capture's state, whatever changed meanwhile
    if during and before:
        assert applied > 0  # ingestion ran between the chunks
    assert live.packed() == after.packed()  # released: the live state is every record's


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.lists(st.tuples(st.integers(1, 4), st.integers(0, 5)), min_size=1, max_size=4), max_size=15),
    st.lists(st.lists(st.tuples(st.integers(1, 6), st.integers(0, 7)), min_size=1, max_size=4), max_size=15),
)
def test_an_event_index_capture_packs_the_index_it_was_taken_at_while_records_are_added(
    before: list[list[tuple[int, int]]], during: list[list[tuple[int, int]]]
) -> None:
    """The event index copies only its account list at capture: ref lists grown, hours added and
    single-hour accounts turned into several hours since are cut back to the capture when packed."""
    live, reference = EventIndex(), EventIndex()
    for ref, pairs in enumerate(before, start=1):
        live.add(ref * 10, pairs)
        reference.add(ref * 10, pairs)
    below = (len(before) + 1) * 10  # the log's end at capture: every later record starts there or after

    async def pack_while_adding() -> bytes:
        data = live.to_snapshot(below)

        async def add() -> None:
            for ref, pairs in enumerate(during, start=len(before) + 1):
                await asyncio.sleep(0)
                live.add(ref * 10, pairs)

        task = asyncio.create_task(add())
        packed = b"".join(await pack_in_slices(data))
        await task
        return packed

    with (
        mock.patch.object(snapshot_data, "_CHUNK", 1),
        mock.patch.object(snapshot_data, "_SLICE_SECONDS", 0.0),
    ):
        packed = asyncio.run(pack_while_adding())
    assert packed == pack(reference.to_snapshot(below))
    restored = EventIndex.from_snapshot(msgpack.unpackb(packed))
    for account in range(1, 7):
        assert list(restored.hours(account, 0, 8 * HOUR_NS)) == list(reference.hours(account, 0, 8 * HOUR_NS))
