"""Random workloads through a real server (gRPC, partitions, log, restarts) against the reference model.

Each hypothesis example defines a fresh metric (any type, period type, time zone, dimensions and
thresholds), ingests events for a few accounts in several batches (duplicates, corrections, late
and out-of-order times, ASYNC and SYNC), then compares every query, group, realtime answer and the
alert log with ``tests.reference_model``. One server serves a whole run; every few examples it is
stopped and started again on the same data directory (alternately gracefully and by dropping it
without a snapshot), and an earlier example is checked again after the restart. Zero tolerance.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cluster_client.types import (
    AggType,
    AggValue,
    AlertThreshold,
    DimensionFilter,
    Metric,
    PeriodType,
)
from service.server import UnimeterServer
from tests.conftest import Api, open_api, serve_config
from tests.reference_model import ReferenceModel
from unimeter.v1 import alert_service_pb2 as als
from unimeter.v1 import ingest_service_pb2 as ing
from unimeter.v1 import metrics_service_pb2 as ms
from unimeter.v1 import query_service_pb2 as qs
from unimeter.v1 import types_pb2 as t

SEC = 1_000_000_000
HOUR = 3600 * SEC
DAY = 24 * HOUR
BASE = 1_772_323_200 * SEC  # 2026-03-01T00:00Z; New York's DST starts on 2026-03-08
SPAN = 12 * DAY
EXAMPLES = int(os.environ.get("UNIMETER_MODEL_EXAMPLES", "400"))
RESTART_EVERY = 40

DIMS = {"region": ("eu", "us", "ap"), "tier": ("free", "pro")}


@dataclass
class Run:
    """A server shared by the examples of one run, and what earlier examples expect."""

    loop: asyncio.AbstractEventLoop
    data_dir: Path
    server: UnimeterServer | None = None
    api: Api | None = None
    examples: int = 0
    graceful: bool = True
    checks: list[
        tuple[ReferenceModel, Metric, list[int], list[tuple[int, int, dict[str, str], list[str]]]]
    ] = field(default_factory=list)

    def run(self, coro):  # type: ignore[no-untyped-def]
        return self.loop.run_until_complete(asyncio.wait_for(coro, 60))

    async def start(self) -> None:
        self.server = UnimeterServer(serve_config(self.data_dir, partitions=4))
        await self.server.start()
        self.api = await open_api(self.server)

    async def stop(self, graceful: bool) -> None:
        assert self.server is not None and self.api is not None
        await self.api.channel.close()
        node = self.server.node
        assert node is not None
        if not graceful:
            # Close without the shutdown snapshots: the next start replays each log's tail.
            for partition in node.partitions:
                partition.snapshot = _no_snapshot  # type: ignore[method-assign]
        await self.server.stop(grace=1)


async def _no_snapshot() -> None:
    return None


@pytest.fixture(scope="module")
def model_run() -> Iterator[Run]:
    loop = asyncio.new_event_loop()
    data_dir = Path(tempfile.mkdtemp(prefix="unimeter-model-"))
    run = Run(loop, data_dir)
    run.run(run.start())
    try:
        yield run
    finally:
        run.run(run.stop(graceful=True))
        loop.close()
        shutil.rmtree(data_dir, ignore_errors=True)


@st.composite
def metrics(draw: st.DrawFn) -> Metric:
    agg = draw(st.sampled_from(list(AggType)))
    period = draw(st.sampled_from(list(PeriodType)))
    dims = draw(st.lists(st.sampled_from(sorted(DIMS)), max_size=2, unique=True))
    thresholds = draw(
        st.lists(st.builds(AlertThreshold, st.just(""), st.integers(1, 60), st.booleans()), max_size=2)
    )
    return Metric(
        code="",
        agg_type=agg,
        period_type=period,
        fixed_period_seconds=draw(st.sampled_from([600, 3600, 86_400, 3 * 86_400])),
        billing_cycle_day=draw(st.integers(1, 28)),
        time_zone=draw(st.sampled_from(["UTC", "America/New_York"])),
        carry_over=agg is AggType.COUNT_UNIQUE and draw(st.booleans()),
        filters=tuple(DimensionFilter(k, DIMS[k]) for k in dims),
        thresholds=tuple(AlertThreshold(f"th{i}", th.value, th.recurring) for i, th in enumerate(thresholds)),
    )


@st.composite
def workloads(
    draw: st.DrawFn,
) -> tuple[Metric, list[list[tuple[int, int, int, dict[str, str], int, str]]], list[int]]:
    metric = draw(metrics())
    accounts = draw(st.lists(st.integers(1, 3), min_size=1, max_size=3, unique=True))
    removable = metric.agg_type in (AggType.COUNT, AggType.SUM, AggType.COUNT_UNIQUE)
    value = st.integers(0, 9) if metric.agg_type is AggType.COUNT_UNIQUE else st.integers(0, 40)
    props = st.fixed_dictionaries({}, optional={f.key: st.sampled_from(f.values) for f in metric.filters})
    event = st.tuples(
        st.sampled_from(accounts),
        value,
        st.integers(0, SPAN // SEC).map(lambda s: BASE + s * SEC) | st.integers(0, 5).map(lambda i: BASE + i),
        props,
        st.sampled_from([1, 2]) if removable else st.just(1),
    )
    events = draw(st.lists(event, min_size=1, max_size=25))
    with_ids = [(a, v, tm, p, op, f"e{i}") for i, (a, v, tm, p, op) in enumerate(events)]
    # Re-send some events as they were (duplicates), in later or the same batches.
    dups = draw(st.lists(st.sampled_from(with_ids), max_size=4))
    everything = with_ids + dups
    cuts = sorted(draw(st.lists(st.integers(0, len(everything)), max_size=3)))
    batches = [everything[i:j] for i, j in zip([0, *cuts], [*cuts, len(everything)], strict=True) if j > i]
    syncs = draw(st.lists(st.booleans(), min_size=len(batches), max_size=len(batches)))
    return metric, batches, [int(s) for s in syncs]


def _metric_proto(m: Metric) -> t.Metric:
    return t.Metric(
        code=m.code,
        agg_type=int(m.agg_type),
        period_type=int(m.period_type),
        billing_cycle_day=m.billing_cycle_day,
        fixed_period_seconds=m.fixed_period_seconds,
        time_zone=m.time_zone,
        carry_over=m.carry_over,
        filters=[t.DimensionFilter(key=f.key, values=f.values) for f in m.filters],
        thresholds=[
            t.AlertThreshold(code=x.code, value=x.value, recurring=x.recurring) for x in m.thresholds
        ],
    )


def _agg(v: t.AggValue) -> AggValue:
    return AggValue(
        v.value,
        v.count,
        v.sum,
        v.max,
        v.last_value,
        v.last_event_time_unix_nano,
        v.unique_count,
        v.alert_flags,
    )


async def _check(api: Api, model: ReferenceModel, metric: Metric, accounts: list[int], queries) -> None:  # type: ignore[no-untyped-def]
    for account in accounts:
        for start, end, filters, group_by in queries:
            want_value, want_groups = model.query(account, metric.code, start, end, filters, group_by)
            got = await api.query.Query(
                qs.QueryRequest(
                    account_id=account,
                    metric_code=metric.code,
                    period=t.Period(start_unix_nano=start, end_unix_nano=end),
                    filters=filters,
                    group_by=group_by,
                ),
                timeout=10,
            )
            where = (account, start - BASE, end - BASE, filters, group_by)
            assert _agg(got.value) == want_value, where
            assert [(dict(g.key), _agg(g.value)) for g in got.groups] == [
                (g.key, g.value) for g in want_groups
            ], where
        # Realtime answers for the metric's current period; the model knows no events there, except
        # carried-over members: compare with the model at the period the server reports.
        rt = await api.query.QueryRealtime(
            qs.QueryRealtimeRequest(account_id=account, metric_code=metric.code)
        )
        want_rt, period = model.realtime(account, metric.code, rt.period.start_unix_nano)
        assert (rt.period.start_unix_nano, rt.period.end_unix_nano) == (period.start, period.end)
        assert _agg(rt.value) == want_rt
        got_alerts = await api.alerts.ListAlerts(als.ListAlertsRequest(account_id=account, page_size=1000))
        want_alerts = [a for a in model.alerts() if a[0] == account and a[1] == metric.code]
        assert [
            (a.account_id, a.metric_code, a.threshold_code, a.threshold_value, a.multiple, a.value_at_cross,
             a.period_start_unix_nano, a.event_time_unix_nano)
            for a in got_alerts.alerts if a.metric_code == metric.code
        ] == want_alerts  # fmt: skip


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(
    workload=workloads(),
    ranges=st.lists(st.tuples(st.integers(-DAY, SPAN + DAY), st.integers(1, SPAN)), min_size=1, max_size=4),
    data=st.data(),
)
def test_random_workloads_through_the_server_match_the_model(model_run: Run, workload, ranges, data) -> None:  # type: ignore[no-untyped-def]
    run = model_run
    metric, batches, syncs = workload
    run.examples += 1
    n = run.examples
    metric = dataclasses.replace(metric, code=f"m{n}")
    # Accounts are per example so that examples never see each other's events.
    account_of = {a: n * 10 + a for a in (1, 2, 3)}
    model = ReferenceModel()

    async def body() -> None:
        api = run.api
        assert api is not None
        created = await api.metrics.CreateMetric(
            ms.CreateMetricRequest(metric=_metric_proto(metric)), timeout=10
        )
        model.add_metric(metric)
        stored: set[tuple[int, str]] = set()
        for batch, sync in zip(batches, syncs, strict=True):
            events = [
                t.Event(
                    account_id=account_of[a],
                    metric_code=metric.code,
                    value=v,
                    time_unix_nano=tm,
                    properties=p,
                    operation=op,
                    event_id=eid,
                )
                for a, v, tm, p, op, eid in batch
            ]
            r = await api.ingest.Ingest(
                ing.IngestRequest(
                    events=events, delivery=t.DELIVERY_MODE_SYNC if sync else t.DELIVERY_MODE_ASYNC
                ),
                timeout=10,
            )
            fresh = []
            for (a, v, tm, p, op, eid), offset in zip(batch, r.offsets, strict=True):
                key = (a, eid)
                if key not in stored:
                    stored.add(key)
                    fresh.append((account_of[a], metric.code, v, tm, p, op, offset))
            assert r.n_stored == len(fresh)
            # Offsets are per partition; an account's thresholds depend only on its own events' order.
            model.ingest(sorted(fresh, key=lambda row: (row[0], row[6])))
        assert created.metric.code == metric.code
        # Alerts are published once durable: one SYNC no-op flushes every partition touched.
        for partition in run.server.node.partitions:  # type: ignore[union-attr]
            await partition.flush()
        group_keys = [f.key for f in metric.filters]
        queries = []
        for offset, length in ranges:
            filters = data.draw(
                st.fixed_dictionaries({}, optional={f.key: st.sampled_from(f.values) for f in metric.filters})
            )
            group_by = data.draw(st.lists(st.sampled_from(group_keys), unique=True)) if group_keys else []
            queries.append((BASE + offset, BASE + offset + length, filters, group_by))
        period = model.period_of(metric.code, BASE + ranges[0][0] + DAY)
        queries.append((period[0], period[1], {}, []))
        accounts = sorted(set(account_of.values()))
        await _check(api, model, metric, accounts, queries)
        run.checks.append((model, metric, accounts, queries))
        if n % RESTART_EVERY == 0:
            await run.stop(graceful=run.graceful)
            run.graceful = not run.graceful
            await run.start()
            for old_model, old_metric, old_accounts, old_queries in run.checks[-RESTART_EVERY:]:
                await _check(run.api, old_model, old_metric, old_accounts, old_queries)  # type: ignore[arg-type]

    run.run(body())
