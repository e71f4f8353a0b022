"""QueryService through a real server: exact values per type, ranges, selectors, realtime, errors."""

from __future__ import annotations

import time

import grpc
import pytest

from tests.conftest import Api
from tests.grpc_errors import fields
from tests.integration.helpers import DAY, SEC, T0, agg, create_metric, ev, ingest, query, realtime
from unimeter.v1 import query_service_pb2 as qs
from unimeter.v1 import types_pb2 as t

END = T0 + 30 * DAY
REMOVE = t.OPERATION_TYPE_REMOVE


async def test_count_with_corrections(api: Api) -> None:
    await create_metric(api, "calls")
    await ingest(
        api,
        ev(42, "calls", 1, time=T0 + 1 * SEC),
        ev(42, "calls", 1, time=T0 + 2 * SEC),
        ev(42, "calls", 1, time=T0 + 3 * SEC),
        ev(42, "calls", 1, time=T0 + 4 * SEC, operation=REMOVE),
    )
    r = await query(api, 42, "calls", T0, END)
    assert r.value == agg(value=2, count=2, max=1, last_value=1, last_event_time_unix_nano=T0 + 3 * SEC)


async def test_sum_with_corrections_and_exact_edges(api: Api) -> None:
    await create_metric(api, "gb", t.AGG_TYPE_SUM)
    await ingest(
        api,
        ev(1, "gb", 10, time=T0 + 100),
        ev(1, "gb", 20, time=T0 + 200),
        ev(1, "gb", 5, time=T0 + 300, operation=REMOVE),
        ev(1, "gb", 40, time=T0 + 400),
    )
    full = await query(api, 1, "gb", T0, END)
    assert full.value == agg(
        value=65, count=2, sum=65, max=40, last_value=40, last_event_time_unix_nano=T0 + 400
    )
    # Nanosecond boundaries: [T0+200, T0+400) holds the 20 and the correction only.
    mid = await query(api, 1, "gb", T0 + 200, T0 + 400)
    assert mid.value == agg(
        value=15, count=0, sum=15, max=20, last_value=20, last_event_time_unix_nano=T0 + 200
    )
    assert (await query(api, 1, "gb", T0 + 201, T0 + 400)).value.sum == -5
    assert (await query(api, 1, "gb", T0 + 101, T0 + 200)).value.sum == 0
    assert mid.period == t.Period(start_unix_nano=T0 + 200, end_unix_nano=T0 + 400)


async def test_max_and_latest(api: Api) -> None:
    await create_metric(api, "peak", t.AGG_TYPE_MAX)
    await create_metric(api, "level", t.AGG_TYPE_LATEST)
    await ingest(
        api,
        ev(2, "peak", 7, time=T0 + 3),
        ev(2, "peak", 9, time=T0 + 1),
        ev(2, "peak", 4, time=T0 + 2),
        ev(2, "level", 7, time=T0 + 3),
        ev(2, "level", 9, time=T0 + 1),
        ev(2, "level", 4, time=T0 + 3, event_id="later-offset-same-time"),
    )
    peak = (await query(api, 2, "peak", T0, END)).value
    assert peak == agg(value=9, count=3, max=9, last_value=7, last_event_time_unix_nano=T0 + 3)
    level = (await query(api, 2, "level", T0, END)).value
    # Greatest event time wins; the tie at T0+3 goes to the higher offset (value 4).
    assert level == agg(value=4, count=3, max=9, last_value=4, last_event_time_unix_nano=T0 + 3)


async def test_count_unique_per_period(api: Api) -> None:
    await create_metric(api, "seats", t.AGG_TYPE_COUNT_UNIQUE)
    await ingest(
        api,
        ev(100, "seats", 1, time=T0 + 1),
        ev(100, "seats", 2, time=T0 + 2),
        ev(100, "seats", 1, time=T0 + 3),
        ev(100, "seats", 2, time=T0 + 4, operation=REMOVE),
        ev(100, "seats", 3, time=T0 + 5, operation=REMOVE),
    )
    v = (await query(api, 100, "seats", T0, END)).value
    assert (v.value, v.count, v.unique_count, v.sum) == (1, 1, 1, 0)


async def test_realtime_and_current_selector_agree(api: Api) -> None:
    await create_metric(api, "calls")
    now = time.time_ns()
    await ingest(api, ev(5, "calls", time=now - SEC), ev(5, "calls"), ev(5, "calls", time=now - 40 * DAY))
    rt = await realtime(api, 5, "calls")
    period_len = 2_592_000 * SEC
    assert rt.period.start_unix_nano == now // period_len * period_len
    assert rt.value.count == 2
    assert rt.period.end_unix_nano - rt.period.start_unix_nano == period_len
    cur = await api.query.Query(
        qs.QueryRequest(account_id=5, metric_code="calls", period_selector=t.PERIOD_SELECTOR_CURRENT),
        timeout=5,
    )
    assert cur.period == rt.period
    assert cur.value.count == rt.value.count
    prev = await api.query.Query(
        qs.QueryRequest(account_id=5, metric_code="calls", period_selector=t.PERIOD_SELECTOR_PREVIOUS),
        timeout=5,
    )
    assert prev.period.end_unix_nano == rt.period.start_unix_nano
    assert prev.period.start_unix_nano == rt.period.start_unix_nano - period_len
    assert rt.as_of_offset == 3


async def test_query_sees_an_acknowledged_ingest(api: Api) -> None:
    await create_metric(api, "calls")
    for i in range(20):
        r = await ingest(api, ev(77, "calls", time=T0 + i))
        q = await query(api, 77, "calls", T0, END)
        assert q.value.count == i + 1
        assert q.as_of_offset >= r.offsets[0]


async def test_unknown_metric_and_bad_ranges_are_invalid(api: Api) -> None:
    await create_metric(api, "calls", filters=[t.DimensionFilter(key="region", values=["eu", "us"])])
    cases = [
        (
            qs.QueryRequest(
                account_id=1, metric_code="nope", period=t.Period(start_unix_nano=0, end_unix_nano=5)
            ),
            "metric_code",
        ),
        (
            qs.QueryRequest(
                account_id=0, metric_code="calls", period=t.Period(start_unix_nano=0, end_unix_nano=5)
            ),
            "account_id",
        ),
        (
            qs.QueryRequest(
                account_id=1, metric_code="calls", period=t.Period(start_unix_nano=5, end_unix_nano=5)
            ),
            "period",
        ),
        (
            qs.QueryRequest(
                account_id=1, metric_code="calls", period=t.Period(start_unix_nano=9, end_unix_nano=5)
            ),
            "period",
        ),
        (qs.QueryRequest(account_id=1, metric_code="calls", period_selector=7), "period_selector"),  # type: ignore[arg-type]
        (
            qs.QueryRequest(
                account_id=1,
                metric_code="calls",
                period=t.Period(start_unix_nano=0, end_unix_nano=5),
                filters={"zone": "a"},
            ),
            "filters[zone]",
        ),
        (
            qs.QueryRequest(
                account_id=1,
                metric_code="calls",
                period=t.Period(start_unix_nano=0, end_unix_nano=5),
                filters={"region": "mars"},
            ),
            "filters[region]",
        ),
        (
            qs.QueryRequest(
                account_id=1,
                metric_code="calls",
                period=t.Period(start_unix_nano=0, end_unix_nano=5),
                group_by=["zone"],
            ),
            "group_by[0]",
        ),
    ]
    for request, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await api.query.Query(request, timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert fields(err.value) == [field]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await realtime(api, 1, "nope")
    assert fields(err.value) == ["metric_code"]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await realtime(api, 0, "calls")
    assert fields(err.value) == ["account_id"]


async def test_filters_and_group_by(api: Api) -> None:
    await create_metric(
        api,
        "compute",
        t.AGG_TYPE_SUM,
        filters=[
            t.DimensionFilter(key="provider", values=["aws", "gcp"]),
            t.DimensionFilter(key="region", values=["us-east", "europe"]),
        ],
    )
    await ingest(
        api,
        ev(42, "compute", 10, time=T0 + 1, properties={"provider": "aws", "region": "us-east"}),
        ev(42, "compute", 20, time=T0 + 2, properties={"provider": "aws", "region": "europe"}),
        ev(42, "compute", 40, time=T0 + 3, properties={"provider": "gcp", "region": "europe"}),
        ev(42, "compute", 80, time=T0 + 4, properties={"provider": "gcp"}),
    )
    assert (await query(api, 42, "compute", T0, END)).value.sum == 150
    assert (await query(api, 42, "compute", T0, END, filters={"provider": "aws"})).value.sum == 30
    both = await query(api, 42, "compute", T0, END, filters={"provider": "gcp", "region": "europe"})
    assert both.value.sum == 40
    grouped = await query(api, 42, "compute", T0, END, group_by=["region"])
    assert [(dict(g.key), g.value.sum) for g in grouped.groups] == [
        ({"region": ""}, 80),
        ({"region": "europe"}, 60),
        ({"region": "us-east"}, 10),
    ]
