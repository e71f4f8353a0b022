"""IngestService through a real server: storage, offsets, deduplication, delivery, bad input.

Every test runs on each ingest engine this machine has (tests/conftest.py ``ENGINES``)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from cluster_client.errors import FieldViolation, InvalidArgumentError
from cluster_client.remote_node import RemoteNode
from service.server import UnimeterServer
from tests.conftest import Api, serve_config
from tests.engines import ENGINES
from tests.grpc_errors import details, fields
from tests.integration.helpers import DAY, SEC, T0, agg, create_metric, ev, ingest, query
from unimeter.v1 import ingest_service_pb2 as ing
from unimeter.v1 import types_pb2 as t

END = T0 + 30 * DAY

pytestmark = pytest.mark.parametrize("api_engine", ENGINES)


async def test_async_and_sync_batches_are_stored_with_increasing_offsets(api: Api) -> None:
    await create_metric(api, "calls")
    first = await ingest(api, ev(42, "calls", time=T0 + SEC), ev(42, "calls", time=T0 + 2 * SEC))
    assert (first.n_stored, first.n_duplicates) == (2, 0)
    assert list(first.offsets) == [1, 2]
    second = await ingest(api, ev(42, "calls", time=T0 + 3 * SEC), sync=True)
    assert list(second.offsets) == [3]
    r = await query(api, 42, "calls", T0, END)
    assert r.value == agg(value=3, count=3, max=1, last_value=1, last_event_time_unix_nano=T0 + 3 * SEC)
    assert r.as_of_offset == 3


async def test_offsets_are_per_partition(api: Api) -> None:
    await create_metric(api, "calls")
    # Accounts 1 and 2 live in different partitions of 8 (mix64 % 8 = 1 and 6).
    r = await ingest(api, ev(1, "calls", time=T0), ev(2, "calls", time=T0), ev(1, "calls", time=T0 + 1))
    assert list(r.offsets) == [1, 1, 2]


async def test_event_id_duplicates_within_and_across_batches(api: Api) -> None:
    await create_metric(api, "calls")
    r = await ingest(
        api,
        ev(7, "calls", time=T0 + 1, event_id="a"),
        ev(7, "calls", time=T0 + 2, event_id="b"),
        ev(7, "calls", time=T0 + 3, event_id="a"),
    )
    assert (r.n_stored, r.n_duplicates, list(r.offsets)) == (2, 1, [1, 2, 1])
    again = await ingest(
        api, ev(7, "calls", time=T0 + 9, event_id="b"), ev(7, "calls", time=T0 + 4, event_id="c")
    )
    assert (again.n_stored, again.n_duplicates, list(again.offsets)) == (1, 1, [2, 3])
    assert (await query(api, 7, "calls", T0, END)).value.count == 3


async def test_same_event_id_on_other_account_or_metric_is_not_a_duplicate(api: Api) -> None:
    await create_metric(api, "calls")
    await create_metric(api, "bytes", t.AGG_TYPE_SUM)
    r = await ingest(
        api,
        ev(7, "calls", time=T0, event_id="x"),
        ev(8, "calls", time=T0, event_id="x"),
        ev(7, "bytes", 5, time=T0, event_id="x"),
    )
    assert (r.n_stored, r.n_duplicates) == (3, 0)


async def test_derived_key_dedups_events_with_time_and_no_id(api: Api) -> None:
    await create_metric(api, "gb", t.AGG_TYPE_SUM)
    e = ev(5, "gb", 10, time=T0 + 5, properties={"region": "eu"})
    r = await ingest(api, e, e)
    assert (r.n_stored, r.n_duplicates, list(r.offsets)) == (1, 1, [1, 1])
    other_props = ev(5, "gb", 10, time=T0 + 5, properties={"region": "us"})
    other_value = ev(5, "gb", 11, time=T0 + 5, properties={"region": "eu"})
    r2 = await ingest(api, e, other_props, other_value)
    assert (r2.n_stored, r2.n_duplicates, list(r2.offsets)) == (2, 1, [1, 2, 3])
    assert (await query(api, 5, "gb", T0, END)).value.sum == 31


async def test_events_without_id_or_time_are_never_duplicates(api: Api) -> None:
    await create_metric(api, "calls")
    r = await ingest(api, ev(9, "calls"), ev(9, "calls"))
    assert (r.n_stored, r.n_duplicates) == (2, 0)
    r2 = await ingest(api, ev(9, "calls"))
    assert r2.n_stored == 1


async def test_server_stamps_time_zero(api: Api) -> None:
    await create_metric(api, "calls")
    await ingest(api, ev(9, "calls"))
    rt = await api.query.QueryRealtime(_rt(9, "calls"), timeout=5)
    assert rt.value.count == 1
    assert rt.period.start_unix_nano <= rt.value.last_event_time_unix_nano < rt.period.end_unix_nano


def _rt(account: int, code: str):  # type: ignore[no-untyped-def]
    from unimeter.v1 import query_service_pb2 as qs

    return qs.QueryRealtimeRequest(account_id=account, metric_code=code)


async def test_sync_on_one_event_makes_the_batch_sync(api: Api) -> None:
    await create_metric(api, "calls")
    r = await api.ingest.Ingest(
        ing.IngestRequest(
            events=[ev(3, "calls", time=T0), ev(3, "calls", time=T0 + 1, delivery=t.DELIVERY_MODE_SYNC)]
        ),
        timeout=5,
    )
    assert r.n_stored == 2
    # A SYNC acknowledgement means the partition's log is durable up to the batch.
    node = api.server.node
    assert node is not None
    part = node.partitions[api.server.client.partition_of(3)]  # type: ignore[union-attr]
    assert part.events.durable_position == part.events.end_position


async def _setup_typed_metrics(api: Api) -> None:
    await create_metric(api, "calls")
    await create_metric(api, "peak", t.AGG_TYPE_MAX)
    await create_metric(api, "latest", t.AGG_TYPE_LATEST)
    await create_metric(api, "seats", t.AGG_TYPE_COUNT_UNIQUE)
    await create_metric(
        api, "cpu", t.AGG_TYPE_SUM, filters=[t.DimensionFilter(key="region", values=["us-east", "europe"])]
    )


INVALID_EVENTS = [
    (ev(0, "calls", time=T0), "events[1].account_id"),
    (ev(1, "nope", time=T0), "events[1].metric_code"),
    (ev(1, "", time=T0), "events[1].metric_code"),
    (ev(1, "peak", 5, time=T0, operation=t.OPERATION_TYPE_REMOVE), "events[1].operation"),
    (ev(1, "latest", 5, time=T0, operation=t.OPERATION_TYPE_REMOVE), "events[1].operation"),
    (ev(1, "calls", time=T0, operation=7), "events[1].operation"),
    (ev(1, "cpu", 1 << 63, time=T0), "events[1].value"),
    (ev(1, "cpu", 5, time=T0, properties={"region": "mars"}), "events[1].properties[region]"),
    (ev(1, "calls", time=T0, event_id="x" * 129), "events[1].event_id"),
    (ev(1, "calls", time=-5), "events[1].time_unix_nano"),
    (ev(1, "calls", time=T0, properties={"k": "v" * 257}), "events[1].properties[k]"),
    (ev(1, "calls", time=T0, delivery=9), "events[1].delivery"),
]


@pytest.mark.parametrize(
    ("bad", "field"), INVALID_EVENTS, ids=[f"{f}-{i}" for i, (_, f) in enumerate(INVALID_EVENTS)]
)
async def test_one_invalid_event_rejects_the_whole_batch(api: Api, bad: t.Event, field: str) -> None:
    await _setup_typed_metrics(api)
    stored = await ingest(api, ev(11, "cpu", 7, time=T0, properties={"region": "europe"}))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await ingest(api, ev(11, "cpu", 5, time=T0 + 1), bad, ev(12, "calls", time=T0 + 2))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fields(err.value) == [field]
    # Nothing of the rejected batch was stored (account 11 is in it twice), nothing stored earlier is lost.
    assert (await query(api, 11, "cpu", T0, END)).value.sum == 7
    assert (await query(api, 12, "calls", T0, END)).value.count == 0
    assert stored.n_stored == 1


async def test_every_bad_event_gets_its_own_violation(api: Api) -> None:
    await _setup_typed_metrics(api)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await ingest(api, ev(0, "calls"), ev(1, "calls"), ev(1, "nope"), ev(1, "peak", 1 << 63))
    assert fields(err.value) == ["events[0].account_id", "events[2].metric_code", "events[3].value"]
    reason, violations, _ = details(err.value)
    assert reason == "INVALID_ARGUMENT"
    assert "unknown metric 'nope'" in violations[1][1]


async def test_a_missing_metric_code_is_an_empty_field_not_an_unknown_metric(
    api: Api, tmp_path: Path
) -> None:
    await create_metric(api, "calls")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await ingest(api, ev(1, "", time=T0), ev(2, "calls", time=T0))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "invalid event: events[0].metric_code: must not be empty"
    assert details(err.value) == ("INVALID_ARGUMENT", [("events[0].metric_code", "must not be empty")], None)

    # The same answer from a node reached over the node protocol, which validates on its own.
    server = UnimeterServer(serve_config(tmp_path / "remote", node_addr="127.0.0.1:0"))
    await server.start()
    remote = RemoteNode(f"127.0.0.1:{server.node_port}", connect_timeout=5.0)
    try:
        with pytest.raises(InvalidArgumentError) as remote_err:
            await remote.ingest([(0, [(1, "", 1, T0, None, t.OPERATION_TYPE_ADD, "")])], False, "batch-1")
        assert remote_err.value.message == "invalid event: events[0].metric_code: must not be empty"
        assert remote_err.value.violations == (FieldViolation("events[0].metric_code", "must not be empty"),)
    finally:
        await remote.close()
        await server.stop(grace=1.0)


async def test_count_unique_accepts_full_64_bit_member_ids(api: Api) -> None:
    await _setup_typed_metrics(api)
    r = await ingest(api, ev(1, "seats", (1 << 64) - 1, time=T0), ev(1, "seats", 1 << 63, time=T0 + 1))
    assert r.n_stored == 2
    assert (await query(api, 1, "seats", T0, END)).value.unique_count == 2


async def test_empty_and_oversized_batches_are_rejected(api: Api) -> None:
    await create_metric(api, "calls")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.ingest.Ingest(ing.IngestRequest(), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fields(err.value) == ["events"]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.ingest.Ingest(ing.IngestRequest(events=[ev(1, "calls")] * 10_001), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fields(err.value) == ["events"]
    ok = await api.ingest.Ingest(ing.IngestRequest(events=[ev(1, "calls")] * 10_000), timeout=10)
    assert ok.n_stored == 10_000


async def test_unknown_request_delivery_is_rejected(api: Api) -> None:
    await create_metric(api, "calls")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.ingest.Ingest(ing.IngestRequest(events=[ev(1, "calls")], delivery=5), timeout=5)  # type: ignore[arg-type]
    assert fields(err.value) == ["delivery"]


async def test_deleted_metric_rejects_events_and_recreation_starts_empty(api: Api) -> None:
    from unimeter.v1 import metrics_service_pb2 as ms

    await create_metric(api, "calls")
    await ingest(api, ev(4, "calls", time=T0, event_id="e1"), ev(4, "calls", time=T0 + 1))
    await api.metrics.DeleteMetric(ms.DeleteMetricRequest(code="calls"), timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await ingest(api, ev(4, "calls", time=T0 + 2))
    assert fields(err.value) == ["events[0].metric_code"]
    await create_metric(api, "calls")
    assert (await query(api, 4, "calls", T0, END)).value.count == 0
    # The old generation's event ids do not make new events duplicates.
    r = await ingest(api, ev(4, "calls", time=T0, event_id="e1"))
    assert (r.n_stored, r.n_duplicates) == (1, 0)
    assert (await query(api, 4, "calls", T0, END)).value.count == 1
