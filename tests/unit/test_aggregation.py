"""Exact-value tests of the aggregation engine (node.aggregation): docs/semantics.md case by case."""

from __future__ import annotations

import dataclasses
import gc
from collections.abc import Sequence
from typing import Any

import msgpack
import pytest

import node.aggregation as aggregation
from cluster_client.errors import OutOfRangeError
from cluster_client.types import (
    AggType,
    AggValue,
    AlertThreshold,
    DimensionFilter,
    GroupValue,
    Metric,
    Period,
    PeriodType,
)
from node.aggregation import AlertRow, AppliedRow, MetricSpec, PartitionAggregates
from node.aggregation.snapshot_data import pack

NS = 1_000_000_000
MINUTE = 60 * NS
HOUR = 60 * MINUTE
DAY = 24 * HOUR
T0 = 1772323200 * NS  # 2026-03-01T00:00:00Z, a period start for CALENDAR/UTC and for FIXED 60 s
ADD, REMOVE = 1, 2
ACCOUNT = 42


class Engine:
    """PartitionAggregates over an in-memory log; offsets are assigned in apply order."""

    def __init__(self, metric: Metric, generation: int = 1) -> None:
        self.metric = metric
        self.spec = MetricSpec.compile(metric, generation)
        self.records: dict[int, list[AppliedRow]] = {}
        self.fetches: list[list[int]] = []
        self.aggregates = PartitionAggregates(self.fetch_events)
        self.offset = 0
        self.alerts: list[AlertRow] = []

    def fetch_events(
        self,
        refs: list[int],
        account_id: int,
        metric_code: str,
        windows: list[tuple[int, int]],
        whole_minutes: list[list[int]] | None = None,
    ) -> list[AppliedRow]:
        """Every event as a row (``whole_minutes`` is left empty, as a reader may)."""
        self.fetches.append(list(refs))
        return [
            r
            for ref in refs
            for r in self.records[ref]
            if r[0] == account_id and any(lo <= r[2] < hi for lo, hi in windows)
        ]

    def ingest(self, *events: tuple[Any, ...]) -> list[AlertRow]:
        """One record of events ``(value, time[, op[, props]])`` for ACCOUNT; returns its alerts."""
        rows: list[AppliedRow] = []
        for event in events:
            value, t = event[0], event[1]
            op = event[2] if len(event) > 2 else ADD
            props = event[3] if len(event) > 3 else None
            self.offset += 1
            rows.append((ACCOUNT, value, t, props, op, self.offset))
        return self.apply_rows(rows)

    def apply_rows(self, rows: Sequence[AppliedRow]) -> list[AlertRow]:
        ref = 100 + 10 * len(self.records)
        self.records[ref] = list(rows)
        fired = self.aggregates.apply(self.spec, rows, ref)
        self.alerts.extend(fired)
        return fired

    def query(
        self, start: int, end: int, filters: dict[str, str] | None = None, group_by: list[str] | None = None
    ) -> AggValue:
        return self.aggregates.query(self.spec, ACCOUNT, start, end, filters or {}, group_by or [])[0]

    def groups(
        self, start: int, end: int, group_by: list[str], filters: dict[str, str] | None = None
    ) -> list[GroupValue]:
        return self.aggregates.query(self.spec, ACCOUNT, start, end, filters or {}, group_by)[1]

    def realtime(self, now: int) -> AggValue:
        return self.aggregates.realtime(self.spec, ACCOUNT, now)[0]

    def restored(self) -> PartitionAggregates:
        data = msgpack.unpackb(pack(self.aggregates.to_snapshot()), strict_map_key=False)
        return PartitionAggregates.from_snapshot(data, self.fetch_events, {self.metric.code: self.spec})


def metric(agg: AggType, **kw: object) -> Metric:
    return Metric("m", agg_type=agg, **kw)  # type: ignore[arg-type]


def month_metric(agg: AggType, **kw: object) -> Metric:
    return metric(agg, period_type=PeriodType.CALENDAR, **kw)


MARCH = (T0, 1775001600 * NS)  # [2026-03-01, 2026-04-01) UTC


def stats(v: AggValue) -> tuple[int, ...]:
    return dataclasses.astuple(v)


# ------------------------------------------------------------------------------------ the API


def test_public_names_are_pinned() -> None:
    assert sorted(aggregation.__all__) == [
        "AlertRow",
        "AppliedRow",
        "FetchEvents",
        "MetricSpec",
        "PartitionAggregates",
    ]


def test_metric_spec_compiles_the_metric() -> None:
    m = Metric(
        "seats",
        agg_type=AggType.COUNT_UNIQUE,
        period_type=PeriodType.WEEK,
        carry_over=True,
        filters=(DimensionFilter("region", ("eu", "us")), DimensionFilter("tier", ("pro",))),
        thresholds=(AlertThreshold("t", 5),),
    )
    spec = MetricSpec.compile(m, 17)
    assert (spec.code, spec.agg_type, spec.generation, spec.carry_over) == (
        "seats",
        AggType.COUNT_UNIQUE,
        17,
        True,
    )
    assert spec.dims == ("region", "tier")
    assert spec.allowed == {"region": frozenset({"eu", "us"}), "tier": frozenset({"pro"})}
    assert spec.thresholds == (AlertThreshold("t", 5),)
    assert spec.periods.period_of(T0 + 1) == (T0 - 6 * DAY, T0 + DAY)  # Sunday 03-01: week of Mon 02-23


# ------------------------------------------------------------------------------ per type (§2)


def test_count_counts_adds_minus_corrections_and_keeps_sum_zero() -> None:
    e = Engine(month_metric(AggType.COUNT))
    e.ingest((5, T0 + 10), (7, T0 + 20), (3, T0 + 30), (7, T0 + 40, REMOVE))
    # value=count=2, sum 0 (not named by COUNT), max/last over ADDs only
    assert stats(e.query(*MARCH)) == (2, 2, 0, 7, 3, T0 + 30, 0, 0)


def test_sum_with_corrections_and_max_ignoring_removes() -> None:
    e = Engine(month_metric(AggType.SUM))
    e.ingest((10, T0 + 1), (4, T0 + 2), (50, T0 + 3, REMOVE))
    v = e.query(*MARCH)
    assert stats(v) == (-36, 1, -36, 10, 4, T0 + 2, 0, 0)


def test_max_keeps_the_largest_add() -> None:
    e = Engine(month_metric(AggType.MAX))
    e.ingest((3, T0 + 5), (9, T0 + 1), (4, T0 + 9))
    assert stats(e.query(*MARCH)) == (9, 3, 0, 9, 4, T0 + 9, 0, 0)


def test_latest_takes_the_greatest_time_not_the_last_arrival() -> None:
    e = Engine(month_metric(AggType.LATEST))
    e.ingest((1, T0 + 100))
    e.ingest((2, T0 + 50))  # late: older event time, does not win
    assert e.query(*MARCH).value == 1
    assert e.query(*MARCH).last_event_time_unix_nano == T0 + 100


def test_latest_tie_on_time_goes_to_the_higher_offset() -> None:
    e = Engine(month_metric(AggType.LATEST))
    e.ingest((1, T0 + 100), (2, T0 + 100))
    e.ingest((3, T0 + 100))
    assert e.query(*MARCH).value == 3
    # ...also when the tie is decided at a range edge from raw events, and between buckets' cells
    assert e.query(T0 + 100, T0 + 101).value == 3
    assert e.query(T0 + 99, T0 + 2 * DAY + 7).value == 3


def test_latest_tie_across_combinations_goes_to_the_higher_offset() -> None:
    e = Engine(month_metric(AggType.LATEST, filters=(DimensionFilter("r", ("a", "b")),)))
    e.ingest((1, T0 + 100, ADD, {"r": "b"}), (2, T0 + 100, ADD, {"r": "a"}))
    assert e.query(*MARCH, filters={"r": "a"}).value == 2
    assert e.query(*MARCH).value == 2
    e.ingest((3, T0 + 100, ADD, {"r": "b"}))
    assert e.query(T0, T0 + HOUR).value == 3
    assert [g.value.value for g in e.groups(T0, T0 + HOUR, ["r"])] == [2, 3]


def test_latest_tie_inside_one_record_with_interleaved_combinations() -> None:
    e = Engine(month_metric(AggType.LATEST, filters=(DimensionFilter("r", ("a", "b")),)))
    e.ingest((1, T0 + 100, ADD, {"r": "b"}), (2, T0 + 100, ADD, {"r": "a"}), (3, T0 + 100, ADD, {"r": "b"}))
    for start, end in (MARCH, (T0, T0 + MINUTE), (T0 + 100, T0 + 101), (T0, T0 + DAY)):
        assert e.query(start, end).value == 3
    assert e.realtime(T0).value == 3


def test_count_unique_set_semantics_and_count_equals_unique_count() -> None:
    e = Engine(month_metric(AggType.COUNT_UNIQUE))
    e.ingest((7, T0 + 1), (8, T0 + 2), (7, T0 + 3), (9, T0 + 4, REMOVE), (8, T0 + 5, REMOVE))
    v = e.query(*MARCH)
    # {7}; REMOVE of absent 9 is a no-op; max/last over ADDs (members 7, 8, 7)
    assert stats(v) == (1, 1, 0, 8, 7, T0 + 3, 1, 0)
    r, period = e.aggregates.realtime(e.spec, ACCOUNT, T0 + 10)
    assert (r.value, r.count, r.unique_count) == (1, 1, 1)
    assert period == Period(*MARCH)


def test_count_unique_late_add_before_a_remove_stays_removed() -> None:
    e = Engine(month_metric(AggType.COUNT_UNIQUE))
    e.ingest((7, T0 + 50, REMOVE))
    e.ingest((7, T0 + 10))  # arrives later, happened earlier: the REMOVE at t=50 is the last op
    assert e.query(*MARCH).value == 0
    assert e.realtime(T0).value == 0
    assert e.query(T0, T0 + 20).value == 1


def test_count_unique_starts_empty_each_period_without_carry_over() -> None:
    e = Engine(metric(AggType.COUNT_UNIQUE, fixed_period_seconds=60))
    e.ingest((1, T0 + 1), (2, T0 + 2), (1, T0 + MINUTE + 1))
    assert e.realtime(T0).value == 2
    assert e.realtime(T0 + MINUTE).value == 1
    assert e.realtime(T0 + 2 * MINUTE).value == 0
    assert e.query(T0, T0 + 2 * MINUTE).value == 2  # {1, 2}


def test_count_unique_carry_over_counts_every_event_before_the_end() -> None:
    e = Engine(metric(AggType.COUNT_UNIQUE, fixed_period_seconds=60, carry_over=True))
    e.ingest((1, T0 + 1), (2, T0 + 2), (2, T0 + MINUTE + 5, REMOVE), (3, T0 + 3 * MINUTE))
    assert e.realtime(T0).value == 2
    assert e.realtime(T0 + MINUTE).value == 1  # {1}
    assert e.realtime(T0 + 2 * MINUTE).value == 1  # no events in it: carried over
    assert e.realtime(T0 + 3 * MINUTE).value == 2
    assert e.realtime(T0 + 9 * MINUTE).value == 2
    assert e.realtime(T0 - MINUTE).value == 0
    # the range start is ignored for membership: [2 min, 3 min) still holds member 1
    assert e.query(T0 + 2 * MINUTE, T0 + 3 * MINUTE).value == 1
    assert e.query(T0 + 2 * MINUTE, T0 + 3 * MINUTE).max == 2  # over ADDs before the end
    # a late ADD of 2 before its REMOVE changes nothing after the REMOVE
    e.ingest((2, T0 + MINUTE + 1))
    assert e.realtime(T0 + MINUTE).value == 1
    # a late REMOVE of 1 in the first period updates every later period until 1's next op
    e.ingest((1, T0 + 30 * NS, REMOVE))
    assert [e.realtime(T0 + k * MINUTE).value for k in range(5)] == [1, 0, 0, 1, 1]


def test_count_unique_carry_over_late_op_before_an_op_exactly_at_a_period_end() -> None:
    e = Engine(metric(AggType.COUNT_UNIQUE, fixed_period_seconds=60, carry_over=True))
    e.ingest((5, T0 + MINUTE, REMOVE), (6, T0 + 2 * MINUTE))  # 5's REMOVE sits exactly on a boundary
    e.ingest((5, T0 + 10))  # late ADD: 5 is in the set at the end of [T0, T0+1min), not after
    assert [e.realtime(T0 + k * MINUTE).value for k in range(3)] == [1, 0, 1]


# ------------------------------------------------------------------------------- ranges (§4)


def test_range_edges_are_exact_to_the_nanosecond() -> None:
    e = Engine(month_metric(AggType.SUM))
    start, end = T0 + 5 * HOUR + 17 * NS + 3, T0 + 9 * DAY + 3 * HOUR + 59 * NS + 11
    e.ingest((1, start - 1), (10, start), (100, end - 1), (1000, end))
    assert e.query(start, end).sum == 110
    assert e.query(start + 1, end).sum == 100
    assert e.query(start, end - 1).sum == 10
    assert e.query(start - 1, end + 1).sum == 1111
    assert e.query(start, start + 1).sum == 10  # a range inside one minute
    assert e.query(end - 1, end).sum == 100


def test_edges_on_whole_minutes_read_no_raw_events() -> None:
    e = Engine(month_metric(AggType.COUNT))
    e.ingest(*[(1, T0 + k * 7 * MINUTE + 11) for k in range(500)])
    e.fetches.clear()
    assert e.query(T0 + HOUR, T0 + 2 * DAY).count == sum(
        1 for k in range(500) if T0 + HOUR <= T0 + k * 7 * MINUTE + 11 < T0 + 2 * DAY
    )
    assert e.fetches == []
    start, end = T0 + 63 * MINUTE + 5, T0 + 2877 * MINUTE + 20  # partial minutes holding events
    assert e.query(start, end).count == sum(1 for k in range(500) if start <= T0 + k * 7 * MINUTE + 11 < end)
    assert e.fetches == [[100]]  # one read, of the one record that fed the two edge minutes


def test_long_range_over_whole_periods_matches_a_brute_force_sum() -> None:
    e = Engine(metric(AggType.SUM, period_type=PeriodType.WEEK, time_zone="America/New_York"))
    events = [(k % 13, T0 - 20 * DAY + k * 97 * MINUTE + k) for k in range(900)]
    for i in range(0, len(events), 50):
        e.ingest(*events[i : i + 50])
    for start, end in [
        (T0 - 19 * DAY + 3, T0 + 35 * DAY - 1),
        (T0 - 40 * DAY, T0 + 90 * DAY),
        (T0 + 1, T0 + 2),
    ]:
        v = e.query(start, end)
        assert v.sum == sum(val for val, t in events if start <= t < end)
        assert v.count == sum(1 for _, t in events if start <= t < end)


@pytest.mark.parametrize("period_type", [PeriodType.DAY, PeriodType.CALENDAR])
def test_an_all_time_range_answers_from_the_data_extent(period_type: PeriodType) -> None:
    e = Engine(metric(AggType.SUM, period_type=period_type))
    e.ingest((5, T0 - 400 * DAY + 3), (7, T0 + 1), (11, T0 + 90 * DAY - 1))
    assert e.query(0, 2**64 - 1).sum == 23
    assert e.query(1, T0 + 1).sum == 5
    assert e.query(T0 + 1, 2**63).sum == 18
    assert e.query(T0 + 90 * DAY, 2**63).sum == 0


def test_late_and_out_of_order_arrival_give_identical_answers() -> None:
    events = [(k % 7, T0 + (k * 7919 % 1000) * 13 * MINUTE + k, ADD if k % 5 else REMOVE) for k in range(300)]
    in_order = Engine(month_metric(AggType.SUM))
    in_order.ingest(*sorted(events, key=lambda e: e[1]))
    shuffled = Engine(month_metric(AggType.SUM))
    for i in range(0, 300, 17):
        shuffled.ingest(*events[i : i + 17])
    for start, end in [MARCH, (T0 + 3, T0 + 5 * DAY + 1), (T0 + HOUR - 1, T0 + HOUR + 1)]:
        a, b = in_order.query(start, end), shuffled.query(start, end)
        # last_value differs only where ties would be broken by offset; here times are unique
        assert stats(a) == stats(b)


def test_filters_on_one_and_both_dimensions_and_group_by() -> None:
    dims = (DimensionFilter("region", ("eu", "us")), DimensionFilter("tier", ("free", "pro")))
    e = Engine(month_metric(AggType.SUM, filters=dims))
    e.ingest(
        (1, T0 + 1, ADD, {"region": "eu", "tier": "free"}),
        (2, T0 + 2, ADD, {"region": "eu", "tier": "pro"}),
        (4, T0 + 3, ADD, {"region": "us", "tier": "pro"}),
        (8, T0 + 4, ADD, {"region": "us"}),  # tier missing: the "" combination
        (16, T0 + 5, ADD, None),
        (32, T0 + 6, ADD, {"other": "x"}),  # undeclared keys are not aggregated on
    )
    assert e.query(*MARCH).sum == 63
    assert e.query(*MARCH, filters={"region": "eu"}).sum == 3
    assert e.query(*MARCH, filters={"tier": "pro"}).sum == 6
    assert e.query(*MARCH, filters={"region": "us", "tier": "pro"}).sum == 4
    assert e.query(*MARCH, filters={"region": "eu", "tier": "free"}).sum == 1
    groups = e.groups(*MARCH, ["region"])
    assert [(g.key, g.value.sum) for g in groups] == [
        ({"region": ""}, 48),
        ({"region": "eu"}, 3),
        ({"region": "us"}, 12),
    ]
    groups = e.groups(*MARCH, ["tier", "region"], filters={"region": "us"})
    assert [(g.key, g.value.sum) for g in groups] == [
        ({"tier": "", "region": "us"}, 8),
        ({"tier": "pro", "region": "us"}, 4),
    ]
    # main value with group_by and no filter is the unfiltered total
    main, _ = e.aggregates.query(e.spec, ACCOUNT, *MARCH, {}, ["tier"])
    assert main.sum == 63


def test_group_by_lists_only_combinations_with_events_in_the_range() -> None:
    dims = (DimensionFilter("region", ("eu", "us")),)
    e = Engine(month_metric(AggType.COUNT, filters=dims))
    e.ingest((1, T0 + 1, ADD, {"region": "eu"}), (1, T0 + DAY + 5, ADD, {"region": "us"}))
    e.ingest((1, T0 + DAY + 7, REMOVE, {"region": "us"}))
    assert [g.key for g in e.groups(T0, T0 + DAY, ["region"])] == [{"region": "eu"}]
    # a combination whose events cancel out still had events: it is a group, with count 0
    assert [(g.key, g.value.count) for g in e.groups(T0 + DAY, T0 + 2 * DAY + 3, ["region"])] == [
        ({"region": "us"}, 0)
    ]
    assert e.groups(T0 + 3 * DAY, T0 + 4 * DAY, ["region"]) == []


def test_count_unique_filters_and_group_by() -> None:
    dims = (DimensionFilter("team", ("a", "b")),)
    e = Engine(month_metric(AggType.COUNT_UNIQUE, filters=dims))
    e.ingest(
        (1, T0 + 1, ADD, {"team": "a"}), (2, T0 + 2, ADD, {"team": "a"}), (1, T0 + 3, ADD, {"team": "b"})
    )
    e.ingest((2, T0 + 4, REMOVE, {"team": "b"}))  # removes 2 from the whole set, but not from team a's
    assert e.query(*MARCH).value == 1
    assert e.query(*MARCH, filters={"team": "a"}).value == 2
    assert e.query(*MARCH, filters={"team": "b"}).value == 1
    assert [(g.key["team"], g.value.unique_count) for g in e.groups(*MARCH, ["team"])] == [("a", 2), ("b", 1)]


# ---------------------------------------------------------------------------- thresholds (§7)


def test_one_shot_fires_once_rearms_after_a_correction_and_in_a_new_period() -> None:
    e = Engine(metric(AggType.SUM, fixed_period_seconds=60, thresholds=(AlertThreshold("cap", 10),)))
    assert e.ingest((6, T0 + 1)) == []
    assert e.ingest((5, T0 + 2)) == [(ACCOUNT, "m", "cap", 10, 1, 11, T0, T0 + 2)]
    assert e.ingest((5, T0 + 3)) == []  # already fired in this period
    assert e.realtime(T0).alert_flags == 1
    assert e.ingest((9, T0 + 4, REMOVE)) == []  # 7 < 10: the bit clears, the threshold re-arms
    assert e.realtime(T0).alert_flags == 0
    assert e.ingest((3, T0 + 5)) == [(ACCOUNT, "m", "cap", 10, 1, 10, T0, T0 + 5)]  # reaching counts
    assert e.ingest((10, T0 + MINUTE)) == [(ACCOUNT, "m", "cap", 10, 1, 10, T0 + MINUTE, T0 + MINUTE)]


def test_recurring_fires_per_new_multiple_once_per_event_even_when_skipping() -> None:
    e = Engine(metric(AggType.SUM, fixed_period_seconds=60, thresholds=(AlertThreshold("every", 10, True),)))
    assert e.ingest((35, T0 + 1)) == [(ACCOUNT, "m", "every", 10, 3, 35, T0, T0 + 1)]  # skips 1 and 2
    assert e.ingest((4, T0 + 2)) == []  # 39: still multiple 3
    assert e.ingest((1, T0 + 3)) == [(ACCOUNT, "m", "every", 10, 4, 40, T0, T0 + 3)]
    assert e.ingest((25, T0 + 4, REMOVE)) == []  # 15: multiples already alerted are not repeated
    assert e.realtime(T0).alert_flags == 1  # still >= 10
    assert e.ingest((20, T0 + 5)) == []  # 35 again
    assert e.ingest((15, T0 + 6)) == [(ACCOUNT, "m", "every", 10, 5, 50, T0, T0 + 6)]
    assert e.ingest((45, T0 + 7, REMOVE)) == []  # 5
    assert e.realtime(T0).alert_flags == 0


def test_several_thresholds_fire_in_order_and_set_their_bits() -> None:
    thresholds = (AlertThreshold("low", 2), AlertThreshold("high", 3), AlertThreshold("rec", 2, True))
    e = Engine(month_metric(AggType.COUNT, thresholds=thresholds, filters=(DimensionFilter("r", ("a",)),)))
    e.ingest((0, T0 + 1, ADD, {"r": "a"}))
    fired = e.ingest((0, T0 + 2, ADD, {"r": "a"}), (0, T0 + 3, ADD, {"r": "a"}))
    assert [(a[2], a[4], a[5]) for a in fired] == [("low", 1, 2), ("rec", 1, 2), ("high", 1, 3)]
    assert e.query(*MARCH).alert_flags == 0b111
    assert e.query(*MARCH, filters={}).alert_flags == 0b111
    assert e.query(T0, T0 + DAY).alert_flags == 0  # not exactly a period: no flags
    assert e.query(*MARCH, filters={"r": "a"}).alert_flags == 0  # flags belong to the unfiltered value
    assert e.groups(*MARCH, ["r"])[0].value.alert_flags == 0
    assert e.realtime(T0 + 5 * DAY).alert_flags == 0b111
    assert e.realtime(T0 + 40 * DAY).alert_flags == 0


def test_a_late_event_is_evaluated_against_its_own_period() -> None:
    e = Engine(metric(AggType.COUNT, fixed_period_seconds=60, thresholds=(AlertThreshold("t", 2),)))
    e.ingest((0, T0 + 1), (0, T0 + MINUTE + 1))
    assert e.alerts == []
    fired = e.ingest((0, T0 + 5))  # late, in the first period: its count becomes 2
    assert fired == [(ACCOUNT, "m", "t", 2, 1, 2, T0, T0 + 5)]
    assert e.realtime(T0 + MINUTE).alert_flags == 0


def test_latest_and_count_unique_fall_below_and_rearm() -> None:
    e = Engine(month_metric(AggType.LATEST, thresholds=(AlertThreshold("t", 5),)))
    assert len(e.ingest((7, T0 + 10))) == 1
    assert e.ingest((1, T0 + 20)) == []  # value 1: re-armed
    assert e.ingest((3, T0 + 15)) == []  # late: value stays 1
    assert [a[5] for a in e.ingest((6, T0 + 30))] == [6]
    u = Engine(month_metric(AggType.COUNT_UNIQUE, thresholds=(AlertThreshold("seats", 2),)))
    assert [a[5] for a in u.ingest((1, T0 + 1), (2, T0 + 2), (2, T0 + 3))] == [2]
    assert u.ingest((1, T0 + 4, REMOVE)) == []
    assert [a[5] for a in u.ingest((3, T0 + 5))] == [2]


def test_alerts_follow_arrival_order_not_event_time() -> None:
    e = Engine(month_metric(AggType.SUM, thresholds=(AlertThreshold("t", 10),)))
    fired = e.ingest((10, T0 + 50), (10, T0 + 20))
    assert [(a[5], a[7]) for a in fired] == [(10, T0 + 50)]  # the first to arrive crosses


# ------------------------------------------------------------------------------- int64 (§2)


def test_sum_beyond_int64_is_out_of_range_never_wrapped() -> None:
    big = 2**63 - 1
    e = Engine(month_metric(AggType.SUM, filters=(DimensionFilter("r", ("a",)),)))
    e.ingest((big, T0 + 1, ADD, {"r": "a"}), (1, T0 + 2, ADD, {"r": "a"}))
    for call in (
        lambda: e.query(*MARCH),
        lambda: e.realtime(T0),
        lambda: e.groups(*MARCH, ["r"]),
        lambda: e.query(T0 + 1, T0 + 3),
    ):
        with pytest.raises(OutOfRangeError) as info:
            call()
        assert info.value.violations[0].field == "value"
    assert e.query(T0 + 1, T0 + 2).sum == big  # a range that fits answers
    e.ingest((1, T0 + 3, REMOVE, {"r": "a"}))
    assert e.query(*MARCH).sum == big


def test_negative_sum_beyond_int64_is_out_of_range() -> None:
    e = Engine(month_metric(AggType.SUM))
    e.ingest((2**63 - 1, T0 + 1, REMOVE), (2**63 - 1, T0 + 2, REMOVE))
    with pytest.raises(OutOfRangeError):
        e.query(*MARCH)


def test_huge_sums_survive_a_snapshot() -> None:
    e = Engine(month_metric(AggType.SUM))
    e.ingest(*[(2**63 - 1, T0 + k) for k in range(4)])
    restored = e.restored()
    with pytest.raises(OutOfRangeError):
        restored.query(e.spec, ACCOUNT, *MARCH, {}, [])
    e.ingest(*[(2**63 - 1, T0 + 10 + k, REMOVE) for k in range(3)])
    restored.apply(e.spec, e.records[max(e.records)], max(e.records))
    assert restored.query(e.spec, ACCOUNT, *MARCH, {}, [])[0].sum == 2**63 - 1


def _state_lists(aggregates: PartitionAggregates) -> list[list[int]]:
    """Every list of ints the stores keep (cells, member histories, period rows)."""
    found: list[list[int]] = []
    for store in aggregates._stores.values():
        if isinstance(store, aggregation.series.SeriesStore):
            found += [cell for level in store.levels for cells in level for cell in cells.values()]
        else:
            for acc in store.accounts.values():
                found += [*acc.members.values(), *acc.rows]
    return found


@pytest.mark.parametrize("agg", [AggType.SUM, AggType.COUNT_UNIQUE])
def test_the_state_is_invisible_to_the_cyclic_gc_before_and_after_a_snapshot(agg: AggType) -> None:
    # Millions of tracked cells made middle and full collections pause for 0.1-1 s.
    e = Engine(
        month_metric(
            agg,
            filters=(DimensionFilter("region", ("eu", "us")),),
            thresholds=(AlertThreshold("t", 3, recurring=True),),
        )
    )
    e.ingest(*[(k + 1, T0 + k * MINUTE, ADD, {"region": "eu" if k % 2 else "us"}) for k in range(6)])
    e.ingest((9, T0 + 2 * DAY))
    for aggregates in (e.aggregates, e.restored()):
        lists = _state_lists(aggregates)
        assert len(lists) >= 8
        assert not any(gc.is_tracked(x) for x in lists)


# ------------------------------------------------------------------------- snapshots, lifecycle


@pytest.mark.parametrize("agg", list(AggType))
def test_snapshot_roundtrip_gives_identical_answers_and_future_alerts(agg: AggType) -> None:
    dims = (DimensionFilter("r", ("a", "b")),)
    thresholds = (AlertThreshold("one", 3), AlertThreshold("rec", 2, True))
    carry = agg is AggType.COUNT_UNIQUE
    e = Engine(metric(agg, fixed_period_seconds=120, filters=dims, thresholds=thresholds, carry_over=carry))
    ops = (ADD, REMOVE) if agg in (AggType.COUNT, AggType.SUM, AggType.COUNT_UNIQUE) else (ADD,)
    for i in range(40):
        e.ingest((i % 5, T0 + (i * 37 % 11) * 29 * NS + i, ops[i % 3 % len(ops)], {"r": "ab"[i % 2]}))
    twin = Engine(e.metric)
    twin.records = e.records
    twin.aggregates = e.restored()
    ranges = [(T0 + 3, T0 + 5 * MINUTE + 7), (T0, T0 + 120 * NS), (T0 + 13 * NS, T0 + 14 * NS + 5)]
    for start, end in ranges:
        for filters, group_by in (({}, []), ({"r": "a"}, []), ({}, ["r"])):
            assert e.aggregates.query(
                e.spec, ACCOUNT, start, end, filters, group_by
            ) == twin.aggregates.query(twin.spec, ACCOUNT, start, end, filters, group_by)
    for k in range(10):
        batch = [(ACCOUNT, k + 1, T0 + k * 17 * NS, {"r": "a"}, ADD, 1000 + k)]
        assert e.apply_rows(batch) == twin.apply_rows(batch)
    assert e.realtime(T0) == twin.realtime(T0)


def test_from_snapshot_drops_absent_and_recreated_metrics() -> None:
    e = Engine(month_metric(AggType.COUNT))
    e.ingest((1, T0 + 1))
    data = msgpack.unpackb(pack(e.aggregates.to_snapshot()), strict_map_key=False)
    same = PartitionAggregates.from_snapshot(data, e.fetch_events, {"m": e.spec})
    assert same.query(e.spec, ACCOUNT, *MARCH, {}, [])[0].count == 1
    newer = MetricSpec.compile(e.metric, 2)
    recreated = PartitionAggregates.from_snapshot(data, e.fetch_events, {"m": newer})
    assert recreated.query(newer, ACCOUNT, *MARCH, {}, [])[0].count == 0
    gone = PartitionAggregates.from_snapshot(data, e.fetch_events, {})
    assert gone.query(e.spec, ACCOUNT, *MARCH, {}, [])[0].count == 0


def test_forget_metric_and_a_new_generation_start_empty() -> None:
    e = Engine(month_metric(AggType.COUNT))
    e.ingest((1, T0 + 1))
    newer = MetricSpec.compile(e.metric, 2)
    assert e.aggregates.query(newer, ACCOUNT, *MARCH, {}, [])[0].count == 0  # never the old state
    e.aggregates.apply(newer, [(ACCOUNT, 1, T0 + 2, None, ADD, 99)], 7)
    assert e.aggregates.query(newer, ACCOUNT, *MARCH, {}, [])[0].count == 1
    e.aggregates.forget_metric("m")
    assert e.aggregates.realtime(newer, ACCOUNT, T0)[0].count == 0


def test_accounts_are_isolated() -> None:
    e = Engine(month_metric(AggType.SUM))
    e.apply_rows([(1, 5, T0 + 1, None, ADD, 1), (2, 7, T0 + 1, None, ADD, 2), (1, 1, T0 + 2, None, ADD, 3)])
    assert e.aggregates.query(e.spec, 1, T0 + 1, T0 + 2 * DAY + 1, {}, [])[0].sum == 6
    assert e.aggregates.query(e.spec, 2, T0, T0 + 2, {}, [])[0].sum == 7
    assert e.aggregates.query(e.spec, 3, *MARCH, {}, [])[0] == AggValue()
    assert e.aggregates.realtime(e.spec, 2**64 - 1, T0) == (AggValue(), Period(*MARCH))


def test_minute_cells_keep_every_feeding_record_past_32_bit_positions_and_through_a_snapshot() -> None:
    # A minute cell keeps one feeding record's position as an int, then an array('I') that widens
    # to 64 bits at the first position past 4 GiB; snapshots carry them as the same plain ints.
    e = Engine(month_metric(AggType.SUM))
    minute = T0 + 7 * MINUTE
    refs = [100, 2**32 - 1, 2**32, 2**40]
    for value, ref in enumerate(refs, start=1):
        rows: list[AppliedRow] = [(ACCOUNT, value, minute + value, None, ADD, value)]
        e.records[ref] = rows
        e.aggregates.apply(e.spec, rows, ref)
    lone: list[AppliedRow] = [(ACCOUNT, 1000, minute + MINUTE + 1, None, ADD, 5)]
    e.records[2**41] = lone
    e.aggregates.apply(e.spec, lone, 2**41)  # a cell fed by one record only
    data = e.aggregates.to_snapshot()
    late: list[AppliedRow] = [(ACCOUNT, 10_000, minute + 9, None, ADD, 6)]
    e.records[2**42] = late
    e.aggregates.apply(e.spec, late, 2**42)  # after the capture: not in the snapshot
    packed = msgpack.unpackb(pack(data), strict_map_key=False)
    e.aggregates.release_snapshot()
    e.fetches.clear()
    assert e.query(minute + 2, minute + MINUTE + 2).sum == 2 + 3 + 4 + 10_000 + 1000
    assert e.fetches == [[*refs, 2**42, 2**41]]
    e.aggregates = PartitionAggregates.from_snapshot(packed, e.fetch_events, {e.metric.code: e.spec})
    e.fetches.clear()
    assert e.query(minute + 2, minute + MINUTE + 2).sum == 2 + 3 + 4 + 1000
    assert e.fetches == [[*refs, 2**41]]
    e.aggregates.apply(e.spec, late, 2**42)  # a restored cell still grows
    assert e.query(minute, minute + 10).sum == 1 + 2 + 3 + 4 + 10_000
