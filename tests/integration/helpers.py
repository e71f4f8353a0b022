"""Small builders shared by the integration tests."""

from __future__ import annotations

from tests.conftest import Api
from unimeter.v1 import ingest_service_pb2 as ing
from unimeter.v1 import metrics_service_pb2 as ms
from unimeter.v1 import query_service_pb2 as qs
from unimeter.v1 import types_pb2 as t

SEC = 1_000_000_000
DAY = 86_400 * SEC
# A FIXED 30-day period of the default metric: [T0, T0 + 30 days).
T0 = 19_980 * DAY  # 2024-09-14, a multiple of 30 days since the epoch
assert T0 % (30 * DAY) == 0


async def create_metric(api: Api, code: str, agg: int = t.AGG_TYPE_COUNT, **kw: object) -> t.Metric:
    m = t.Metric(code=code, agg_type=agg, **kw)  # type: ignore[arg-type]
    return (await api.metrics.CreateMetric(ms.CreateMetricRequest(metric=m), timeout=5)).metric


def ev(account: int, code: str, value: int = 1, time: int = 0, **kw: object) -> t.Event:
    return t.Event(account_id=account, metric_code=code, value=value, time_unix_nano=time, **kw)  # type: ignore[arg-type]


async def ingest(api: Api, *events: t.Event, sync: bool = False) -> ing.IngestResponse:
    delivery = t.DELIVERY_MODE_SYNC if sync else t.DELIVERY_MODE_UNSPECIFIED
    return await api.ingest.Ingest(ing.IngestRequest(events=list(events), delivery=delivery), timeout=10)


async def query(api: Api, account: int, code: str, start: int, end: int, **kw: object) -> qs.QueryResponse:
    req = qs.QueryRequest(
        account_id=account,
        metric_code=code,
        period=t.Period(start_unix_nano=start, end_unix_nano=end),
        **kw,  # type: ignore[arg-type]
    )
    return await api.query.Query(req, timeout=5)


async def realtime(api: Api, account: int, code: str) -> qs.QueryRealtimeResponse:
    return await api.query.QueryRealtime(
        qs.QueryRealtimeRequest(account_id=account, metric_code=code), timeout=5
    )


def agg(
    value: int = 0,
    count: int = 0,
    sum: int = 0,
    max: int = 0,
    last_value: int = 0,
    last_event_time_unix_nano: int = 0,
    unique_count: int = 0,
    alert_flags: int = 0,
) -> t.AggValue:
    return t.AggValue(
        value=value,
        count=count,
        sum=sum,
        max=max,
        last_value=last_value,
        last_event_time_unix_nano=last_event_time_unix_nano,
        unique_count=unique_count,
        alert_flags=alert_flags,
    )
