"""Random workloads through PartitionAggregates, compared with the reference model, zero tolerance.

Each example builds one metric (any type, carry_over, FIXED periods of 60-600 s or CALENDAR/DAY/WEEK
in UTC or America/New_York, 0-2 dimensions, thresholds), then runs a random program of ingests
(records of a few rows with late and out-of-order times, corrections where the type allows them),
range queries (nanosecond-unaligned, on period and bucket boundaries, filters, group_by), realtime
reads, snapshot/restore (through msgpack) and folds of the minute cells of hours before a random
cutoff (``fold_minutes_before``: later queries read those hours' edges from the log, later events
into them are late events into folded hours). Every answer and the whole alert sequence must equal
the model's; an int64 overflow must raise OutOfRangeError on both sides. Each test runs once per
engine (``tests/engines.py``): the COUNT, SUM, MAX and LATEST cells are the Python store's or the
native one's, and each restore loads the snapshot into the next engine's store, so a snapshot
written by one engine is read by the other and must go on answering like the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cluster_client.errors import OutOfRangeError
from cluster_client.types import AggType, AlertThreshold, DimensionFilter, Metric, PeriodType
from node.aggregation import AlertRow, AppliedRow, MetricSpec, PartitionAggregates
from node.aggregation.snapshot_data import pack
from node.partition_engine import partition_engine
from tests.engines import ENGINES
from tests.reference_model import ReferenceModel, model_period

NS = 1_000_000_000
MINUTE = 60 * NS
HOUR = 60 * MINUTE
DAY = 24 * HOUR
# 2026-03-07 00:00 UTC: New York springs forward on 03-08 and months turn over around here; the fall
# back (2026-11-01) is covered by a second origin.
ORIGINS = (1772841600 * NS, 1793404800 * NS)
DIM_VALUES = {"region": ("eu", "us"), "tier": ("free", "pro", "team")}
ACCOUNTS = (1, 2, 2**64 - 1)


# ------------------------------------------------------------------------------------- harness


class Engine:
    """PartitionAggregates with an in-memory log: record_ref -> rows, offsets assigned in order."""

    def __init__(self, metric: Metric, engine: str) -> None:
        self.metric = metric
        self.spec = MetricSpec.compile(metric, 7)
        self.records: dict[int, list[AppliedRow]] = {}
        # Restores go round the engines, starting with the one under test.
        at = ENGINES.index(engine)
        self.engines = [partition_engine(e).stores for e in ENGINES[at:] + ENGINES[:at]]
        self.aggregates = PartitionAggregates(self.fetch_events, self.engines[0])
        self.next_offset = 1
        self.fetched_refs = 0
        self.fetched_spans = 0

    def fetch_events(
        self,
        refs: list[int] | None,
        account_id: int,
        metric_code: str,
        windows: list[tuple[int, int]],
        whole_minutes: list[list[int]] | None = None,
    ) -> list[AppliedRow]:
        """Every event as a row (``whole_minutes`` is left empty, as a reader may)."""
        assert metric_code == self.metric.code
        if refs is None:  # the event index's records of those hours: here, every record
            self.fetched_spans += len(windows)
            refs = list(self.records)
        assert len(set(refs)) == len(refs)
        self.fetched_refs += len(refs)
        return [
            r
            for ref in refs
            for r in self.records[ref]
            if r[0] == account_id and any(lo <= r[2] < hi for lo, hi in windows)
        ]

    def ingest(self, rows: list[tuple[int, int, int, dict[str, str] | None, int]]) -> list[tuple[Any, ...]]:
        """Store one record; return the model's view of its rows (with offsets) and apply it."""
        applied: list[AppliedRow] = []
        for account, value, t, props, op in rows:
            applied.append((account, value, t, props, op, self.next_offset))
            self.next_offset += 1
        ref = 1000 + len(self.records) * 37  # any ints will do; not contiguous on purpose
        self.records[ref] = applied
        self.alerts.extend(self.aggregates.apply(self.spec, applied, ref))
        return [(a, self.metric.code, v, t, p, op, off) for a, v, t, p, op, off in applied]

    alerts: list[AlertRow]

    def restore(self) -> None:
        data = msgpack.unpackb(pack(self.aggregates.to_snapshot()), strict_map_key=False)
        self.engines.append(self.engines.pop(0))
        self.aggregates = PartitionAggregates.from_snapshot(
            data, self.fetch_events, {self.metric.code: self.spec}, self.engines[0]
        )


def outcome(call: Any, *args: Any) -> Any:
    """``call(*args)``, or "OUT_OF_RANGE" if it raised OutOfRangeError."""
    try:
        return call(*args)
    except OutOfRangeError:
        return "OUT_OF_RANGE"


# ------------------------------------------------------------------------------------ strategies


@st.composite
def metrics(draw: st.DrawFn, agg_types: tuple[AggType, ...] = tuple(AggType)) -> Metric:
    agg = draw(st.sampled_from(agg_types))
    period_type = draw(st.sampled_from(PeriodType))
    dims = draw(st.sampled_from([(), ("region",), ("tier",), ("region", "tier")]))
    n_thresholds = draw(st.integers(0, 3))
    limit = st.integers(1, 4) if agg in (AggType.COUNT, AggType.COUNT_UNIQUE) else st.integers(1, 25)
    thresholds = tuple(AlertThreshold(f"t{i}", draw(limit), draw(st.booleans())) for i in range(n_thresholds))
    return Metric(
        code="m",
        agg_type=agg,
        period_type=period_type,
        fixed_period_seconds=draw(st.sampled_from([60, 90, 120, 300, 600])),
        billing_cycle_day=draw(st.sampled_from([1, 7, 28])),
        time_zone=draw(st.sampled_from(["UTC", "America/New_York"])),
        carry_over=agg == AggType.COUNT_UNIQUE and draw(st.booleans()),
        filters=tuple(DimensionFilter(d, DIM_VALUES[d]) for d in dims),
        thresholds=thresholds,
    )


def unit_of(metric: Metric) -> int:
    """A time step that makes a workload span a handful of the metric's periods."""
    return {
        PeriodType.FIXED: MINUTE,
        PeriodType.DAY: 2 * HOUR,
        PeriodType.WEEK: 12 * HOUR,
        PeriodType.CALENDAR: 2 * DAY,
    }[PeriodType(metric.period_type)]


@st.composite
def instants(draw: st.DrawFn, origin: int, unit: int, spread: int) -> int:
    steps = draw(st.integers(-3, spread))
    jitter = draw(
        st.one_of(
            st.sampled_from([0, 1, unit - 1, unit // 2, MINUTE, MINUTE - 1, MINUTE + 1, HOUR, HOUR - 1]),
            st.integers(0, unit - 1),
        )
    )
    return origin + steps * unit + jitter


@st.composite
def points(draw: st.DrawFn, metric: Metric, times: st.SearchStrategy[int], seen: list[int]) -> int:
    """A range bound near an event (mostly) or anywhere: on it, on (or 1 ns off) its period's or its
    minute's, hour's or day's boundaries."""
    near_event = bool(seen) and draw(st.integers(0, 4)) > 0
    t = draw(st.sampled_from(seen)) if near_event else draw(times)
    kind = draw(st.integers(0, 3))
    if kind == 1:
        t = model_period(metric, t)[draw(st.integers(0, 1))]
    elif kind == 2:
        t -= t % draw(st.sampled_from([MINUTE, HOUR, DAY]))
    elif kind == 3:
        t += draw(st.integers(-2 * HOUR, 2 * HOUR))
    return t + draw(st.sampled_from([0, 0, 1, -1]))


@dataclass
class Workload:
    metric: Metric
    program: list[tuple[Any, ...]] = field(default_factory=list)


@st.composite
def workloads(draw: st.DrawFn, agg_types: tuple[AggType, ...] = tuple(AggType), folds: int = 1) -> Workload:
    metric = draw(metrics(agg_types))
    origin = draw(st.sampled_from(ORIGINS))
    agg = AggType(metric.agg_type)
    dims = [f.key for f in metric.filters]
    # Dense workloads put several records' events in the same minutes (edges read them all back).
    times = instants(origin, unit_of(metric), draw(st.sampled_from([1, 30])))
    if agg == AggType.COUNT_UNIQUE:
        values = st.sampled_from([0, 1, 2, 3, 4, 5, 2**64 - 1])
    elif agg == AggType.SUM and draw(st.integers(0, 4)) == 0:
        values = st.sampled_from([0, 1, 5, 9, 2**62, 2**63 - 1])  # sums past int64: OUT_OF_RANGE
    else:
        values = st.integers(0, 9)
    ops = (
        st.sampled_from([1, 1, 2])
        if agg in (AggType.COUNT, AggType.SUM, AggType.COUNT_UNIQUE)
        else st.just(1)
    )
    props = st.none() | st.fixed_dictionaries(
        {}, optional={d: st.sampled_from(DIM_VALUES[d]) for d in dims} | {"other": st.just("x")}
    )
    rows = st.lists(
        st.tuples(st.sampled_from(ACCOUNTS), values, times, props, ops),
        min_size=1,
        max_size=6,
    )
    workload = Workload(metric)
    seen: list[int] = []
    accounts: list[int] = []
    for _ in range(draw(st.integers(1, 12))):
        kinds = ["ingest", "ingest", "ingest", "query", "query", "realtime", "snapshot"] + ["fold"] * folds
        kind = draw(st.sampled_from(kinds))
        if kind == "ingest":
            batch = draw(rows)
            if draw(st.integers(0, 3)) == 0:
                # A burst: every row at one instant, so ties are broken by offset everywhere.
                batch = [(a, v, batch[0][2], p, op) for a, v, _, p, op in batch]
            seen.extend(r[2] for r in batch)
            accounts.extend(r[0] for r in batch)
            workload.program.append(("ingest", batch))
            continue
        if kind == "snapshot":
            workload.program.append(("snapshot",))
            continue
        if kind == "fold":
            # A cutoff near the events: the hours before it lose their minute cells.
            later = draw(st.sampled_from([0, HOUR, 2 * HOUR, DAY, 40 * DAY]))
            workload.program.append(("fold", draw(points(metric, times, list(seen))) + later))
            continue
        # Mostly an account that has events, at bounds near its events.
        with_events = bool(accounts) and draw(st.integers(0, 4)) > 0
        account = draw(st.sampled_from(accounts)) if with_events else ACCOUNTS[0]
        if kind == "realtime":
            workload.program.append(("realtime", account, draw(points(metric, times, list(seen)))))
            continue
        a, b = draw(points(metric, times, list(seen))), draw(points(metric, times, list(seen)))
        start, end = min(a, b), max(a, b) + (a == b)
        keys = draw(st.lists(st.sampled_from(dims), unique=True, max_size=2)) if dims else []
        filters = {k: draw(st.sampled_from(DIM_VALUES[k])) for k in keys if draw(st.booleans())}
        group_by = draw(st.lists(st.sampled_from(dims), unique=True)) if dims else []
        workload.program.append(("query", account, start, end, filters, group_by))
    if folds > 1 and seen:
        # Every query again once every hour with events is folded, then after late events into
        # those hours and a restore: the answers must not change (the runner checks the model).
        queries = [step for step in workload.program if step[0] == "query"]
        workload.program.append(("fold", max(seen) + 2 * HOUR))
        workload.program.extend(queries)
        workload.program.append(("ingest", draw(rows)))
        workload.program.append(("snapshot",))
        workload.program.extend(queries)
    return workload


# ------------------------------------------------------------------------------------------ runner


def run(workload: Workload, engine_name: str) -> None:
    metric = workload.metric
    engine = Engine(metric, engine_name)
    engine.alerts = []
    model = ReferenceModel([metric])
    checked_times: set[int] = set()
    for step in workload.program:
        if step[0] == "ingest":
            model.ingest(engine.ingest(step[1]))
            assert engine.alerts == model.alerts(), "alert sequences differ"
            checked_times.update(r[2] for r in step[1])
        elif step[0] == "snapshot":
            engine.restore()
        elif step[0] == "fold":
            engine.aggregates.fold_minutes_before(step[1])
        elif step[0] == "realtime":
            _, account, now = step
            got = outcome(engine.aggregates.realtime, engine.spec, account, now)
            assert got == outcome(model.realtime, account, metric.code, now), step
        else:
            _, account, start, end, filters, group_by = step
            got = outcome(engine.aggregates.query, engine.spec, account, start, end, filters, group_by)
            want = outcome(model.query, account, metric.code, start, end, filters, group_by)
            assert got == want, step
    # Every period and realtime read touched by the events, for every account, plain and grouped.
    dims = [f.key for f in metric.filters]
    for t in sorted(checked_times):
        start, end = model_period(metric, t)
        for account in ACCOUNTS[:2]:
            got = outcome(engine.aggregates.realtime, engine.spec, account, t)
            assert got == outcome(model.realtime, account, metric.code, t), ("realtime", account, t)
            one_filter = {dims[0]: DIM_VALUES[dims[0]][0]} if dims else {}
            for filters, group_by in (({}, []), ({}, dims), (one_filter, []), (one_filter, dims)):
                got = outcome(engine.aggregates.query, engine.spec, account, start, end, filters, group_by)
                want = outcome(model.query, account, metric.code, start, end, filters, group_by)
                assert got == want, ("period", account, start, end, filters, group_by)
    assert engine.alerts == model.alerts()


over_engines = pytest.mark.parametrize("engine", ENGINES)

COMMON = settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@over_engines
@COMMON
@given(workloads((AggType.COUNT, AggType.SUM)))
def test_count_and_sum_match_the_model(engine: str, workload: Workload) -> None:
    run(workload, engine)


@over_engines
@COMMON
@given(workloads((AggType.MAX, AggType.LATEST)))
def test_max_and_latest_match_the_model(engine: str, workload: Workload) -> None:
    run(workload, engine)


@over_engines
@COMMON
@given(workloads((AggType.COUNT_UNIQUE,)))
def test_count_unique_matches_the_model(engine: str, workload: Workload) -> None:
    run(workload, engine)


@over_engines
@COMMON
@given(workloads(tuple(AggType), folds=3))
def test_folded_minutes_change_no_answer(engine: str, workload: Workload) -> None:
    """Fold-heavy programs, every type: each query asked again after every hour with events is
    folded, then after late events into folded hours and a restore (through the other engine)."""
    run(workload, engine)
