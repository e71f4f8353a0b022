"""Minute cells folded into their hours past the memory horizon (docs/design.md, "Folded minutes").

Exact cases on both engines' stores: what a fold drops (every slot's minute cells below the cutoff's
hour, their record positions with them) and keeps (later minutes, every hour, day and period cell);
an edge inside a folded hour read from the records the event index lists (``fetch_events`` with no
refs), with the answer it had before the fold; a late event into a folded hour counted without a
minute cell coming back; the folded minute through a snapshot, the same bytes from both engines, and
a version 1 snapshot (no fold) still read. The random programs are in ``test_aggregation_model.py``.
"""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from cluster_client.types import AggType, DimensionFilter, Metric, PeriodType
from node.aggregation import AppliedRow, MetricSpec, PartitionAggregates
from node.aggregation.snapshot_data import pack
from node.partition_engine import partition_engine
from tests.engines import ENGINES

NS = 1_000_000_000
MINUTE = 60 * NS
HOUR = 60 * MINUTE
T0 = 1772323200 * NS  # 2026-03-01T00:00:00Z
MONTH = (T0, 1775001600 * NS)
ACCOUNT = 42
ADD, REMOVE = 1, 2


class Store:
    """One metric's PartitionAggregates over an in-memory log, on one engine."""

    def __init__(self, engine: str, agg: AggType = AggType.SUM, dims: bool = True) -> None:
        filters = (DimensionFilter("region", ("eu", "us")),) if dims else ()
        metric = Metric("m", agg_type=agg, period_type=PeriodType.CALENDAR, filters=filters)
        self.spec = MetricSpec.compile(metric, 1)
        self.kinds = partition_engine(engine).stores
        self.aggregates = PartitionAggregates(self.fetch_events, self.kinds)
        self.records: dict[int, list[AppliedRow]] = {}
        self.fetches: list[list[int] | None] = []
        self.offset = 0

    def fetch_events(
        self,
        refs: list[int] | None,
        account_id: int,
        metric_code: str,
        windows: list[tuple[int, int]],
        whole_minutes: list[list[int]] | None = None,
    ) -> list[AppliedRow]:
        """Every event as a row (``whole_minutes`` is left empty, as a reader may)."""
        self.fetches.append(refs)
        chosen = list(self.records) if refs is None else refs
        return [
            r
            for ref in chosen
            for r in self.records[ref]
            if r[0] == account_id and any(lo <= r[2] < hi for lo, hi in windows)
        ]

    def ingest(self, *events: tuple[Any, ...]) -> None:
        """One record of events ``(value, time, op, region)`` of ACCOUNT."""
        rows: list[AppliedRow] = []
        for value, t, op, region in events:
            self.offset += 1
            rows.append((ACCOUNT, value, t, {"region": region}, op, self.offset))
        ref = 100 + 10 * len(self.records)
        self.records[ref] = rows
        self.aggregates.apply(self.spec, rows, ref)

    def query(self, start: int, end: int, filters: dict[str, str] | None = None) -> tuple[Any, Any]:
        return self.aggregates.query(self.spec, ACCOUNT, start, end, filters or {}, ["region"])

    def snapshot(self) -> bytes:
        try:
            return pack(self.aggregates.to_snapshot())
        finally:
            self.aggregates.release_snapshot()

    def minute_cells(self) -> list[list[int]]:
        """Per slot, the minutes of the account's minute cells (from the snapshot's columns)."""
        data = msgpack.unpackb(self.snapshot(), strict_map_key=False)
        ((_, _, _, state),) = data["metrics"]
        return [sorted(minutes) for _, minutes, _, _ in state["levels"][0]]

    def restore(self, data: bytes, kinds: Any = None) -> None:
        state = msgpack.unpackb(data, strict_map_key=False)
        specs = {"m": self.spec}
        self.aggregates = PartitionAggregates.from_snapshot(
            state, self.fetch_events, specs, kinds or self.kinds
        )


def load(store: Store) -> None:
    """Events in hours 0, 1 and 3 of the month, both regions, a correction."""
    store.ingest((5, T0 + 10 * MINUTE + 7, ADD, "eu"), (3, T0 + 10 * MINUTE + 9, ADD, "us"))
    store.ingest((2, T0 + 59 * MINUTE, ADD, "us"), (9, T0 + HOUR + 30 * MINUTE, ADD, "eu"))
    store.ingest((4, T0 + 3 * HOUR + 5 * MINUTE, ADD, "eu"), (1, T0 + 30 * MINUTE, REMOVE, "us"))


# Ranges whose edges fall inside hours 0 and 1 (folded below) and hour 3 (not), and one inside a
# single folded hour.
RANGES = [
    (T0 + 10 * MINUTE + 8, T0 + 3 * HOUR + 5 * MINUTE + 1),
    (T0 + 5 * MINUTE, T0 + HOUR + 31 * MINUTE),
    (T0 + 10 * MINUTE, T0 + 59 * MINUTE + 1),
    (T0 + 30 * MINUTE, T0 + 4 * HOUR),
    MONTH,
]


def answers(store: Store) -> list[Any]:
    return [store.query(a, b, f) for a, b in RANGES for f in (None, {"region": "us"})]


@pytest.mark.parametrize("engine", ENGINES)
def test_a_fold_drops_the_minutes_of_every_slot_below_its_hour_and_changes_no_answer(engine: str) -> None:
    store = Store(engine)
    load(store)
    before = answers(store)
    minute0 = T0 // MINUTE
    assert store.minute_cells() == [
        [minute0 + m for m in (10, 30, 59, 90, 185)],
        [minute0 + 10, minute0 + 90, minute0 + 185],  # eu
        [minute0 + m for m in (10, 30, 59)],  # us
    ]
    # Hours 0 and 1 ended at or before the cutoff; hour 2 did not.
    assert store.aggregates.fold_minutes_before(T0 + 2 * HOUR + 59 * MINUTE) == 9
    assert store.aggregates.fold_minutes_before(T0 + 2 * HOUR) == 0  # not below what is folded
    assert store.minute_cells() == [[minute0 + 185], [minute0 + 185], []]
    store.fetches.clear()
    assert answers(store) == before
    assert None in store.fetches  # the folded edges came from the event index's records


@pytest.mark.parametrize("engine", ENGINES)
def test_a_range_reaching_past_the_data_reads_folded_hours_from_their_cells(engine: str) -> None:
    # The store clips a range to the minutes it has data in; clipped to a minute inside a folded
    # hour, that edge would read every record of the account's hour from the log on every query
    # (the soak found its queries, of a month either side of now, doing just that). Inside folded
    # hours it clips to whole hours, which their cells answer.
    store = Store(engine)
    load(store)
    wide = [(T0 - 7 * HOUR - 3, T0 + 9 * HOUR + 11), (T0 - HOUR, T0 + 4 * HOUR + 1), MONTH]
    before = [store.query(a, b, f) for a, b in wide for f in (None, {"region": "us"})]
    store.aggregates.fold_minutes_before(T0 + 5 * HOUR)  # every hour with data is folded
    store.fetches.clear()
    assert [store.query(a, b, f) for a, b in wide for f in (None, {"region": "us"})] == before
    assert store.fetches == []


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("agg", [AggType.COUNT, AggType.SUM, AggType.MAX, AggType.LATEST])
def test_a_late_event_into_a_folded_hour_counts_and_makes_no_minute_cell(engine: str, agg: AggType) -> None:
    folded, unfolded = Store(engine, agg), Store(engine, agg)
    for store in (folded, unfolded):
        load(store)
    folded.aggregates.fold_minutes_before(T0 + 3 * HOUR)
    late = (7, T0 + 10 * MINUTE + 8, ADD, "us")
    for store in (folded, unfolded):
        store.ingest(late)
    assert folded.minute_cells() == [[T0 // MINUTE + 185]] * 2 + [[]]
    assert answers(folded) == answers(unfolded)
    assert folded.query(T0 + 10 * MINUTE + 8, T0 + 10 * MINUTE + 9)[0].count == 1


@pytest.mark.parametrize("engine", ENGINES)
def test_the_folded_minute_survives_a_snapshot_and_both_engines_write_the_same_bytes(engine: str) -> None:
    stores = {name: Store(name) for name in ENGINES}
    for store in stores.values():
        load(store)
        store.aggregates.fold_minutes_before(T0 + 2 * HOUR)
    data = stores[engine].snapshot()
    assert {s.snapshot() for s in stores.values()} == {data}
    for other in ENGINES:  # read back by each engine
        restored = Store(engine)
        restored.records = stores[engine].records
        restored.restore(data, partition_engine(other).stores)
        assert restored.snapshot() == data
        assert answers(restored) == answers(stores[engine])
        # Still folded after the restore: a late event makes no minute cell there.
        restored.ingest((1, T0 + 20 * MINUTE, ADD, "eu"))
        assert restored.minute_cells()[0] == [T0 // MINUTE + 185]


@pytest.mark.parametrize("engine", ENGINES)
def test_a_version_1_snapshot_is_read_as_nothing_folded(engine: str) -> None:
    store = Store(engine)
    load(store)
    data = msgpack.unpackb(store.snapshot(), strict_map_key=False)
    assert data["v"] == 2
    data["v"] = 1
    for _, _, _, state in data["metrics"]:
        del state["folded"]
    restored = Store(engine)
    restored.records = store.records
    restored.restore(msgpack.packb(data))
    assert restored.minute_cells() == store.minute_cells()
    assert answers(restored) == answers(store)
    assert restored.aggregates.fold_minutes_before(T0 + 2 * HOUR) == 9


@pytest.mark.parametrize("engine", ENGINES)
def test_no_fold_while_a_snapshot_is_packed_the_next_call_folds(engine: str) -> None:
    store = Store(engine)
    load(store)
    captured = store.aggregates.to_snapshot()
    assert store.aggregates.fold_minutes_before(T0 + 2 * HOUR) == 0
    unfolded = pack(captured)
    store.aggregates.release_snapshot()
    assert store.aggregates.fold_minutes_before(T0 + 2 * HOUR) == 9
    assert unfolded != store.snapshot()


@pytest.mark.parametrize("engine", ENGINES)
def test_count_unique_has_nothing_to_fold(engine: str) -> None:
    store = Store(engine, AggType.COUNT_UNIQUE)
    load(store)
    before = answers(store)
    assert store.aggregates.fold_minutes_before(T0 + 5 * HOUR) == 0
    assert answers(store) == before


@pytest.mark.parametrize("engine", ENGINES)
def test_a_range_of_minutes_across_the_folded_hour_s_end_reads_each_side_its_way(engine: str) -> None:
    folded, unfolded = Store(engine), Store(engine)
    for store in (folded, unfolded):
        store.ingest((5, T0 + 110 * MINUTE, ADD, "eu"), (3, T0 + 130 * MINUTE + 1, ADD, "us"))
        store.ingest((2, T0 + 100 * MINUTE, ADD, "us"), (4, T0 + 159 * MINUTE + 59 * NS, ADD, "eu"))
    folded.aggregates.fold_minutes_before(T0 + 2 * HOUR + 30 * MINUTE)  # hour 1 folds, hour 2 not
    # Minutes 101-159: no whole hour inside, one run of minute buckets that the fold cuts in two.
    start, end = T0 + 100 * MINUTE + 1, T0 + 160 * MINUTE
    folded.fetches.clear()
    assert folded.query(start, end) == unfolded.query(start, end)
    assert folded.query(start, end)[0].sum == 12
    assert None in folded.fetches
