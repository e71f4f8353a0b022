"""The record positions of minute cells, on both engines' series stores, against a model.

The native store keeps them in chained 64-byte chunks of 15 positions, a lone position in the
cell's word, and a wide list once one passes 32 bits (``native/src/minute_positions.rs``); the
Python store in arrays. Random programs append many records to few cells (so chains cross chunk
boundaries and interleave), jump past 4 GiB, fold whole hours away (freeing chunks that later
chains reuse) and reload each store from the other's snapshot. After every step both stores list,
for every (account, minute), exactly the model's positions: each record once, ascending.
"""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster_client.types import AggType, Metric, PeriodType
from node.aggregation import AppliedRow, MetricSpec
from node.aggregation.snapshot_data import pack
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
SPEC = MetricSpec.compile(Metric("m", agg_type=AggType.SUM, period_type=PeriodType.CALENDAR), 1)

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
    return {engine: partition_engine(engine).stores.new_series(SPEC) for engine in ("python", "native")}


def reloaded(store: Any, into: str) -> Any:
    data = store.to_snapshot()
    try:
        packed = pack(data)
    finally:
        store.release_snapshot()
    return partition_engine(into).stores.load_series(SPEC, msgpack.unpackb(packed, strict_map_key=False))


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
