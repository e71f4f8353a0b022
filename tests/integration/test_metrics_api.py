"""MetricsService through a real server: create, get, list, delete and every validation rule."""

from __future__ import annotations

import grpc
import pytest

from tests.conftest import Api
from tests.grpc_errors import details, fields
from unimeter.v1 import metrics_service_pb2 as ms
from unimeter.v1 import types_pb2 as t


def metric(code: str = "api_calls", **kw: object) -> t.Metric:
    return t.Metric(code=code, **kw)  # type: ignore[arg-type]


async def create(api: Api, m: t.Metric) -> t.Metric:
    return (await api.metrics.CreateMetric(ms.CreateMetricRequest(metric=m), timeout=5)).metric


async def test_create_fills_defaults_and_get_returns_it(api: Api) -> None:
    created = await create(api, metric("api_calls"))
    assert created.agg_type == t.AGG_TYPE_COUNT
    assert created.period_type == t.PERIOD_TYPE_FIXED
    assert created.fixed_period_seconds == 2_592_000
    assert created.billing_cycle_day == 1
    assert created.time_zone == "UTC"
    assert created.create_time_unix_nano > 0
    got = (await api.metrics.GetMetric(ms.GetMetricRequest(code="api_calls"), timeout=5)).metric
    assert got == created


async def test_create_twice_is_already_exists(api: Api) -> None:
    await create(api, metric("api_calls"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await create(api, metric("api_calls", agg_type=t.AGG_TYPE_SUM))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert details(err.value)[0] == "METRIC_EXISTS"


async def test_list_is_ordered_by_code_and_delete_removes(api: Api) -> None:
    for code in ["zeta", "alpha", "mid"]:
        await create(api, metric(code))
    listed = (await api.metrics.ListMetrics(ms.ListMetricsRequest(), timeout=5)).metrics
    assert [m.code for m in listed] == ["alpha", "mid", "zeta"]
    await api.metrics.DeleteMetric(ms.DeleteMetricRequest(code="mid"), timeout=5)
    listed = (await api.metrics.ListMetrics(ms.ListMetricsRequest(), timeout=5)).metrics
    assert [m.code for m in listed] == ["alpha", "zeta"]


@pytest.mark.parametrize("call", ["get", "delete"])
async def test_get_or_delete_of_absent_metric_is_not_found(api: Api, call: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        if call == "get":
            await api.metrics.GetMetric(ms.GetMetricRequest(code="nope"), timeout=5)
        else:
            await api.metrics.DeleteMetric(ms.DeleteMetricRequest(code="nope"), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert details(err.value)[0] == "METRIC_NOT_FOUND"


def _dims(n: int) -> list[t.DimensionFilter]:
    return [t.DimensionFilter(key=f"k{i}", values=["a"]) for i in range(n)]


def _thresholds(n: int) -> list[t.AlertThreshold]:
    return [t.AlertThreshold(code=f"t{i}", value=10) for i in range(n)]


INVALID = [
    (metric(""), "metric.code"),
    (metric("1abc"), "metric.code"),
    (metric("has space"), "metric.code"),
    (metric("a" * 65), "metric.code"),
    (metric("x", agg_type=9), "metric.agg_type"),  # type: ignore[arg-type]
    (metric("x", period_type=9), "metric.period_type"),  # type: ignore[arg-type]
    (metric("x", period_type=t.PERIOD_TYPE_CALENDAR, billing_cycle_day=29), "metric.billing_cycle_day"),
    (metric("x", time_zone="Mars/Olympus"), "metric.time_zone"),
    (metric("x", agg_type=t.AGG_TYPE_SUM, carry_over=True), "metric.carry_over"),
    (metric("x", filters=_dims(9)), "metric.filters"),
    (metric("x", filters=[t.DimensionFilter(key="", values=["a"])]), "metric.filters[0].key"),
    (metric("x", filters=[t.DimensionFilter(key="k" * 65, values=["a"])]), "metric.filters[0].key"),
    (metric("x", filters=[t.DimensionFilter(key="region", values=[])]), "metric.filters[0].values"),
    (metric("x", filters=[t.DimensionFilter(key="r", values=["v" * 65])]), "metric.filters[0].values[0]"),
    (
        metric("x", filters=[t.DimensionFilter(key="r", values=[str(i) for i in range(65)])]),
        "metric.filters[0].values",
    ),
    (metric("x", filters=[t.DimensionFilter(key="r", values=["a", "a"])]), "metric.filters[0].values"),
    (metric("x", filters=[t.DimensionFilter(key="r", values=["a"])] * 2), "metric.filters[1].key"),
    (metric("x", thresholds=_thresholds(9)), "metric.thresholds"),
    (metric("x", thresholds=[t.AlertThreshold(code="cap", value=0)]), "metric.thresholds[0].value"),
    (metric("x", thresholds=[t.AlertThreshold(code="cap", value=1 << 63)]), "metric.thresholds[0].value"),
    (metric("x", thresholds=[t.AlertThreshold(code="9cap", value=5)]), "metric.thresholds[0].code"),
    (metric("x", thresholds=[t.AlertThreshold(code="cap", value=5)] * 2), "metric.thresholds[1].code"),
]


@pytest.mark.parametrize(("bad", "field"), INVALID, ids=[f for _, f in INVALID])
async def test_invalid_metric_is_invalid_argument_naming_the_field(
    api: Api, bad: t.Metric, field: str
) -> None:
    await create(api, metric("keeper", agg_type=t.AGG_TYPE_SUM))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await create(api, bad)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in fields(err.value)
    # Nothing already stored is affected, and nothing half-created exists.
    listed = (await api.metrics.ListMetrics(ms.ListMetricsRequest(), timeout=5)).metrics
    assert [m.code for m in listed] == ["keeper"]


async def test_full_definition_round_trips(api: Api) -> None:
    m = metric(
        "compute_seconds",
        agg_type=t.AGG_TYPE_SUM,
        period_type=t.PERIOD_TYPE_CALENDAR,
        billing_cycle_day=15,
        time_zone="Europe/Berlin",
        filters=[
            t.DimensionFilter(key="provider", values=["aws", "gcp", "azure"]),
            t.DimensionFilter(key="region", values=["us-east", "us-west", "europe"]),
        ],
        thresholds=[
            t.AlertThreshold(code="free_tier_exceeded", value=10_000),
            t.AlertThreshold(code="every_million", value=1_000_000, recurring=True),
        ],
    )
    created = await create(api, m)
    expected = t.Metric()
    expected.CopyFrom(m)
    expected.fixed_period_seconds = 2_592_000
    expected.create_time_unix_nano = created.create_time_unix_nano
    assert created == expected
