"""The lists of record positions that grow with every stored event, on both engines, against a model:
the minute cells' (series stores) and the event index's (account and hour).

The native engine keeps them in chained 64-byte chunks of 15 positions, a lone position in the
owner's word, and a wide list once one passes 32 bits (``native/src/position_chains.rs``); the
Python engine in arrays. Random programs append many records to few lists (so chains cross chunk
boundaries and interleave), jump past 4 GiB, drop lists (folded minutes, aged hours: their chunks
are reused by later chains) and reload each engine's structure from the other's snapshot. After
every step both list exactly the model's positions: each record once, ascending.
"""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster_client.types import AggType, EventRow, Metric, PeriodType
from node.aggregation import AppliedRow, MetricSpec
from node.aggregation.snapshot_data import pack
from node.event_index import HOUR_NS
from node.partition_engine import partition_engine
from tests.engines import ENGINES

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif("native" not in ENGINES, reason="needs the extension"),
]

NS = 1_000_000_000
MINUTE = 60 * NS
HOUR = 60 * MINUTE
T0 = 1772323200 * NS  # 2026-03-01T00:00:00Z
ACCOUNTS = (1, 2, 3)
METRIC_SPEC = MetricSpec.compile(Metric("m", agg_type=AggType.SUM, period_type=PeriodType.CALENDAR), 1)

# A record: its events as (account, minute index in [0, 180)), stored at the next position.
records = st.lists(st.tuples(st.sampled_from(ACCOUNTS), st.integers(0, 179)), min_size=1, max_size=4)
steps = st.lists(
    st.one_of(
        st.tuples(st.just("record"), records, st.sampled_from([1, 1, 1, 7, 1 << 32])),
        st.tuples(st.just("burst"), st.sampled_from(ACCOUNTS), st.integers(0, 179), st.integers(2, 40)),
        st.tuples(st.just("fold"), st.integers(1, 3)),
        st.tuples(st.just("reload")),
    ),
    max_size=30,
)


def stores() -> dict[str, Any]:
    return {
        engine: partition_engine(engine).stores.new_series(METRIC_SPEC) for engine in ("python", "native")
    }


def reloaded(store: Any, into: str) -> Any:
    data = store.to_snapshot()
    try:
        packed = pack(data)
    finally:
        store.release_snapshot()
    return partition_engine(into).stores.load_series(
        METRIC_SPEC, msgpack.unpackb(packed, strict_map_key=False)
    )


@settings(max_examples=150, deadline=None)
@given(program=steps)
def test_minute_positions_match_the_model_through_appends_folds_and_reloads(program: list[Any]) -> None:
    by_engine = stores()
    model: dict[tuple[int, int], list[int]] = {}
    folded_below = 0  # minute index: cells below it are gone
    position, offset = 0, 0

    def store(events: list[tuple[int, int]], at: int) -> None:
        nonlocal offset
        rows: list[AppliedRow] = []
        for account, minute in events:
            offset += 1
            rows.append((account, 1, T0 + minute * MINUTE + offset, None, 1, offset))
            if minute >= folded_below:
                cell = model.setdefault((account, minute), [])
                if not cell or cell[-1] != at:
                    cell.append(at)
        for s in by_engine.values():
            s.apply(rows, at)

    for step in program:
        if step[0] == "record":
            position += step[2]
            store(step[1], position)
        elif step[0] == "burst":  # many records into one cell: chains past a chunk
            for _ in range(step[3]):
                position += 1
                store([(step[1], step[2])], position)
        elif step[0] == "fold":
            folded_below = max(folded_below, step[1] * 60)
            for s in by_engine.values():
                s.fold_minutes(T0 // MINUTE + folded_below)
            model = {key: v for key, v in model.items() if key[1] >= folded_below}
        else:  # each engine's store rebuilt from the other's snapshot
            python, native = by_engine["python"], by_engine["native"]
            by_engine = {"python": reloaded(native, "python"), "native": reloaded(python, "native")}
        for account in ACCOUNTS:
            for minute in range(180):
                expected = model.get((account, minute), [])
                for engine, s in by_engine.items():
                    got = list(s.minute_positions(account, T0 // MINUTE + minute))
                    assert got == expected, (engine, account, minute)


index_steps = st.lists(
    st.one_of(
        st.tuples(
            st.just("record"),
            st.lists(st.tuples(st.sampled_from(ACCOUNTS), st.integers(0, 5)), min_size=1, max_size=4),
            st.sampled_from([1, 1, 1, 7, 1 << 32]),
        ),
        st.tuples(st.just("burst"), st.sampled_from(ACCOUNTS), st.integers(0, 5), st.integers(2, 40)),
        st.tuples(st.just("age"), st.integers(1, 6)),
        st.tuples(st.just("reload")),
    ),
    max_size=30,
)


def reloaded_index(index: Any, below: int, into: str) -> Any:
    data = msgpack.unpackb(pack(index.to_snapshot(below)), strict_map_key=False)
    return partition_engine(into).load_index(data)


def add_record(index: Any, position: int, events: list[tuple[int, int]]) -> None:
    rows: list[EventRow] = [(account, "m", 1, hour * HOUR_NS + 1, None, 1, "") for account, hour in events]
    if hasattr(index, "add_record"):
        index.add_record(position, rows)
    else:
        index.add(position, dict.fromkeys((account, hour) for account, hour in events))


@settings(max_examples=150, deadline=None)
@given(program=index_steps)
def test_event_index_positions_match_the_model_through_appends_aging_and_reloads(program: list[Any]) -> None:
    by_engine = {engine: partition_engine(engine).new_index() for engine in ("python", "native")}
    model: dict[tuple[int, int], list[int]] = {}
    position = 0

    def store(events: list[tuple[int, int]], at: int) -> None:
        for account, hour in events:
            cell = model.setdefault((account, hour), [])
            if not cell or cell[-1] != at:
                cell.append(at)
        for index in by_engine.values():
            add_record(index, at, events)

    for step in program:
        if step[0] == "record":
            position += step[2]
            store(step[1], position)
        elif step[0] == "burst":
            for _ in range(step[3]):
                position += 1
                store([(step[1], step[2])], position)
        elif step[0] == "age":  # hours before step[1] handed to a run, then dropped from memory
            columns = {e: index.aged(step[1], position + 1) for e, index in by_engine.items()}
            for name in ("accounts", "hours", "ends", "positions"):
                assert getattr(columns["python"], name).tolist() == getattr(columns["native"], name).tolist()
            aged = sorted(key for key in model if key[1] < step[1])
            assert columns["python"].positions.tolist() == [p for key in aged for p in model[key]]
            for index in by_engine.values():
                index.drop_aged(step[1], position + 1)
            model = {key: v for key, v in model.items() if key[1] >= step[1]}
        else:
            by_engine = {
                "python": reloaded_index(by_engine["native"], position + 1, "python"),
                "native": reloaded_index(by_engine["python"], position + 1, "native"),
            }
        for account in ACCOUNTS:
            expected = [(hour, model[(a, hour)]) for a, hour in sorted(model) if a == account]
            for engine, index in by_engine.items():
                assert list(index.hours(account, 0, 6 * HOUR_NS)) == expected, (engine, account)
