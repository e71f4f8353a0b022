"""ListEvents through a real server: order, pagination, filters, stored fields, bad tokens."""

from __future__ import annotations

import grpc
import pytest

from tests.conftest import Api
from tests.grpc_errors import fields
from tests.integration.helpers import SEC, T0, create_metric, ev, ingest
from unimeter.v1 import query_service_pb2 as qs
from unimeter.v1 import types_pb2 as t

HOUR = 3600 * SEC


async def list_all(
    api: Api, account: int, start: int, end: int, page_size: int, **kw: object
) -> list[qs.StoredEvent]:
    out: list[qs.StoredEvent] = []
    token = ""
    while True:
        r = await api.query.ListEvents(
            qs.ListEventsRequest(
                account_id=account,
                start_unix_nano=start,
                end_unix_nano=end,
                page_size=page_size,
                page_token=token,
                **kw,  # type: ignore[arg-type]
            ),
            timeout=5,
        )
        assert len(r.events) <= page_size
        out.extend(r.events)
        token = r.next_page_token
        if not token:
            return out


async def test_events_come_in_time_then_offset_order_across_pages_and_hours(api: Api) -> None:
    await create_metric(api, "calls")
    await create_metric(api, "gb", t.AGG_TYPE_SUM)
    times = [T0 + 5 * HOUR, T0 + 1, T0 + 2 * HOUR + 7, T0 + 1, T0 + 3 * HOUR, T0]
    await ingest(api, *[ev(42, "calls", i + 1, time=tm, event_id=f"e{i}") for i, tm in enumerate(times)])
    await ingest(api, ev(42, "gb", 99, time=T0 + HOUR, properties={"k": "v"}), ev(43, "calls", time=T0 + 2))
    got = await list_all(api, 42, T0, T0 + 6 * HOUR, page_size=2)
    assert [(e.event.time_unix_nano, e.offset) for e in got] == [
        (T0, 6),
        (T0 + 1, 2),
        (T0 + 1, 4),
        (T0 + HOUR, 7),
        (T0 + 2 * HOUR + 7, 3),
        (T0 + 3 * HOUR, 5),
        (T0 + 5 * HOUR, 1),
    ]
    gb = got[3]
    assert gb.event == t.Event(
        account_id=42,
        metric_code="gb",
        value=99,
        time_unix_nano=T0 + HOUR,
        properties={"k": "v"},
        operation=t.OPERATION_TYPE_ADD,
    )
    assert gb.partition == api.server.client.partition_of(42)  # type: ignore[union-attr]
    assert got[0].event.event_id == "e5"
    # Half-open range, metric filter, other accounts never leak in.
    only_calls = await list_all(api, 42, T0 + 1, T0 + 5 * HOUR, page_size=100, metric_code="calls")
    assert [e.event.value for e in only_calls] == [2, 4, 3, 5]
    assert [e.event.account_id for e in await list_all(api, 43, T0, T0 + HOUR, page_size=10)] == [43]


async def test_default_page_is_100(api: Api) -> None:
    await create_metric(api, "calls")
    await ingest(api, *[ev(7, "calls", time=T0 + i) for i in range(150)])
    r = await api.query.ListEvents(
        qs.ListEventsRequest(account_id=7, start_unix_nano=T0, end_unix_nano=T0 + SEC)
    )
    assert len(r.events) == 100
    assert r.next_page_token


async def test_bad_requests_name_the_field(api: Api) -> None:
    await create_metric(api, "calls")
    await ingest(api, *[ev(7, "calls", time=T0 + i) for i in range(3)])
    first = await api.query.ListEvents(
        qs.ListEventsRequest(account_id=7, start_unix_nano=T0, end_unix_nano=T0 + SEC, page_size=1)
    )
    cases = [
        (qs.ListEventsRequest(account_id=0, start_unix_nano=0, end_unix_nano=5), "account_id"),
        (qs.ListEventsRequest(account_id=7, start_unix_nano=5, end_unix_nano=5), "end_unix_nano"),
        (qs.ListEventsRequest(account_id=7, start_unix_nano=0, end_unix_nano=5, page_size=1001), "page_size"),
        (
            qs.ListEventsRequest(account_id=7, start_unix_nano=0, end_unix_nano=5, metric_code="nope"),
            "metric_code",
        ),
        (
            qs.ListEventsRequest(account_id=7, start_unix_nano=0, end_unix_nano=5, page_token="!!forged"),
            "page_token",
        ),
        # A real token replayed for another account or range is refused, never a leak.
        (
            qs.ListEventsRequest(
                account_id=8, start_unix_nano=T0, end_unix_nano=T0 + SEC, page_token=first.next_page_token
            ),
            "page_token",
        ),
        (
            qs.ListEventsRequest(
                account_id=7, start_unix_nano=T0 - 1, end_unix_nano=T0 + SEC, page_token=first.next_page_token
            ),
            "page_token",
        ),
    ]
    for request, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await api.query.ListEvents(request, timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert fields(err.value) == [field]
