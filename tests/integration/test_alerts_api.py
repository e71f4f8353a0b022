"""AlertService through a real server: ListAlerts, AlertSubscribe (filters, resume, heartbeats), errors."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from tests.conftest import Api, open_api, serve_config
from tests.grpc_errors import fields
from tests.integration.helpers import T0, create_metric, ev, ingest
from unimeter.v1 import alert_service_pb2 as als
from unimeter.v1 import types_pb2 as t

REMOVE = t.OPERATION_TYPE_REMOVE


async def setup_caps(api: Api) -> None:
    await create_metric(
        api,
        "api_calls",
        thresholds=[
            t.AlertThreshold(code="free_tier_exceeded", value=3),
            t.AlertThreshold(code="hard_cap", value=5),
        ],
    )
    await create_metric(
        api, "gb", t.AGG_TYPE_SUM, thresholds=[t.AlertThreshold(code="every_10", value=10, recurring=True)]
    )


async def list_alerts(api: Api, account: int, after: int = 0, page_size: int = 0) -> als.ListAlertsResponse:
    return await api.alerts.ListAlerts(
        als.ListAlertsRequest(account_id=account, after_offset=after, page_size=page_size), timeout=5
    )


async def wait_alerts(api: Api, account: int, n: int) -> list[t.Alert]:
    async with asyncio.timeout(5):
        while True:
            alerts = list((await list_alerts(api, account)).alerts)
            if len(alerts) >= n:
                return alerts
            await asyncio.sleep(0.01)


async def test_one_shot_thresholds_fire_once_and_rearm_after_a_correction(api: Api) -> None:
    await setup_caps(api)
    await ingest(api, *[ev(42, "api_calls", time=T0 + i) for i in range(6)])
    alerts = await wait_alerts(api, 42, 2)
    assert [
        (a.threshold_code, a.threshold_value, a.multiple, a.value_at_cross, a.offset) for a in alerts
    ] == [
        ("free_tier_exceeded", 3, 1, 3, 1),
        ("hard_cap", 5, 1, 5, 2),
    ]
    first = alerts[0]
    assert (first.account_id, first.metric_code, first.event_time_unix_nano) == (42, "api_calls", T0 + 2)
    assert first.period_start_unix_nano == T0
    assert first.partition == api.server.client.partition_of(42)  # type: ignore[union-attr]
    assert first.record_time_unix_nano > 0
    # Falling below hard_cap (6 → 4) re-arms it; reaching 5 again fires it again.
    await ingest(
        api,
        ev(42, "api_calls", time=T0 + 10, operation=REMOVE),
        ev(42, "api_calls", time=T0 + 11, operation=REMOVE),
    )
    await ingest(api, ev(42, "api_calls", time=T0 + 12))
    alerts = await wait_alerts(api, 42, 3)
    assert [(a.threshold_code, a.value_at_cross, a.offset) for a in alerts] == [
        ("free_tier_exceeded", 3, 1),
        ("hard_cap", 5, 2),
        ("hard_cap", 5, 3),
    ]
    assert [a.offset for a in (await list_alerts(api, 42, after=1)).alerts] == [2, 3]


async def test_recurring_threshold_alerts_each_new_multiple_once_per_event(api: Api) -> None:
    await setup_caps(api)
    await ingest(api, ev(7, "gb", 9, time=T0 + 1), ev(7, "gb", 1, time=T0 + 2), ev(7, "gb", 25, time=T0 + 3))
    alerts = await wait_alerts(api, 7, 2)
    assert [(a.threshold_code, a.multiple, a.value_at_cross) for a in alerts] == [
        ("every_10", 1, 10),
        ("every_10", 3, 35),
    ]


async def test_list_alerts_pages(api: Api) -> None:
    await setup_caps(api)
    for i in range(5):
        await ingest(api, ev(7, "gb", 10, time=T0 + i))
    await wait_alerts(api, 7, 5)
    page = await list_alerts(api, 7, page_size=2)
    assert ([a.multiple for a in page.alerts], page.has_more) == ([1, 2], True)
    last = await list_alerts(api, 7, after=page.alerts[-1].offset, page_size=3)
    assert ([a.multiple for a in last.alerts], last.has_more) == ([3, 4, 5], False)


async def next_alert(stream: grpc.aio.UnaryStreamCall) -> als.AlertSubscribeResponse:  # type: ignore[type-arg]
    async with asyncio.timeout(5):
        return await stream.read()  # type: ignore[no-any-return]


async def test_subscribe_streams_live_alerts_filtered_and_resumes_from_offsets(api: Api) -> None:
    await setup_caps(api)
    stream = api.alerts.AlertSubscribe(
        als.AlertSubscribeRequest(account_ids=[42], threshold_codes=["hard_cap"])
    )
    hello = await next_alert(stream)
    assert hello.WhichOneof("kind") == "heartbeat"
    assert set(hello.heartbeat.offsets) == set(range(8))
    await ingest(
        api,
        *[ev(42, "api_calls", time=T0 + i) for i in range(6)],
        *[ev(43, "api_calls", time=T0 + i) for i in range(6)],
    )
    got = await next_alert(stream)
    assert (got.alert.account_id, got.alert.threshold_code, got.alert.value_at_cross) == (42, "hard_cap", 5)
    stream.cancel()
    # Resume after the free-tier alert of account 42: only the hard cap follows.
    p42 = got.alert.partition
    resumed = api.alerts.AlertSubscribe(als.AlertSubscribeRequest(account_ids=[42], since_offsets={p42: 1}))
    assert (await next_alert(resumed)).WhichOneof("kind") == "heartbeat"
    again = await next_alert(resumed)
    assert (again.alert.threshold_code, again.alert.offset) == ("hard_cap", got.alert.offset)
    resumed.cancel()
    # from_beginning replays every partition's log.
    everything = api.alerts.AlertSubscribe(als.AlertSubscribeRequest(from_beginning=True))
    assert (await next_alert(everything)).WhichOneof("kind") == "heartbeat"
    seen = [
        (m.alert.account_id, m.alert.threshold_code) for m in [await next_alert(everything) for _ in range(4)]
    ]
    assert sorted(seen) == [
        (42, "free_tier_exceeded"),
        (42, "hard_cap"),
        (43, "free_tier_exceeded"),
        (43, "hard_cap"),
    ]
    everything.cancel()


async def test_idle_subscription_gets_heartbeats_with_offsets(tmp_path: object) -> None:
    from pathlib import Path

    from service.server import UnimeterServer

    server = UnimeterServer(serve_config(Path(str(tmp_path)) / "d"))
    await server.start()
    assert server.node is not None
    server.node.alerts._heartbeat = 0.2  # fast heartbeats for the test; default is 5 s
    api = await open_api(server)
    try:
        await setup_caps(api)
        stream = api.alerts.AlertSubscribe(als.AlertSubscribeRequest(account_ids=[999]))
        assert (await next_alert(stream)).WhichOneof("kind") == "heartbeat"
        await ingest(api, *[ev(42, "api_calls", time=T0 + i) for i in range(3)])
        beat = await next_alert(stream)
        assert beat.WhichOneof("kind") == "heartbeat"
        p42 = server.client.partition_of(42)  # type: ignore[union-attr]
        async with asyncio.timeout(5):
            while beat.heartbeat.offsets[p42] < 1:  # filtered-out alerts still advance the resume token
                beat = await next_alert(stream)
        stream.cancel()
    finally:
        await api.channel.close()
        await server.stop(grace=1)


async def test_a_replay_reads_past_batches_of_filtered_out_alerts_without_waiting(api: Api) -> None:
    """A subscription replaying a partition reads its log a batch at a time (256 alerts); a batch
    that its filters take nothing from must not leave it waiting for a publish or a heartbeat
    (5 s) when the alert it wants lies further on in the same log."""
    await setup_caps(api)
    # Account 42's partition: 600 `gb` alerts, then the two `api_calls` ones after them.
    await ingest(api, *[ev(42, "gb", 10, time=T0 + i) for i in range(600)])
    await ingest(api, *[ev(42, "api_calls", time=T0 + i) for i in range(5)])
    async with asyncio.timeout(5):
        while len((await list_alerts(api, 42, after=600)).alerts) < 2:
            await asyncio.sleep(0.01)
    stream = api.alerts.AlertSubscribe(
        als.AlertSubscribeRequest(metric_codes=["api_calls"], from_beginning=True)
    )
    assert (await next_alert(stream)).WhichOneof("kind") == "heartbeat"
    async with asyncio.timeout(2):  # well inside the heartbeat interval
        got = [(await stream.read()).alert for _ in range(2)]
    assert [(a.account_id, a.threshold_code, a.offset) for a in got] == [
        (42, "free_tier_exceeded", 601),
        (42, "hard_cap", 602),
    ]
    stream.cancel()


async def test_subscribe_rejects_unknown_codes_and_partitions(api: Api) -> None:
    await setup_caps(api)
    cases = [
        (
            als.AlertSubscribeRequest(metric_codes=["nope"]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "metric_codes[0]",
        ),
        (
            als.AlertSubscribeRequest(threshold_codes=["nope"]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "threshold_codes[0]",
        ),
        (
            als.AlertSubscribeRequest(metric_codes=["gb"], threshold_codes=["hard_cap"]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "threshold_codes[0]",
        ),
        (
            als.AlertSubscribeRequest(since_offsets={99: 0}),
            grpc.StatusCode.INVALID_ARGUMENT,
            "since_offsets[99]",
        ),
        (als.AlertSubscribeRequest(since_offsets={0: 5}), grpc.StatusCode.OUT_OF_RANGE, "since_offsets[0]"),
        (als.AlertSubscribeRequest(account_ids=[0]), grpc.StatusCode.INVALID_ARGUMENT, "account_ids"),
        (
            als.AlertSubscribeRequest(max_alerts_per_message=1001),
            grpc.StatusCode.INVALID_ARGUMENT,
            "max_alerts_per_message",
        ),
    ]
    for request, code, field in cases:
        stream = api.alerts.AlertSubscribe(request)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async with asyncio.timeout(5):
                await stream.read()
        assert err.value.code() == code, field
        assert fields(err.value) == [field]


async def test_many_idle_subscribers_do_not_block_ingest(api: Api) -> None:
    await setup_caps(api)
    streams = [api.alerts.AlertSubscribe(als.AlertSubscribeRequest(account_ids=[42])) for _ in range(200)]
    for s in streams:
        await next_alert(s)
    await ingest(api, *[ev(42, "api_calls", time=T0 + i) for i in range(3)])
    for s in streams:
        msg = await next_alert(s)
        assert (msg.alert.threshold_code, msg.alert.offset) == ("free_tier_exceeded", 1)
        s.cancel()


async def test_batched_subscription_delivers_every_alert_once_in_order_and_resumes(api: Api) -> None:
    """With max_alerts_per_message above 1, alerts come as batch messages of at most that many:
    concatenated, exactly the alerts of the one-per-message stream, in offset order; heartbeats as
    before; a resume from a batch's last offset continues right after it."""
    await setup_caps(api)
    batched = api.alerts.AlertSubscribe(
        als.AlertSubscribeRequest(metric_codes=["gb"], max_alerts_per_message=7)
    )
    single = api.alerts.AlertSubscribe(als.AlertSubscribeRequest(metric_codes=["gb"]))
    for stream in (batched, single):
        assert (await next_alert(stream)).WhichOneof("kind") == "heartbeat"
    # One account (one partition): 40 events, each crossing the next multiple of 10.
    for start in range(0, 40, 20):
        await ingest(api, *[ev(42, "gb", 10, time=T0 + i) for i in range(start, start + 20)])
    one_by_one = [(await next_alert(single)).alert for _ in range(40)]
    assert [a.multiple for a in one_by_one] == list(range(1, 41))
    received: list[t.Alert] = []
    sizes: list[int] = []
    async with asyncio.timeout(5):
        while len(received) < 40:
            message = await batched.read()
            assert message.WhichOneof("kind") == "batch"
            sizes.append(len(message.batch.alerts))
            received.extend(message.batch.alerts)
    assert received == one_by_one
    assert max(sizes) <= 7 and len(sizes) < 40  # bursts share messages
    batched.cancel()
    single.cancel()
    partition = received[0].partition
    resumed = api.alerts.AlertSubscribe(
        als.AlertSubscribeRequest(
            metric_codes=["gb"], since_offsets={partition: received[24].offset}, max_alerts_per_message=100
        )
    )
    assert (await next_alert(resumed)).WhichOneof("kind") == "heartbeat"
    rest: list[t.Alert] = []
    while len(rest) < 15:
        rest.extend((await next_alert(resumed)).batch.alerts)
    assert rest == received[25:]
    resumed.cancel()


async def test_the_server_lets_waiting_threads_have_the_gil_within_a_millisecond(api: Api) -> None:
    """fsync rounds and gRPC's completion poller run on threads that need the GIL for a few lines
    each; with Python's 5 ms default they waited behind the busy loop (service/server.py)."""
    import sys

    from service.server import GIL_SWITCH_INTERVAL

    assert sys.getswitchinterval() == pytest.approx(GIL_SWITCH_INTERVAL) == pytest.approx(0.001)
